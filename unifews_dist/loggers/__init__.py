"""The run's loggers: ``metrics.csv`` and W&B."""
from .csv import METRICS, RunCSVLogger
from .wandb import RunWandbLogger, WandbOptions

__all__ = ["METRICS", "RunCSVLogger", "RunWandbLogger", "WandbOptions"]
