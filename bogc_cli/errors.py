"""Errors a user can cause. The CLI turns them into one message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (recipe, path, file, option), not a bug.

    The message must name the thing at fault (key, file, option) and say how to fix it.
    """
