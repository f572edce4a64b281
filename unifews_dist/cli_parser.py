"""The arguments of Lightning's subcommands (fit, validate, test, predict) beyond the classes'
own: the run directory, W&B, the checkpoints and monitors; errors as one line; the config file."""
from __future__ import annotations

import os
import sys
from typing import Optional, Union

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from .callbacks import AtTargetCheckpoint, SlurmRequeue, SparsityMonitor, ThroughputMonitor
from .errors import fail
from .loggers.wandb import WandbOptions

USAGE = "unifews-dist [-h] [-c CONFIG] {fit,validate,test,predict,prepare,report,sweep-table} ..."
DESCRIPTION = """Entry-wise sparsified GNN training (Unifews). Subcommands: fit, validate, test,
predict (Lightning's), `unifews-dist prepare` (a dataset's memory-mapped arrays, ahead of
training), `unifews-dist report RUN_DIR` (a run's curves as PNG files) and
`unifews-dist sweep-table SWEEP_DIR` (a threshold sweep's runs in one table).
`unifews-dist test --ckpt_path RUN_DIR/checkpoints/F.ckpt` reads RUN_DIR/config.yaml and adds
the result to RUN_DIR/summary.json; `unifews-dist predict --ckpt_path F` writes
RUN_DIR/predictions-NODES.pt (layer-wise, `--data.predict_nodes all|train|val|test|FILE`)."""


class OneLineParser(LightningArgumentParser):
    """Argument errors as one line and exit code 2 (the full usage stays behind ``--help``)."""

    def error(self, message, ex=None):  # noqa: D401
        if os.environ.get("UNIFEWS_TRACEBACK"):
            return super().error(message, ex)
        raise SystemExit(fail(str(message)[:2000]))


class SaveConfig(SaveConfigCallback):
    """Writes ``config.yaml`` for ``fit`` only (a test or validation of a run's checkpoint keeps
    the run's config), and puts the resolved config into the W&B run's config."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams(self.config.as_dict())


def add_run_arguments(parser: LightningArgumentParser) -> None:
    """The data's sizes linked into the model; ``--run_dir``, ``--wandb``; the best checkpoint
    among epochs at the target sparsity (tested after fit) and ``last.ckpt`` every epoch
    (Lightning's ``save_last`` writes it only when the best one changed); the monitors; the SLURM
    requeue handler."""
    for key, target in (("num_features", "in_channels"), ("num_classes", "out_channels"),
                        ("multilabel", "multilabel")):
        parser.link_arguments(f"data.{key}", f"model.{target}", apply_on="instantiate")
    parser.add_argument("--run_dir", type=Optional[str], default=None,
                        help="where the run writes everything; started again, it resumes")
    parser.add_argument("--wandb", type=Union[bool, WandbOptions], default=WandbOptions(),
                        help="W&B settings, or false for CSV only")
    parser.add_lightning_class_args(AtTargetCheckpoint, "checkpoint")
    parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max",
                         "checkpoint.filename": "best-{epoch}"})
    parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
    parser.set_defaults({"last_checkpoint.monitor": None, "last_checkpoint.filename": "last",
                         "last_checkpoint.save_top_k": 1, "last_checkpoint.enable_version_counter": False})
    parser.add_lightning_class_args(SparsityMonitor, "sparsity_monitor")
    parser.add_lightning_class_args(ThroughputMonitor, "throughput_monitor")
    parser.add_lightning_class_args(SlurmRequeue, "requeue")


def thresholds_given(parser, cfg, subcommand: Optional[str], args, ckpt_path, run_config: Optional[str]) -> dict:
    """The thresholds the user set for ``test`` / ``validate`` / ``predict`` of a checkpoint (on the
    command line or in a config file of theirs; not the run's own ``config.yaml``, which
    ``run_config`` names when it was added): the checkpoint is evaluated at those, not at the
    thresholds it holds."""
    if subcommand not in ("test", "validate", "predict") or not ckpt_path:
        return {}
    user_args = list(sys.argv[1:] if args is None else args)
    if run_config and user_args[1:3] == ["--config", run_config]:
        user_args[1:3] = []  # the run's own config.yaml, added for a checkpoint-only test: not the user's
    explicit = parser.parse_args(user_args, defaults=False, env=False)
    given = explicit[subcommand].get("model") if explicit.get(subcommand) else None
    return {k: cfg["model"][k] for k in ("thr_a", "thr_w") if given is not None and given.get(k) is not None}
