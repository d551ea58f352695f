"""Errors a user can cause. The CLI turns them into one message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (recipe, path, file, option), not a bug.

    The message must name the thing at fault (key, file, option) and say how to fix it.
    """


class ProcessError(UserError):
    """A mistake only some processes of a data-parallel job meet (e.g. a process without a GPU): each
    of them reports it, where other mistakes are reported by process 0 alone."""
