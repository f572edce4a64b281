"""``unifews-dist``: LightningCLI over :class:`UnifewsModule` and :class:`UnifewsDataModule`, wiring
only: subcommands that are not Lightning's are :mod:`unifews_dist.commands`; a run's directory,
resume and summary :mod:`unifews_dist.run`; its loggers :mod:`unifews_dist.loggers`."""
from __future__ import annotations

import os
import sys
import time

from lightning_fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from .callbacks import EvaluationThresholds, PredictionWriter
from .commands import COMMANDS
from .cli_parser import DESCRIPTION, USAGE, OneLineParser, SaveConfig, add_run_arguments, thresholds_given
from .data import UnifewsDataModule
from .lit import UnifewsModule
from .loggers.wandb import default_wandb_mode
from .run import summary as run_summary
from .run.checkpoint import AtomicCheckpointIO, check_compatible
from .run.directory import predictions_path
from .run.guard import MADE, command_guard
from .run.quiet import quiet_library_advice
from .run.guard import setup_done
from .loggers.run import run_loggers
from .run.start import CKPT_KEYWORDS, check_config, start_run, with_run_config
from .run.trainer import Trainer

_T0 = time.perf_counter()


def _wall_s() -> float:
    return time.perf_counter() - _T0


class UnifewsCLI(LightningCLI):
    def __init__(self, *args, run_config=None, **kwargs):
        self.run_config = run_config  # the run's config.yaml added for a test of its checkpoint
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        add_run_arguments(parser)

    def parse_arguments(self, parser, args) -> None:
        """The checkpoint path is held back until the classes are made (Lightning would read its
        hyper-parameters over the config the user gave); the thresholds the user set are noted."""
        super().parse_arguments(parser, args)
        cfg = self._cfg()
        self.ckpt_path, cfg["ckpt_path"] = cfg.get("ckpt_path"), None
        self.thresholds_given = thresholds_given(parser, cfg, self.config.get("subcommand"), args, self.ckpt_path,
                                                 self.run_config)

    def _cfg(self):
        sub = self.config.get("subcommand")
        return self.config[sub] if sub else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        cfg["ckpt_path"] = self.ckpt_path
        check_config(cfg, self.subcommand)
        self.start = start_run(cfg, self.subcommand)
        MADE["run_dir"] = self.start.run_dir if self.start.made else None
        self.run_dir = self.start.run_dir

    def instantiate_trainer(self, **kwargs):
        cfg = self._cfg()
        if cfg["trainer"].get("logger") in (None, True):
            kwargs["logger"] = run_loggers(self.start, self.subcommand, cfg.get("wandb"))
        plugins = self.config_init.get(self.subcommand, self.config_init).get("trainer", {}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        # SlurmRequeue handles the requeue signal (Lightning's handler checkpoints inside the signal
        # handler, where ranks can deadlock); ranks torchrun started keep TorchElasticEnvironment
        if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect() and \
                not any(isinstance(p, ClusterEnvironment) for p in plugins):
            plugins.append(SLURMEnvironment(auto_requeue=False))
        return super().instantiate_trainer(**{**kwargs, "plugins": plugins})

    def _before(self) -> None:
        setup_done()
        init = self.config_init[self.subcommand]
        path, loaded = init.get("ckpt_path"), None
        if self.subcommand == "fit" and path is None and self.start.resume_from is not None:
            path, loaded = self.start.resume_from, self.start.resume_head
            rank_zero_info(f"Resuming from {path}")
            init["ckpt_path"] = path
        if path not in (None, *CKPT_KEYWORDS):
            check_compatible(path, dict(self.model.hparams), loaded)
        if self.subcommand != "fit" and self.thresholds_given:  # evaluated at the user's thresholds
            self.trainer.callbacks.append(EvaluationThresholds(**self.thresholds_given))

    before_fit = before_validate = before_test = _before

    def before_predict(self) -> None:
        if not self._cfg().get("ckpt_path"):
            raise ValueError("predict needs a trained model: --ckpt_path RUN_DIR/checkpoints/F.ckpt")
        self._before()
        self.predictions = os.path.abspath(predictions_path(self.run_dir, self._cfg()["data"]["predict_nodes"]))
        self.trainer.callbacks.append(PredictionWriter(self.predictions))

    def after_predict(self) -> None:
        run_summary.finish_loggers(self.trainer)  # W&B's closing lines before the path, the last line
        if self.trainer.is_global_zero:
            print(f"predictions of {self.datamodule.predict_nodes} nodes (layer-wise): node ids, class ids, logits")
            print(self.predictions, flush=True)

    def after_fit(self) -> None:
        s = run_summary.test_after_fit(self.trainer, self.model, self.datamodule, _wall_s)
        if s is not None:
            self._report(s, run_summary.write_summary(self.run_dir, s))

    def after_test(self) -> None:
        """A test of a checkpoint joins its run: ``summary.json`` gains the result (``tests``)."""
        if self.subcommand == "test" and self.trainer.is_global_zero:
            result = run_summary.test_result(self.trainer, self.model, self.datamodule, self._cfg().get("ckpt_path"))
            self._report(result, run_summary.add_test_result(self.run_dir, result))

    def _report(self, s: dict, path: str) -> None:
        """The one-line result, then the summary's path as the last line of stdout."""
        run_summary.finish_loggers(self.trainer)
        print(run_summary.report_line(s, _wall_s()))
        print(path, flush=True)


def main(args=None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        raise SystemExit(COMMANDS[argv[0]](argv[1:]))
    default_wandb_mode()
    quiet_library_advice()
    with command_guard():
        cli_args, run_config = with_run_config(argv)
        if args is None:  # LightningCLI reads sys.argv itself (given both, it warns)
            sys.argv[1:], cli_args = cli_args, None
        UnifewsCLI(UnifewsModule, UnifewsDataModule, args=cli_args, run_config=run_config,
                   parser_class=OneLineParser, save_config_callback=SaveConfig,
                   save_config_kwargs={"overwrite": True}, trainer_class=Trainer,
                   parser_kwargs={"description": DESCRIPTION, "usage": USAGE},
                   trainer_defaults={"use_distributed_sampler": False})


if __name__ == "__main__":
    main()
