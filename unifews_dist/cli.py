"""``unifews-dist``: LightningCLI over :class:`UnifewsModule` and :class:`UnifewsDataModule`.

``unifews-dist fit --config configs/X.yaml [--key value ...]`` trains, tests the best
checkpoint, writes ``summary.json`` in the run directory and prints its path last.
``unifews-dist report RUN_DIR`` draws a finished or running run's curves to PNG files;
``unifews-dist sweep-table SWEEP_DIR`` gathers a threshold sweep's runs into one table.

Everything a run writes lives in one run directory (``--run_dir``): ``metrics.csv``,
``config.yaml``, ``checkpoints/``, ``wandb/`` and ``wandb_id``, ``summary.json``. A run started
again with the same directory resumes from its newest checkpoint and continues its W&B run.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from typing import List, Optional, Union

import torch
from lightning_fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from .callbacks import (AtTargetCheckpoint, EvaluationThresholds, PredictionWriter, Requeued, SlurmRequeue,
                        SparsityMonitor, ThroughputMonitor)
from .checkpoint import AtomicCheckpointIO, check_compatible, load_checkpoint_file, newest_readable
from .run_dir import (RunCSVLogger, RunFinished, add_test_result, build_summary, check_writable, finished,
                      holds_results, keep_temporaries_in, logged_steps, predictions_path, remove_if_unused,
                      resolve_run_dir, run_config_of, wandb_run_id, write_atomic)
from .setup_guard import say_once, setup_begins, setup_done
from .wandb_history import RunWandbLogger
from .wandb_options import WandbOptions, default_wandb_mode, wandb_settings
from .trainer import Trainer
from .data import UnifewsDataModule
from .lit import UnifewsModule

_T0 = time.perf_counter()


class _OneLineParser(LightningArgumentParser):
    """Argument errors as one line and exit code 2 (the full usage stays behind ``--help``)."""

    def error(self, message, ex=None):  # noqa: D401
        if os.environ.get("UNIFEWS_TRACEBACK"):
            return super().error(message, ex)
        first = str(message).strip().splitlines()
        say_once(f"unifews-dist: error: {' '.join(s.strip() for s in first)[:2000]}")
        raise SystemExit(2)


class _SaveConfig(SaveConfigCallback):
    """Writes ``config.yaml`` for ``fit`` only (a test or validation of a run's checkpoint keeps
    the run's config), and puts the resolved config into the W&B run's config."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams(self.config.as_dict())


class UnifewsCLI(LightningCLI):

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_features", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.out_channels", apply_on="instantiate")
        parser.link_arguments("data.multilabel", "model.multilabel", apply_on="instantiate")
        parser.add_argument("--run_dir", type=Optional[str], default=None,
                            help="where the run writes everything; started again, it resumes")
        parser.add_argument("--wandb", type=Union[bool, WandbOptions], default=WandbOptions(),
                            help="W&B settings, or false for CSV only")
        # Two checkpoints: the best by val/acc among epochs at the target sparsity (tested after
        # fit) and last.ckpt, rewritten every
        # epoch (and every_n_train_steps if set) for resuming. Lightning's save_last alone writes
        # last.ckpt only when the best one changed, so a restart could lose epochs.
        parser.add_lightning_class_args(AtTargetCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max",
                             "checkpoint.filename": "best-{epoch}"})
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.monitor": None, "last_checkpoint.filename": "last",
                             "last_checkpoint.save_top_k": 1, "last_checkpoint.enable_version_counter": False})
        parser.add_lightning_class_args(SparsityMonitor, "sparsity_monitor")
        parser.add_lightning_class_args(ThroughputMonitor, "throughput_monitor")
        parser.add_lightning_class_args(SlurmRequeue, "requeue")

    def parse_arguments(self, parser, args) -> None:
        """Lightning reads a given checkpoint's hyper-parameters over the parsed model config,
        which would silently drop what the user set (``--model.thr_a`` for a test at another
        threshold, say). The config stays what the user gave: the checkpoint path is held back
        until the classes are made, and a checkpoint whose shapes do not fit the config is an
        error (``check_compatible``, before fit / validate / test). Which thresholds the user
        set (on the command line or in a config file of theirs) is read here too."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        self._ckpt_path = cfg.get("ckpt_path")
        if self._ckpt_path is not None:
            cfg["ckpt_path"] = None
        user_args = list(sys.argv[1:] if args is None else args)
        if _RUN_CONFIG_ADDED[0] and user_args[1:3] == ["--config", _RUN_CONFIG_ADDED[0]]:
            user_args[1:3] = []  # the run's own config.yaml, added for a checkpoint-only test: not the user's
        explicit = parser.parse_args(user_args, defaults=False, env=False) \
            if sub in ("test", "validate", "predict") and self._ckpt_path else None
        given = explicit[sub].get("model") if explicit is not None and explicit.get(sub) else None
        self.thresholds_given = {k: cfg["model"][k] for k in ("thr_a", "thr_w")
                                 if given is not None and given.get(k) is not None}

    def _cfg(self):
        return self.config.get(self.subcommand, self.config)

    def _cfg_init(self):
        return self.config_init.get(self.subcommand, self.config_init)

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        cfg["ckpt_path"] = self._ckpt_path
        data_hops = len(cfg["data"]["num_neighbors"])
        if data_hops != cfg["model"]["num_layers"]:
            raise ValueError(f"data.num_neighbors has {data_hops} hops but model.num_layers is "
                             f"{cfg['model']['num_layers']}: give one fanout per layer")
        devices = cfg["trainer"].get("devices", "auto")
        accel = cfg["trainer"].get("accelerator", "auto")
        devices = int(devices) if isinstance(devices, str) and devices.isdigit() else devices
        if isinstance(devices, int) and accel in ("gpu", "cuda") and devices > torch.cuda.device_count():
            raise ValueError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPUs")
        self.run_dir = resolve_run_dir(cfg.get("run_dir") or cfg["trainer"].get("default_root_dir"))
        cfg["run_dir"] = self.run_dir
        # ranks that Lightning starts itself (strategy ddp, no launcher) run this command again:
        # they find the same run directory here
        os.environ["UNIFEWS_RUN_DIR"] = self.run_dir
        if not holds_results(self.run_dir):
            _NEW_RUN_DIR[0] = self.run_dir  # removed again if the run fails before it trains
        check_writable(self.run_dir)
        keep_temporaries_in(self.run_dir)
        cfg["trainer"]["default_root_dir"] = self.run_dir  # SLURM's requeue checkpoint goes here
        for key in ("checkpoint", "last_checkpoint"):
            if cfg[key].get("dirpath") is None:
                cfg[key]["dirpath"] = os.path.join(self.run_dir, "checkpoints")
        self.resume_from = self.resume_step = self._resume_head = None
        found = newest_readable(self.run_dir) if self.subcommand == "fit" and cfg.get("ckpt_path") is None else None
        if found is not None:  # loaded once here: what the run resumes from, and whether it is done
            self.resume_from, ckpt = found
            trainer = cfg["trainer"]
            if finished(ckpt, trainer.get("max_epochs"), trainer.get("max_steps", -1)):
                raise RunFinished(self.run_dir, ckpt)
            self.resume_step = logged_steps(ckpt)
            # kept for the shape check once the model is made (not the weights: Lightning loads those)
            self._resume_head = {"hyper_parameters": ckpt.get("hyper_parameters")}
            if "state_dict" in ckpt:
                self._resume_head["state_dict"] = {}

    def _loggers(self) -> list:
        cfg = self._cfg()
        # metrics.csv: a new fit starts it, a resumed one keeps the rows before its checkpoint,
        # test / validate / predict add to it
        keep_before = (self.resume_step or 0) if self.subcommand == "fit" else None
        csv_logger = RunCSVLogger(self.run_dir, keep_before)
        loggers = [csv_logger]
        opts = cfg.get("wandb")
        if opts is not False and opts is not None:
            opts = dict(opts if isinstance(opts, dict) else vars(opts))
            # W&B's own logs and cache (~/.cache/wandb otherwise) stay with the run too
            os.environ.setdefault("WANDB_CACHE_DIR", os.path.abspath(os.path.join(self.run_dir, "wandb", "cache")))
            loggers.append(RunWandbLogger(
                project=opts.get("project"), name=opts.get("name") or os.path.basename(os.path.normpath(self.run_dir)),
                group=opts.get("group"), tags=list(opts.get("tags") or []), entity=opts.get("entity"),
                save_dir=self.run_dir, id=wandb_run_id(self.run_dir), resume="allow",
                settings=wandb_settings(float(opts.get("flush_interval_s", 2.0))),
                rows_before_resume=csv_logger.rows() if self.resume_step is not None else None))
        return loggers

    def instantiate_trainer(self, **kwargs):
        cfg = self._cfg()
        if cfg["trainer"].get("logger") in (None, True):
            kwargs["logger"] = self._loggers()
        plugins = self._cfg_init().get("trainer", {}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = plugins + [AtomicCheckpointIO()]
        if (SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()
                and not any(isinstance(p, ClusterEnvironment) for p in plugins)):
            # the requeue signal is SlurmRequeue's (requeue.*): Lightning's handler checkpoints
            # inside the signal handler, where ranks can deadlock. Ranks that torchrun (or the
            # fork launcher) started inside a SLURM step keep Lightning's TorchElasticEnvironment
            plugins = plugins + [SLURMEnvironment(auto_requeue=False)]
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)

    def _check_ckpt(self) -> None:
        init = self.config_init[self.subcommand]
        path = init.get("ckpt_path")
        loaded = None
        if self.subcommand == "fit" and path is None and self.resume_from is not None:
            path, loaded = self.resume_from, self._resume_head
            rank_zero_info(f"Resuming from {path}")
            init["ckpt_path"] = path
        if path not in (None, "best", "last", "hpc", "registry"):
            check_compatible(path, dict(self.model.hparams), loaded)

    def before_fit(self) -> None:
        setup_done()
        self._check_ckpt()

    def _evaluate_at_given_thresholds(self) -> None:
        """A checkpoint brings back the thresholds it was trained with; thresholds the user set
        (``--model.thr_a`` / ``--model.thr_w``, or in a config file of theirs; not the run's own
        config.yaml that a checkpoint-only test reads) evaluate it at those instead."""
        if self.thresholds_given:
            self.trainer.callbacks.append(EvaluationThresholds(**self.thresholds_given))

    def before_validate(self) -> None:
        setup_done()
        self._check_ckpt()
        self._evaluate_at_given_thresholds()

    def before_test(self) -> None:
        setup_done()
        self._check_ckpt()
        self._evaluate_at_given_thresholds()

    def before_predict(self) -> None:
        if not self._cfg().get("ckpt_path"):
            raise ValueError("predict needs a trained model: --ckpt_path RUN_DIR/checkpoints/F.ckpt")
        setup_done()
        self._check_ckpt()
        self._evaluate_at_given_thresholds()
        self.predictions_path = os.path.abspath(predictions_path(self.run_dir, self._cfg()["data"]["predict_nodes"]))
        self.trainer.callbacks.append(PredictionWriter(self.predictions_path))

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            print(f"predictions of {self.datamodule.predict_nodes} nodes (layer-wise): node ids, class ids, logits")
            print(self.predictions_path, flush=True)

    def after_fit(self) -> None:
        trainer, module = self.trainer, self.model
        ckpt = trainer.checkpoint_callback
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # test() resets them
        best = ckpt.best_model_path if ckpt is not None else ""
        if not best:
            rank_zero_warn("no checkpoint reached the target sparsity (or none was ranked): testing the final model")
        test = trainer.test(module, datamodule=self.datamodule, verbose=False, ckpt_path="best" if best else None)
        if not trainer.is_global_zero:
            return
        if ckpt is not None and ckpt.best_model_score is not None:
            metrics["val/acc"] = float(ckpt.best_model_score)
        epoch, step = trainer.current_epoch, trainer.global_step
        last = os.path.join(self.run_dir, "checkpoints", "last.ckpt")
        if step == 0 and os.path.isfile(last):  # ddp_fork/ddp_spawn: the loops ran in the workers
            state = load_checkpoint_file(last)
            epoch, step = state.get("epoch", 0) + 1, state.get("global_step", 0)
        summary = build_summary(metrics, test[0] if test else {}, epoch, step, trainer.world_size,
                                module.model.num_layers, time.perf_counter() - _T0)
        summary["tested_checkpoint"] = os.path.abspath(best) if best else None
        summary["eval_mode"] = self.datamodule.eval_mode
        summary["test_seed_edges_kept"] = module.model.lock_target_edges != "never"
        os.makedirs(self.run_dir, exist_ok=True)
        path = os.path.abspath(os.path.join(self.run_dir, "summary.json"))
        write_atomic(path, json.dumps(summary, indent=2))
        self._report(summary, path)

    def after_test(self) -> None:
        """A test of a checkpoint joins its run: ``summary.json`` gains the result (``tests``)."""
        trainer = self.trainer
        if self.subcommand != "test" or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        result = build_summary({}, metrics, 0, 0, trainer.world_size, self.model.model.num_layers, 0.0)
        result = {k: v for k, v in result.items() if k not in ("val_acc", "epochs", "global_step", "train_seeds_per_s",
                                                              "last_train_epoch", "wall_s")}
        result["checkpoint"] = os.path.abspath(self._cfg()["ckpt_path"]) if self._cfg().get("ckpt_path") else None
        result["thr_a"], result["thr_w"] = self.model.model.thr_a, self.model.model.thr_w
        result["eval_mode"] = self.datamodule.eval_mode
        result["test_seed_edges_kept"] = self.model.model.lock_target_edges != "never"
        path = add_test_result(self.run_dir, result)
        self._report(result, path)

    def _report(self, s: dict, path: str) -> None:
        """The one-line result, then the summary's path as the last line of stdout (W&B's closing
        lines, printed when its run ends, are printed before it)."""
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()
        def figures(f: dict) -> str:
            return (f"edges pruned {f['edge_sparsity']:.1%}, weights pruned {f['weight_sparsity']:.1%}, "
                    f"MACs {f['macs_sparse'] / max(f['macs_dense'], 1):.2f}x of dense")

        parts = [f"test acc {s['test_acc']:.4f}"] + ([f"val acc {s['val_acc']:.4f}"] if "val_acc" in s else [])
        if "last_train_epoch" in s:  # what the trained model prunes, on the training batches
            parts.append(f"training: {figures(s['last_train_epoch'])}")
        # evaluation keeps the seeds' in-edges (lock_target_edges), so it prunes fewer edges
        parts.append(f"test{' (seed in-edges kept)' if s.get('test_seed_edges_kept') else ''}: {figures(s)}")
        if "train_seeds_per_s" in s:
            parts.append(f"{s['train_seeds_per_s']:.0f} seeds/s")
        print(" | ".join(parts + [f"{time.perf_counter() - _T0:.0f} s"]))
        print(path, flush=True)


USAGE = "unifews-dist [-h] [-c CONFIG] {fit,validate,test,predict,prepare,report,sweep-table} ..."
DESCRIPTION = """Entry-wise sparsified GNN training (Unifews). Subcommands: fit, validate, test,
predict (Lightning's), `unifews-dist prepare` (a dataset's memory-mapped arrays, ahead of
training), `unifews-dist report RUN_DIR` (a run's curves as PNG files) and
`unifews-dist sweep-table SWEEP_DIR` (a threshold sweep's runs in one table).
`unifews-dist test --ckpt_path RUN_DIR/checkpoints/F.ckpt` reads RUN_DIR/config.yaml and adds
the result to RUN_DIR/summary.json; `unifews-dist predict --ckpt_path F` writes
RUN_DIR/predictions-NODES.pt (layer-wise, `--data.predict_nodes all|train|val|test|FILE`)."""


_NEW_RUN_DIR: List[Optional[str]] = [None]  # a run directory this process made
_RUN_CONFIG_ADDED: List[Optional[str]] = [None]  # the run config _with_run_config added, if any


def _with_run_config(argv: List[str]) -> List[str]:
    """``test`` / ``validate`` / ``predict`` given a checkpoint: the config of the run the checkpoint belongs to
    comes first, so it is evaluated on that run's data and reports into that run; the user's own
    ``--config`` files and arguments apply on top of it."""
    if not argv or argv[0] not in ("fit", "test", "validate", "predict"):
        return argv
    ckpt = next((v for a, v in zip(argv, argv[1:] + [""]) if a == "--ckpt_path"), None)
    ckpt = ckpt or next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if ckpt and ckpt not in ("best", "last", "hpc", "registry") and not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt!r} does not exist (--ckpt_path takes a checkpoint file, "
                                f"RUN_DIR/checkpoints/*.ckpt)")
    config = run_config_of(ckpt) if ckpt and argv[0] != "fit" else None
    if config is None:
        return argv
    _RUN_CONFIG_ADDED[0] = config
    return [argv[0], "--config", config, *argv[1:]]


def main(args=None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "report":
        from .report import main as report_main
        raise SystemExit(report_main(argv[1:]))
    if argv and argv[0] == "prepare":
        from .prepare import main as prepare_main
        raise SystemExit(prepare_main(argv[1:]))
    if argv and argv[0] == "sweep-table":
        from .sweep import main as sweep_main
        raise SystemExit(sweep_main(argv[1:]))
    default_wandb_mode()
    # Lightning's advice that does not apply here, silenced for the CLI's process only: a resumed
    # run's checkpoint folder is not empty by design, and the monitors log values they already
    # summed over ranks
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    monitored = r"(test/)?(sparsity|macs|throughput|time|schedule)/"
    warnings.filterwarnings("ignore", message=r"It is recommended to use .self.log\(." + monitored)
    # what this call sets for its run (the run directory it made, the temporary and W&B cache
    # folders inside it) is put back when it returns: main() may run again in the same process
    _NEW_RUN_DIR[0] = _RUN_CONFIG_ADDED[0] = None
    saved_env = {k: os.environ.get(k) for k in ("TMPDIR", "WANDB_CACHE_DIR", "UNIFEWS_RUN_DIR")}
    saved_tempdir = tempfile.tempdir
    setup_begins()  # a set-up stopped by SIGTERM cleans up too (below)
    try:
        cli_args = _with_run_config(argv)
        if args is None:  # LightningCLI reads sys.argv itself (given both, it warns)
            sys.argv[1:], cli_args = cli_args, None
        UnifewsCLI(
            UnifewsModule,
            UnifewsDataModule,
            args=cli_args,
            parser_class=_OneLineParser,
            save_config_callback=_SaveConfig,
            save_config_kwargs={"overwrite": True},
            trainer_class=Trainer,
            parser_kwargs={"description": DESCRIPTION, "usage": USAGE},
            trainer_defaults={"use_distributed_sampler": False},
        )
    except RunFinished as done:  # started again after it finished: nothing to do, nothing changed
        summary = os.path.abspath(os.path.join(done.run_dir, "summary.json"))
        print(
            f"run {done.run_dir} is finished ({done.epochs} epochs, {done.steps} steps): nothing to do; "
            f"raise trainer.max_epochs or trainer.max_steps to train on"
        )
        if os.path.isfile(summary):
            print(summary, flush=True)
    except Requeued as r:  # every rank: the checkpoint is written and SLURM runs the job again
        if rank_zero_only.rank == 0:
            print(
                f"requeue signal: step {r.step} checkpointed to {r.path}; SLURM job {r.job} requeued, "
                "it resumes from there",
                flush=True,
            )
    except SystemExit:  # a parser error, or SIGTERM during set-up (also when a library wrapped it)
        remove_if_unused(_NEW_RUN_DIR[0])  # the run directory this rank made, if nothing was trained into it
        raise
    except (ValueError, FileNotFoundError, KeyError, TypeError, MisconfigurationException) as e:
        if os.environ.get("UNIFEWS_TRACEBACK"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        # cleaned up first: a rank other than 0 waits in say_once, where the launcher may stop it
        remove_if_unused(_NEW_RUN_DIR[0])
        say_once(f"unifews-dist: error: {msg} (set UNIFEWS_TRACEBACK=1 for the traceback)")
        raise SystemExit(2)
    finally:  # leave no process group behind: gloo's threads abort the interpreter at exit otherwise
        setup_done()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = saved_tempdir


if __name__ == "__main__":
    main()
