"""Training loop, evaluation, checkpoints, devices and logging."""
