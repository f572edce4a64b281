"""Host work per training batch, counted exactly: aten ops (kernel launches on a GPU) and host syncs.

    python benchmarks/step_overhead.py [--out DIR] [--scale tiny|small|medium|products]
                                       [--thr_a A] [--thr_w W] [--steps N]

GraphSAGE 3 x 256, fanout [15, 10, 5], batch 1024 on ``synthetic-small`` by default (tiny:
smaller), for (a) the plain PyG loop of ``train_speed.py``, (b) unifews dense (thresholds 0),
(c) unifews sparse (``--thr_a`` / ``--thr_w``, seed edges locked in evaluation only, as
``train_speed.py``), with the loader sampling and gathering every row, (d) the same with the
first layer's rule applied in the loader (``prune_before_gather``, SAGE: the loader's rule, the
transfer hook's expansion, the first layer taking the loader's mean) and (e) that and sampling
less (``sample_less``). Per batch, averaged over ``--steps`` batches after warm-up:

- ``sampling``: the data loader's next batch (sampler and feature gather);
- ``forward``: the model and the loss;
- ``backward``: backward and the optimizer step;
- ``lightning``: the rest of the Lightning training step as the CLI runs it (loop, logging,
  progress bar, checkpoint callbacks, sparsity and throughput monitors), on a step that logs
  nothing (``lightning``) and on a logging step (``lightning_log``).

Counts are exact on a CPU (see ``op_counter.py``): no timing, no noise. Writes
``DIR/step_overhead.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, write_json  # noqa: E402
from op_counter import OpCounter  # noqa: E402
from train_speed import SCALES, PygModel, _module  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import Callback, ModelCheckpoint  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402

from unifews_dist.callbacks import (AtTargetCheckpoint, SparsityMonitor, SparsitySchedule,  # noqa: E402
                                    ThroughputMonitor)
from unifews_dist.data import UnifewsDataModule  # noqa: E402
from unifews_dist.nn import CONVS  # noqa: E402

PHASES = ("sampling", "forward", "backward", "lightning")
WARMUP = 3


class _Counted:
    """Iterates a loader with every ``next`` counted as ``sampling``. The seed nodes the loader
    hands the sampler are host tensors in a GPU run too (the sampler moves them): reading them
    is marked as no device sync (and so is what is computed from them alone)."""

    def __init__(self, loader, counter):
        self.loader, self.counter = loader, counter
        self.fetches = 0  # while counting
        counter.host(loader.input_data.node, loader.input_data.input_id)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            prev, self.counter.phase = self.counter.phase, "sampling"
            try:
                batch = next(it)
                self.fetches += self.counter.active
            except StopIteration:
                return
            finally:
                self.counter.phase = prev
            yield batch


def _per_batch(counter, phase, n):
    c = counter.counts(phase)
    return {"ops": c["ops"] / n, "syncs": c["syncs"] / n}


def count_plain(dm, hidden, layers, steps, conv="sage"):
    """The plain loop: PyG's conv of the same kind with trim_to_layer, Adam, no Lightning."""
    torch.manual_seed(0)
    model = PygModel(dm.num_features, hidden, dm.num_classes, layers, conv=conv)
    opt = torch.optim.Adam(model.parameters(), lr=0.003, foreach=True)  # torch's default on CUDA
    counter = OpCounter("warmup")
    loader = _Counted(dm.train_dataloader(), counter)
    with counter:
        for k, batch in enumerate(loader):
            if k == WARMUP + steps:
                break
            counter.phase = "forward" if k >= WARMUP else "warmup"
            out = model(batch.x, batch.edge_index, batch.num_sampled_nodes, batch.num_sampled_edges)
            loss = F.cross_entropy(out[:batch.batch_size], batch.y[:batch.batch_size])
            counter.phase = "backward" if k >= WARMUP else "warmup"
            opt.zero_grad()
            loss.backward()
            opt.step()
            counter.phase = "sampling_next"
            counter.host_tensors(opt)
    res = {p: _per_batch(counter, p, steps) for p in ("forward", "backward")}
    res["sampling"] = _per_batch(counter, "sampling", loader.fetches)
    return res, counter


class _Phases(Callback):
    """Labels the counter's phase from Lightning's hooks; counts only after warm-up."""

    def __init__(self, counter):
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == WARMUP:
            self.counter.active = True

    def on_before_backward(self, trainer, pl_module, loss):
        self.counter.phase = "backward"

    def on_after_backward(self, trainer, pl_module):
        self.counter.phase = "lightning"


def count_lightning(dm, hidden, layers, steps, thresholds, log_every, conv="sage", gather=(False, False)):
    """unifews_dist's module in a Trainer with the CLI's callbacks and CSV logging (``gather``:
    whether ``dm`` prunes before it gathers, and samples less, for this module's model)."""
    thr_a, thr_w = thresholds
    pl.seed_everything(0)
    counter = OpCounter("lightning")
    counter.active = False
    # the transform backend CUDA's "auto" picks (dense with the mask), so the counts are a GPU's
    module = _module(dm, hidden, layers, conv=conv, thr_a=thr_a, thr_w=thr_w, lock_target_edges="eval",
                     weight_backend="dense")
    forward, loss_fn = module.forward, module.loss

    def counted(fn):
        def call(*a, **k):
            prev, counter.phase = counter.phase, "forward"
            try:
                return fn(*a, **k)
            finally:
                counter.phase = prev
        return call

    module.forward, module.loss = counted(forward), counted(loss_fn)
    orig_step = module.optimizer_step

    def optimizer_step(epoch, batch_idx, optimizer, optimizer_closure=None):
        def closure():
            out = optimizer_closure()
            counter.phase = "backward"  # the optimizer's own update counts with backward
            return out
        orig_step(epoch, batch_idx, optimizer, closure)
        counter.phase = "lightning"
        counter.host_tensors(optimizer)

    module.optimizer_step = optimizer_step
    dm.prune_before_gather, dm.sample_less = gather
    dm.trainer = SimpleNamespace(lightning_module=module, world_size=1, global_rank=0)  # what it asks of one
    counted_loader = _Counted(dm.train_dataloader(), counter)

    class _DM(pl.LightningDataModule):
        def train_dataloader(self):
            return counted_loader

        def on_after_batch_transfer(self, batch, dataloader_idx):
            return dm.on_after_batch_transfer(batch, dataloader_idx)

        def before_training_step(self, batch, thr_a):
            dm.before_training_step(batch, thr_a)

        def before_training_epoch(self, thr_a):
            dm.before_training_epoch(thr_a)

    callbacks = [_Phases(counter), SparsityMonitor(), ThroughputMonitor()]
    if thr_a or thr_w:
        callbacks.insert(0, SparsitySchedule(thr_a=thr_a, thr_w=thr_w, kind="constant", interval="step"))
    with tempfile.TemporaryDirectory() as tmp:
        callbacks += [AtTargetCheckpoint(dirpath=tmp, monitor="val/acc", mode="max"),
                      ModelCheckpoint(dirpath=tmp, filename="last", monitor=None)]
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=WARMUP + steps + 1, limit_val_batches=0,
                             num_sanity_val_steps=0, enable_model_summary=False, log_every_n_steps=log_every,
                             logger=CSVLogger(tmp, name="", version=""), callbacks=callbacks)
        with counter:
            # the last step's end (and fit's teardown) is not counted: stop at step WARMUP + steps
            stop = _StopCounting(counter, WARMUP + steps)
            trainer.callbacks.append(stop)
            trainer.fit(module, datamodule=_DM())
    res = {p: _per_batch(counter, p, steps) for p in PHASES}
    res["sampling"] = _per_batch(counter, "sampling", max(1, counted_loader.fetches))
    stats = module.model.layer_stats
    res["edge_sparsity"] = 1 - sum(s.edges_kept for s in stats) / max(1, sum(s.edges_dense for s in stats))
    res["weight_sparsity"] = 1 - sum(s.weight_nnz for s in stats) / max(1, sum(s.weight_numel for s in stats))
    return res, counter


class _StopCounting(Callback):
    def __init__(self, counter, at):
        self.counter, self.at = counter, at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at:
            self.counter.active = False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--steps", type=int, default=4, help="counted batches after warm-up")
    p.add_argument("--conv", choices=["sage", "gat", "gcn", "gin", "gcnii"], default="sage",
                   help="the layer, each against PyG's conv of the same kind (GATv2: one head)")
    p.add_argument("--thr_a", type=float, default=None, help="sparse run's edge threshold (sage 1.0, gat 0.3)")
    p.add_argument("--thr_w", type=float, default=1.0, help="sparse run's weight threshold")
    p.add_argument("--top", type=int, default=0, help="list the N most frequent ops of each phase")
    args = p.parse_args(argv)
    if args.thr_a is None:  # attention weights are ~ 1 / degree: GATv2's thresholds live in [0, 1)
        args.thr_a = 0.3 if args.conv == "gat" else 1.0
    name, hidden, fanout, batch = SCALES[args.scale]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    dm = UnifewsDataModule(name=name, num_neighbors=fanout, batch_size=batch, seed=0, sampler="torch")
    dm.setup("fit")
    layers = len(fanout)
    res = {"scale": args.scale, "dataset": name, "conv": args.conv, "hidden": hidden, "fanout": fanout,
           "batch_size": batch, "steps": args.steps, "thr_a": args.thr_a, "thr_w": args.thr_w}
    res["pyg"], c_pyg = count_plain(dm, hidden, layers, args.steps, conv=args.conv)
    counters = {"pyg": c_pyg}
    sparse = (args.thr_a, args.thr_w)
    labels = {"unifews_dense": ((0.0, 0.0), (False, False)), "unifews_sparse": (sparse, (False, False))}
    if CONVS[args.conv].scores_inputs:
        labels.update(unifews_sparse_gather=(sparse, (True, False)), unifews_sparse_less=(sparse, (True, True)))
    for label, (thr, gather) in labels.items():
        res[label], counters[label] = count_lightning(dm, hidden, layers, args.steps, thr, 10_000, conv=args.conv,
                                                      gather=gather)
        logged, _ = count_lightning(dm, hidden, layers, args.steps, thr, 1, conv=args.conv, gather=gather)
        res[label]["lightning_log"] = logged["lightning"]
    base = res["pyg"]
    res["ratios"] = {label: {ph: res[label][ph]["ops"] / base[ph]["ops"] for ph in ("forward", "backward")}
                     for label in labels}
    print(f"{'per batch':<22}" + "".join(f"{ph:>20}" for ph in PHASES + ("lightning_log",)))
    for label in ("pyg", *labels):
        r = res[label]
        print(f"{label:<22}" + "".join(
            f"{'-':>20}" if ph not in r else f"{r[ph]['ops']:>11.1f} ops {r[ph]['syncs']:>3.0f} sy"
            for ph in PHASES + ("lightning_log",)))
    sp = res["unifews_sparse"]
    print(f"sparse run: {sp['edge_sparsity']:.1%} edges, {sp['weight_sparsity']:.1%} weights pruned")
    print("ops / plain loop's: " + "  ".join(f"{k} fwd {v['forward']:.2f} bwd {v['backward']:.2f}"
                                            for k, v in res["ratios"].items()))
    if args.top:
        for label, c in counters.items():
            print(f"\n{label}: syncs {dict(c.sync_ops)}")
            print(f"{label}: top ops {c.op_names.most_common(args.top)}")
    print(write_json(args.out, "step_overhead.json" if args.conv == "sage" else f"step_overhead_{args.conv}.json",
                     res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
