"""The run's loggers: ``metrics.csv`` and W&B (``loggers.run.run_loggers`` makes a run's)."""
from .csv import METRICS, RunCSVLogger
from .wandb import RunWandbLogger, WandbOptions

__all__ = ["METRICS", "RunCSVLogger", "RunWandbLogger", "WandbOptions"]
