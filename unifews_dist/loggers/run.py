"""The loggers of one run: its ``metrics.csv`` and its W&B run, both kept in the run directory."""
from __future__ import annotations

import os

from ..run.directory import wandb_run_id
from .csv import RunCSVLogger
from .wandb import RunWandbLogger, wandb_settings


def run_loggers(start, subcommand: str, wandb_opts) -> list:
    """The run's loggers (``start``: the run's :class:`~unifews_dist.run.start.RunStart`):
    ``metrics.csv`` (a new fit starts it, a resumed one keeps the rows before
    its checkpoint, test / validate / predict add to it) and, unless ``wandb_opts`` is false, the
    run's W&B run (its id kept in the run directory, continued on resume)."""
    keep_before = (start.resume_step or 0) if subcommand == "fit" else None
    csv_logger = RunCSVLogger(start.run_dir, keep_before)
    loggers = [csv_logger]
    if wandb_opts is False or wandb_opts is None:
        return loggers
    opts = dict(wandb_opts if isinstance(wandb_opts, dict) else vars(wandb_opts))
    # W&B's own logs and cache (~/.cache/wandb otherwise) stay with the run too
    os.environ.setdefault("WANDB_CACHE_DIR", os.path.abspath(os.path.join(start.run_dir, "wandb", "cache")))
    loggers.append(RunWandbLogger(
        project=opts.get("project"), name=opts.get("name") or os.path.basename(os.path.normpath(start.run_dir)),
        group=opts.get("group"), tags=list(opts.get("tags") or []), entity=opts.get("entity"),
        save_dir=start.run_dir, id=wandb_run_id(start.run_dir), resume="allow",
        settings=wandb_settings(float(opts.get("flush_interval_s", 2.0))),
        rows_before_resume=csv_logger.rows() if start.resume_step is not None else None))
    return loggers
