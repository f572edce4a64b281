"""Training-step speed, side by side: a plain PyG loop, unifews_dist dense, unifews_dist sparse.

    python benchmarks/train_speed.py [--out DIR] [--scale products|medium|small|tiny] [--steps N | --epoch]
                                     [--batch-size B] [--hidden H] [--gpu-sampling | --no-gpu-sampling]
                                     [--num-workers W] [--feature-gather loader|device] [--name NAME]

GraphSAGE, 3 layers, hidden 256, fanout [15, 10, 5], batch 1024 (tiny: smaller), on the
synthetic graph of the chosen scale (``products``: ogbn-products' 2.4M nodes and 62M edges).
All three use the same data module and sampler, Adam, no norm, dropout 0.5, and are timed
over the same number of steps after warm-up:

(a) ``pyg``: a plain loop as PyG's examples write it: ``torch_geometric.nn.SAGEConv`` layers,
    ``trim_to_layer`` with the loader's per-hop counts, no Lightning;
(b) ``dense``: unifews_dist's LightningModule and Trainer (with its monitors), thresholds 0;
(c) ``sparse``: the same with thresholds calibrated by ``TargetSparsity`` over 100 training
    steps to >= 90% edge and >= 90% weight sparsity (seed edges locked in evaluation only, as
    the reference code), then held fixed, resuming the calibration run from its checkpoint
    (message and weight magnitudes, hence sparsity at given thresholds, depend on the weights
    and on Adam's state); weight masks recomputed on the first batch of each epoch.

On a GPU the graph and features live on the GPU and are sampled there (``--gpu-sampling``, the
default when CUDA is available); ``--epoch`` times as many steps as one epoch has and reports
seconds per epoch (also estimated from the timed steps otherwise: mean step x batches).

Each step is split into sampling+loading, transfer, forward, backward+optimizer (medians over
the timed steps). ``framework_overhead_ratio`` = (b) / (a) whole step;
``model_compute_ratio`` = (c) / (b) forward + backward.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, write_json  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from unifews_dist.callbacks import SparsityMonitor, SparsitySchedule, TargetSparsity, ThroughputMonitor  # noqa: E402
from unifews_dist.data import UnifewsDataModule  # noqa: E402
from unifews_dist.lit import UnifewsModule  # noqa: E402

SCALES = {  # dataset, hidden, fanout, batch
    "products": ("synthetic-products", 256, [15, 10, 5], 1024),
    "medium": ("synthetic-medium", 256, [15, 10, 5], 1024),
    "small": ("synthetic-small", 256, [15, 10, 5], 1024),
    "tiny": ("synthetic-tiny", 32, [5, 5, 5], 64),
}
PHASES = ("data", "transfer", "forward", "backward", "step")


class PygModel(torch.nn.Module):
    """The stack as in PyG's examples, of PyG's own convs, with ``trim_to_layer`` for sampled
    blocks: GraphSAGE (``conv="sage"``), GATv2 (one head), GCN, GIN (MLP ``Linear -> ReLU ->
    Linear``) or GCNII (linear maps before and after, ``alpha`` 0.1, ``theta`` 0.5), each as
    unifews_dist's stack of the same conv."""

    def __init__(self, cin, hidden, cout, layers, dropout=0.5, conv="sage"):
        super().__init__()
        from torch_geometric.nn import GATv2Conv, GCN2Conv, GCNConv, GINConv, SAGEConv
        self.dropout, self.lin_in, self.lin_out = dropout, None, None
        if conv == "gcnii":
            self.lin_in, self.lin_out = torch.nn.Linear(cin, hidden), torch.nn.Linear(hidden, cout)
            self.convs = torch.nn.ModuleList(GCN2Conv(hidden, alpha=0.1, theta=0.5, layer=i + 1) for i in range(layers))
            return
        dims = [cin] + [hidden] * (layers - 1) + [cout]

        def make(a, b):
            if conv == "gin":
                return GINConv(torch.nn.Sequential(torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Linear(b, b)))
            return {"sage": SAGEConv, "gat": GATv2Conv, "gcn": GCNConv}[conv](a, b)

        self.convs = torch.nn.ModuleList(make(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x, edge_index, num_nodes, num_edges):
        from torch_geometric.utils import trim_to_layer
        x0 = None
        if self.lin_in is not None:
            x = x0 = F.relu(self.lin_in(F.dropout(x, self.dropout, self.training)))
        for i, conv in enumerate(self.convs):
            x, edge_index, _ = trim_to_layer(i, num_nodes, num_edges, x, edge_index)
            if x0 is None:
                x = conv(x, edge_index)
            else:
                x0 = x0[:x.size(0)]
                x = conv(x, x0, edge_index)
            if i < len(self.convs) - 1 or self.lin_out is not None:
                x = F.dropout(F.relu(x), self.dropout, self.training)
        return x if self.lin_out is None else self.lin_out(x)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_pyg(dm, hidden, layers, warmup, steps, device):
    model = PygModel(dm.num_features, hidden, dm.num_classes, layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    model.train()
    rows, it = [], iter(dm.train_dataloader())
    t_prev = time.perf_counter()
    for k in range(warmup + steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            batch = next(it)
        t1 = time.perf_counter()
        batch = dm.on_after_batch_transfer(batch.to(device), 0)  # (the device-side gather, if asked for)
        _sync()
        t2 = time.perf_counter()
        out = model(batch.x, batch.edge_index, batch.num_sampled_nodes, batch.num_sampled_edges)[:batch.batch_size]
        loss = F.cross_entropy(out, batch.y[:batch.batch_size])
        _sync()
        t3 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync()
        t4 = time.perf_counter()
        if k >= warmup:
            rows.append({"data": t1 - t_prev, "transfer": t2 - t1, "forward": t3 - t2, "backward": t4 - t3,
                         "step": t4 - t_prev})
        t_prev = time.perf_counter()
    return rows, None


class _Record(Callback):
    def __init__(self, tm, warmup):
        self.tm, self.warmup, self.rows, self.stats, self.seen = tm, warmup, [], [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen > self.warmup:
            self.rows.append(dict(self.tm.last_times))
            self.stats.append([(s.edges_dense, s.edges_kept, s.weight_numel, s.weight_nnz, s.macs_dense, s.macs_sparse)
                               for s in pl_module.model.layer_stats])


def _trainer(callbacks, steps, accel):
    return pl.Trainer(accelerator=accel, devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=callbacks)


def _module(dm, hidden, layers, conv="sage", **kw):
    return UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv=conv,
                         hidden_channels=hidden, num_layers=layers, dropout=0.5, norm="none", lr=0.003, **kw)


def calibrate(dm, hidden, layers, steps, accel, ckpt):
    """Thresholds that give >= 90% edge and weight sparsity (TargetSparsity aims at 0.92), and a
    checkpoint of the run that found them (weights, masks, optimizer state) at ``ckpt``.

    Gain 1: the per-step sparsity is noisy and steep in log(thr_a) (about 0.35 per unit), so a
    higher gain leaves the last threshold swinging around the target from step to step."""
    pl.seed_everything(0)
    module = _module(dm, hidden, layers, lock_target_edges="eval")
    ctl = TargetSparsity(edge_sparsity=0.92, weight_sparsity=0.92, gain=1.0)
    trainer = _trainer([ctl], steps, accel)
    trainer.fit(module, dm)
    trainer.save_checkpoint(ckpt)
    return ctl.thr_a, ctl.thr_w, trainer.global_step


def time_unifews(dm, hidden, layers, warmup, steps, accel, thr_a=None, thr_w=None, ckpt=None, start=0):
    pl.seed_everything(0)
    sparse = thr_a is not None
    module = _module(dm, hidden, layers, thr_a=thr_a or 0.0, thr_w=thr_w or 0.0, lock_target_edges="eval")
    tm = ThroughputMonitor(log_every_n_steps=1)  # every step's phase times
    rec = _Record(tm, warmup)
    cbs = [SparsityMonitor(), tm, rec]
    if sparse:  # fixed thresholds; masks recomputed on each epoch's first batch, kept otherwise
        cbs.insert(0, SparsitySchedule(thr_a=thr_a, thr_w=thr_w, kind="constant", mask_update="epoch"))
    # the sparse run continues the calibration run (weights, masks, Adam state): message and weight
    # magnitudes, hence the sparsity a threshold gives, depend on them, and a fresh Adam moves
    # the weights far in its first steps
    _trainer(cbs, start + warmup + steps, accel).fit(module, dm, ckpt_path=ckpt)
    return rec.rows, rec.stats


def median_phases(rows):
    return {p: statistics.median(r[p] for r in rows) for p in PHASES}


def epoch_phases(rows, batches):
    """Seconds per epoch, whole and by phase: mean over the timed steps x batches per epoch."""
    return {p: statistics.fmean(r[p] for r in rows) * batches for p in PHASES}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--scale", choices=sorted(SCALES), default="products")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30; tiny: 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; tiny: 2)")
    p.add_argument("--epoch", action="store_true", help="time as many steps as one epoch has")
    p.add_argument("--batch-size", type=int, default=None,
                   help="seeds per batch (default: the scale's, 1024): larger batches make a GPU step GPU-bound")
    p.add_argument("--hidden", type=int, default=None, help="hidden channels (default: the scale's, 256)")
    p.add_argument("--gpu-sampling", action=argparse.BooleanOptionalAction, default=None,
                   help="graph on the GPU, sampled there (default: on when CUDA is available)")
    p.add_argument("--num-workers", type=int, default=0, help="loader worker processes (host sampling only)")
    p.add_argument("--feature-gather", choices=["loader", "device"], default="loader",
                   help="gather a batch's features in the loader or on the device (data.feature_gather)")
    p.add_argument("--name", default="train_speed", help="the results file's name (NAME.json)")
    args = p.parse_args(argv)
    tiny = args.scale == "tiny"
    warmup = args.warmup if args.warmup is not None else (2 if tiny else 5)
    name, hidden, fanout, batch = SCALES[args.scale]
    hidden, batch = args.hidden or hidden, args.batch_size or batch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accel = "gpu" if device.type == "cuda" else "cpu"
    gpu_sampling = device.type == "cuda" if args.gpu_sampling is None else args.gpu_sampling
    t0 = time.perf_counter()
    if gpu_sampling and args.num_workers:
        p.error("--num-workers needs host sampling (--no-gpu-sampling)")
    dm = UnifewsDataModule(name=name, num_neighbors=fanout, batch_size=batch, seed=0, gpu_sampling=gpu_sampling,
                           num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                           feature_gather=args.feature_gather)
    dm.prepare_data()
    dm.setup("fit")
    batches = len(dm.train_dataloader())
    steps = batches if args.epoch else (args.steps or (5 if tiny else 30))
    print(f"data {name}: {time.perf_counter() - t0:.0f} s to build; {batches} batches per epoch; "
          f"sampling on {'GPU' if gpu_sampling else 'CPU'}", flush=True)
    layers = len(fanout)

    a_rows, _ = time_pyg(dm, hidden, layers, warmup, steps, device)
    b_rows, b_stats = time_unifews(dm, hidden, layers, warmup, steps, accel)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "calibrated.ckpt")
        thr_a, thr_w, start = calibrate(dm, hidden, layers, 100 if not tiny else 10, accel, ckpt)
        c_rows, c_stats = time_unifews(dm, hidden, layers, warmup, steps, accel, thr_a, thr_w, ckpt, start)
    a, b, c = (median_phases(r) for r in (a_rows, b_rows, c_rows))

    tot = [sum(x[i] for st in c_stats for x in st) for i in range(6)]
    edge_sp, weight_sp = 1 - tot[1] / tot[0], 1 - tot[3] / tot[2]
    macs_red = tot[4] / tot[5] if tot[5] else 1.0
    res = {
        "scale": args.scale, "dataset": name, "hidden": hidden, "fanout": fanout, "batch_size": batch,
        "steps": steps, "warmup": warmup, "device": device.type, "gpu_sampling": gpu_sampling,
        "num_workers": args.num_workers, "feature_gather": args.feature_gather,
        "batches_per_epoch": batches,
        "pyg_s": a, "unifews_dense_s": b, "unifews_sparse_s": c,
        "epoch_s": {k: epoch_phases(r, batches) for k, r in (("pyg", a_rows), ("unifews_dense", b_rows),
                                                            ("unifews_sparse", c_rows))},
        "framework_overhead_ratio": b["step"] / a["step"],
        "model_compute_ratio": (c["forward"] + c["backward"]) / (b["forward"] + b["backward"]),
        "sparse_step_ratio": c["step"] / b["step"],
        "edge_sparsity": edge_sp, "weight_sparsity": weight_sp, "macs_reduction": macs_red,
        "thr_a": thr_a, "thr_w": thr_w,
    }
    print(f"\n{'run':<16}" + "".join(f"{p + '_s':>12}" for p in PHASES))
    for label, r in (("pyg", a), ("unifews dense", b), ("unifews sparse", c)):
        print(f"{label:<16}" + "".join(f"{r[p]:>12.4f}" for p in PHASES))
    print(f"\nseconds per epoch ({batches} batches), by phase:")
    for label, r in res["epoch_s"].items():
        print(f"{label:<16}" + "".join(f"{r[p]:>12.2f}" for p in PHASES))
    print(f"\nframework_overhead_ratio (dense/pyg, step)      {res['framework_overhead_ratio']:.3f}  (goal <= 1.10)")
    print(f"model_compute_ratio (sparse/dense, fwd+bwd)      {res['model_compute_ratio']:.3f}  (goal <= 0.35)")
    print(f"edge sparsity {edge_sp:.1%}  weight sparsity {weight_sp:.1%}  MACs reduction {macs_red:.1f}x")
    print(write_json(args.out, f"{args.name}.json", res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
