"""#40 in training: with the first layer's rule applied in the loader (the default for SAGE), a fit
is the fit that gathers every row: the same weights, thresholds and sparsity, bit for bit, in one
process, with workers, when a feedback controller lowers a threshold under batches pruned at a
higher one, and under DDP; only the rows gathered shrink."""
import csv
import glob
import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from cli_run import DEBUG, run_cli
from unifews_dist.callbacks import SparsitySchedule, TargetSparsity, ThroughputMonitor
from unifews_dist.data import UnifewsDataModule
from unifews_dist.lit import UnifewsModule


class _Seen(Callback):
    """Each step: the loader's threshold for the batch, the step's, the rows gathered and the
    block's nodes (before the module completes a batch pruned above its step's threshold)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append((getattr(batch, "gather_thr", None), pl_module.model.thr_a[0],
                           getattr(batch, "rows_gathered", batch.x.size(0)), batch.n_id.numel()))


def _fit(prune, controller, workers=0):
    dm = UnifewsDataModule("synthetic-small", num_neighbors=[10, 10], batch_size=128, prune_before_gather=prune,
                           num_workers=workers, persistent_workers=workers > 0)
    pl.seed_everything(0)
    module = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv="sage",
                           hidden_channels=16, num_layers=2, thr_a=[1.5, 1.0], thr_w=0.5, lr=0.01)
    seen = _Seen()
    schedule = (TargetSparsity(edge_sparsity=[0.7, 0.5], weight_sparsity=None, gain=8.0) if controller
                else SparsitySchedule(kind="linear", interval="step", ramp=8))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=16, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0, callbacks=[schedule, ThroughputMonitor(), seen])
    trainer.fit(module, dm)
    return module, seen.steps


def _same(sa, sb):
    """Two state dicts hold equal tensors (and equal extra states: the thresholds)."""
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k] for k in sa)


@pytest.mark.parametrize("controller,workers", [(False, 2), (True, 0)], ids=["schedule-workers", "controller"])
def test_a_fit_that_prunes_before_it_gathers_is_the_fit_that_gathers_everything(controller, workers):
    whole, whole_steps = _fit(False, controller, workers)
    mine, steps = _fit(True, controller, workers)
    assert _same(whole.state_dict(), mine.state_dict()) and whole.model.thr_a == mine.model.thr_a
    assert [s[1] for s in steps] == [s[1] for s in whole_steps]  # the same thresholds, step by step
    assert all(s[0] is None and s[2] == s[3] for s in whole_steps)
    late = steps[len(steps) // 2:]
    assert sum(s[2] for s in late) < 0.9 * sum(s[3] for s in late)  # fewer rows gathered once pruning
    if controller:  # the controller lowered a threshold under a batch pruned at a higher one
        assert any(g > t for g, t, _, _ in steps)
    else:  # a rising schedule: each batch was pruned at a threshold no higher than its step's
        assert all(g <= t for g, t, _, _ in steps)


@pytest.mark.slow
def test_two_ranks_that_prune_before_they_gather_train_the_model_of_two_that_do_not(tmp_path):
    runs = {}
    for prune in ("true", "false"):
        out = tmp_path / prune
        proc = run_cli(["fit", "--config", DEBUG, "--run_dir", str(out), "--wandb", "false", "--trainer.devices", "2",
                        "--trainer.strategy", "ddp_fork", "--trainer.max_epochs", "1",
                        "--data.prune_before_gather", prune], tmp_path, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[prune] = torch.load(glob.glob(os.path.join(out, "checkpoints", "last*.ckpt"))[0],
                                 weights_only=True)["state_dict"]
        with open(out / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("data/rows_gathered_epoch")]
        gathered, sampled = (float(rows[-1][f"data/{k}_epoch"]) for k in ("rows_gathered", "nodes_sampled"))
        assert gathered < 0.9 * sampled if prune == "true" else gathered == sampled
    assert _same(runs["true"], runs["false"])
