"""``RUN_DIR/summary.json``: what a run's tested model scored and pruned, and the one-line report."""
from __future__ import annotations

import json
import os
from typing import Optional

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

from .checkpoint import load_checkpoint_file
from .directory import write_atomic

SUMMARY = "summary.json"


def build_summary(metrics: dict, test: dict, epochs: int, global_step: int, world_size: int,
                  num_layers: int, wall_s: float) -> dict:
    """summary.json. Every figure belongs to the model it names: accuracy, sparsity and MACs at
    the top level are the tested model's (the best checkpoint), measured on the test batches
    (:class:`SparsityMonitor` logs them as ``test/...``); ``last_train_epoch`` holds the last
    training epoch's figures (the ``*_epoch`` totals of the monitors, summed over ranks).
    ``callback_metrics`` and the test results reach the launching process under every strategy,
    ``ddp_fork``/``ddp_spawn`` included, where the callbacks' own state stays in the workers."""
    def figures(src: dict, prefix: str, suffix: str) -> dict:
        def get(key: str) -> float:
            return float(src.get(f"{prefix}{key}{suffix}", 0.0))
        return {"edge_sparsity": get("sparsity/edge/all"),
                "edge_sparsity_per_layer": [get(f"sparsity/edge/layer{i}") for i in range(num_layers)],
                "weight_sparsity": get("sparsity/weight/all"),
                "weight_sparsity_per_layer": [get(f"sparsity/weight/layer{i}") for i in range(num_layers)],
                "macs_dense": int(get("macs/dense")), "macs_sparse": int(get("macs/sparse"))}

    ogb = {"test_ogb_acc": float(test["test/ogb_acc"])} if "test/ogb_acc" in test else {}
    return {
        "test_acc": float(test.get("test/acc", float("nan"))), **ogb,
        "val_acc": float(metrics.get("val/acc", float("nan"))),
        **figures(test, "test/", ""),
        "epochs": int(epochs), "global_step": int(global_step), "world_size": int(world_size),
        "train_seeds_per_s": float(metrics.get("throughput/seeds_per_s_epoch", 0.0)),
        "last_train_epoch": figures(metrics, "", "_epoch"),
        "wall_s": float(wall_s),
    }


def add_test_result(run_dir: str, result: dict) -> str:
    """Append a test of one of the run's checkpoints to ``summary.json`` (``tests``); its path."""
    path = os.path.abspath(os.path.join(run_dir, SUMMARY))
    summary = {}
    if os.path.isfile(path):
        with open(path) as f:
            summary = json.load(f)
    summary.setdefault("tests", []).append(result)
    return write_summary(run_dir, summary)


def fit_summary(trainer, module, datamodule, metrics: dict, test: dict, best: str, wall_s: float) -> dict:
    """``summary.json`` of a finished ``fit``: the tested checkpoint's figures (``test``, the
    result of testing ``best``; none: the final model), ``metrics`` the fit's (``callback_metrics``
    as training left them; ``val/acc`` the best checkpoint's score)."""
    epoch, step = trainer.current_epoch, trainer.global_step
    last = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
    if step == 0 and os.path.isfile(last):  # ddp_fork/ddp_spawn: the loops ran in the workers
        state = load_checkpoint_file(last)
        epoch, step = state.get("epoch", 0) + 1, state.get("global_step", 0)
    summary = build_summary(metrics, test, epoch, step, trainer.world_size, module.model.num_layers, wall_s)
    summary["tested_checkpoint"] = os.path.abspath(best) if best else None
    summary["eval_mode"] = datamodule.eval_mode
    summary["test_seed_edges_kept"] = module.model.lock_target_edges != "never"
    return summary


def test_result(trainer, module, datamodule, ckpt_path) -> dict:
    """What a ``test`` of a checkpoint adds to its run's ``summary.json`` (under ``tests``)."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result = build_summary({}, metrics, 0, 0, trainer.world_size, module.model.num_layers, 0.0)
    result = {k: v for k, v in result.items() if k not in ("val_acc", "epochs", "global_step", "train_seeds_per_s",
                                                          "last_train_epoch", "wall_s")}
    result["checkpoint"] = os.path.abspath(ckpt_path) if ckpt_path else None
    result["thr_a"], result["thr_w"] = module.model.thr_a, module.model.thr_w
    result["eval_mode"] = datamodule.eval_mode
    result["test_seed_edges_kept"] = module.model.lock_target_edges != "never"
    return result


def report_line(s: dict, wall_s: float) -> str:
    """The one-line result: accuracy, what training pruned (``last_train_epoch``, when there is
    one) and what the test pruned (the seeds' in-edges kept, when locked), throughput, time."""
    def figures(f: dict) -> str:
        return (f"edges pruned {f['edge_sparsity']:.1%}, weights pruned {f['weight_sparsity']:.1%}, "
                f"MACs {f['macs_sparse'] / max(f['macs_dense'], 1):.2f}x of dense")

    parts = [f"test acc {s['test_acc']:.4f}"] + ([f"val acc {s['val_acc']:.4f}"] if "val_acc" in s else [])
    if "last_train_epoch" in s:  # what the trained model prunes, on the training batches
        parts.append(f"training: {figures(s['last_train_epoch'])}")
    parts.append(f"test{' (seed in-edges kept)' if s.get('test_seed_edges_kept') else ''}: {figures(s)}")
    if "train_seeds_per_s" in s:
        parts.append(f"{s['train_seeds_per_s']:.0f} seeds/s")
    return " | ".join(parts + [f"{wall_s:.0f} s"])


def write_summary(run_dir: str, summary: dict) -> str:
    """Write ``summary.json`` (atomically); its absolute path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(run_dir, SUMMARY))
    write_atomic(path, json.dumps(summary, indent=2))
    return path


def finish_loggers(trainer) -> None:
    """End the W&B run (it prints its closing lines then, before the summary's path)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def test_after_fit(trainer, module, datamodule, wall_s) -> Optional[dict]:
    """Test the best checkpoint at the target sparsity (none: the final model, said) and, on rank
    0, the run's summary (``None`` elsewhere)."""
    ckpt = trainer.checkpoint_callback
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # test() resets them
    best = ckpt.best_model_path if ckpt is not None else ""
    if not best:
        rank_zero_warn("no checkpoint reached the target sparsity (or none was ranked): testing the final model")
    test = trainer.test(module, datamodule=datamodule, verbose=False, ckpt_path="best" if best else None)
    if not trainer.is_global_zero:
        return None
    if ckpt is not None and ckpt.best_model_score is not None:
        metrics["val/acc"] = float(ckpt.best_model_score)
    return fit_summary(trainer, module, datamodule, metrics, test[0] if test else {}, best, wall_s())
