"""``bogc tune``: hyper-parameter search on Optuna, each trial an ordinary run directory.

space.py: the search-space files (recipes/tune/); trial.py: one trial (its run, objective and pruning);
study.py: the study's storage, its trial budget and the retry of cut-short trials; runner.py: targets
(a recipe, or a sweep's cells), the trial loop, worker processes and the best recipe. README "Tuning
fairly" shows it in use.
"""
