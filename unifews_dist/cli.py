"""``unifews-dist``: LightningCLI over :class:`UnifewsModule` and :class:`UnifewsDataModule`.

``unifews-dist fit --config configs/X.yaml [--key value ...]`` trains, tests the best
checkpoint, writes ``summary.json`` in the run directory and prints its path last.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .data import UnifewsDataModule
from .lit import UnifewsModule

_T0 = time.perf_counter()


class _OneLineParser(LightningArgumentParser):
    """Argument errors as one line and exit code 2 (the full usage stays behind ``--help``)."""

    def error(self, message, ex=None):  # noqa: D401
        if os.environ.get("UNIFEWS_TRACEBACK"):
            return super().error(message, ex)
        first = str(message).strip().splitlines()
        sys.stderr.write(f"unifews-dist: error: {' '.join(s.strip() for s in first)[:2000]}\n")
        raise SystemExit(2)


class UnifewsCLI(LightningCLI):
    def init_parser(self, **kwargs):
        parser = super().init_parser(**kwargs)  # adds --config
        parser.__class__ = _OneLineParser
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_features", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.out_channels", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max",
                             "checkpoint.save_last": True, "checkpoint.filename": "best-{epoch}"})

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand, self.config)
        data_hops = len(cfg["data"]["num_neighbors"])
        if data_hops != cfg["model"]["num_layers"]:
            raise ValueError(f"data.num_neighbors has {data_hops} hops but model.num_layers is "
                             f"{cfg['model']['num_layers']}: give one fanout per layer")
        devices = cfg["trainer"].get("devices", "auto")
        accel = cfg["trainer"].get("accelerator", "auto")
        devices = int(devices) if isinstance(devices, str) and devices.isdigit() else devices
        if isinstance(devices, int) and accel in ("gpu", "cuda") and devices > torch.cuda.device_count():
            raise ValueError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPUs")

    def after_fit(self) -> None:
        trainer, module = self.trainer, self.model
        stats = _reduce_stats(trainer, module.epoch_stats)
        test = trainer.test(module, datamodule=self.datamodule, ckpt_path="best" if trainer.checkpoint_callback
                            and trainer.checkpoint_callback.best_model_path else None, verbose=False)
        run_dir = trainer.log_dir or trainer.default_root_dir  # a collective: every rank asks
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        val_acc = float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else \
            float(trainer.callback_metrics.get("val/acc", float("nan")))
        summary = build_summary(test[0].get("test/acc", float("nan")) if test else float("nan"), val_acc,
                                trainer.current_epoch, trainer.world_size, stats, time.perf_counter() - _T0)
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.abspath(os.path.join(run_dir, "summary.json"))
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"test acc {summary['test_acc']:.4f} | val acc {summary['val_acc']:.4f} | "
              f"edges pruned {summary['edge_sparsity']:.1%} | weights pruned {summary['weight_sparsity']:.1%} | "
              f"MACs {summary['macs_sparse'] / max(summary['macs_dense'], 1):.2f}x of dense | "
              f"{summary['train_seeds_per_s']:.0f} seeds/s | {summary['wall_s']:.0f} s")
        print(path, flush=True)


def _reduce_stats(trainer, epoch_stats: dict) -> dict:
    """Sum the last epoch's per-layer counts over ranks."""
    layers = sorted(k for k in epoch_stats if isinstance(k, int))
    keys = ["edges_dense", "edges_kept", "macs_dense", "macs_sparse", "weight_numel", "weight_nnz"]
    flat = [float(epoch_stats[i][k]) for i in layers for k in keys] + [float(epoch_stats.get("seeds", 0)),
                                                                      float(epoch_stats.get("seconds", 0.0))]
    t = torch.tensor(flat, dtype=torch.float64)
    if trainer.world_size > 1:
        t = trainer.strategy.reduce(t.to(trainer.strategy.root_device), reduce_op="sum").cpu()
    out = {"layers": [{k: t[j * len(keys) + n].item() for n, k in enumerate(keys)} for j in range(len(layers))]}
    out["seeds"], out["seconds"] = t[-2].item(), t[-1].item() / max(trainer.world_size, 1)
    return out


def build_summary(test_acc: float, val_acc: float, epochs: int, world_size: int, stats: dict, wall_s: float) -> dict:
    layers = stats["layers"]
    dense = sum(l["edges_dense"] for l in layers)
    kept = sum(l["edges_kept"] for l in layers)
    numel = sum(l["weight_numel"] for l in layers) / max(world_size, 1)
    nnz = sum(l["weight_nnz"] for l in layers) / max(world_size, 1)
    return {
        "test_acc": float(test_acc), "val_acc": float(val_acc), "epochs": int(epochs), "world_size": int(world_size),
        "edge_sparsity": 1 - kept / dense if dense else 0.0,
        "edge_sparsity_per_layer": [1 - l["edges_kept"] / l["edges_dense"] if l["edges_dense"] else 0.0 for l in layers],
        "weight_sparsity": 1 - nnz / numel if numel else 0.0,
        "weight_sparsity_per_layer": [1 - l["weight_nnz"] / l["weight_numel"] if l["weight_numel"] else 0.0
                                      for l in layers],
        "macs_dense": int(sum(l["macs_dense"] for l in layers)),
        "macs_sparse": int(sum(l["macs_sparse"] for l in layers)),
        "train_seeds_per_s": stats["seeds"] / stats["seconds"] if stats["seconds"] > 0 else 0.0,
        "wall_s": float(wall_s),
    }


def main(args=None) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        UnifewsCLI(UnifewsModule, UnifewsDataModule, args=args, save_config_kwargs={"overwrite": True},
                   trainer_defaults={"use_distributed_sampler": False, "logger": {
                       "class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": "runs", "name": "unifews"}}})
    except (ValueError, FileNotFoundError, KeyError, TypeError, MisconfigurationException) as e:
        if os.environ.get("UNIFEWS_TRACEBACK"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"unifews-dist: error: {msg} (set UNIFEWS_TRACEBACK=1 for the traceback)\n")
        raise SystemExit(2)
    finally:  # leave no process group behind: gloo's threads abort the interpreter at exit otherwise
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
