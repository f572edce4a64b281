"""A run's life: its directory, checkpoints, resume, set-up guard, summary and Trainer."""
