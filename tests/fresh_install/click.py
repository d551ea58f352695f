"""Stands in for the absent ``click`` package of a fresh install: typer 0.29 vendors click as ``typer._click``
and no longer installs ``click``, so a bogc that imports click fails there. Tests that run the ``bogc``
entry point put this folder first on PYTHONPATH (``cli_helpers.run_bogc``), so any ``import click`` in
bogc fails as it would on a user's machine, even where click happens to be installed."""

raise ModuleNotFoundError("No module named 'click' (a fresh install of bogc has no click)", name="click")
