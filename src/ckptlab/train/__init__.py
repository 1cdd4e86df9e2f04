"""Training: the one loop, schedules, checkpoints, run directories, data-parallel set-up."""
