"""Layer-wise full-graph inference, dense vs pruned, timed side by side in one run.

    python benchmarks/inference_speed.py [--out DIR] [--scale tiny|small|medium|products]
                                         [--edge-target 0.75] [--weight-target 0.92] [--repeat 3]
                                         [--thr_a A --thr_w W]

GraphSAGE 3 x 256 (tiny: 3 x 32) on the scale's synthetic graph (``products``: ogbn-products'
sizes), evaluated layer-wise over every node (:meth:`UnifewsGNN.inference`, batches of 4096
targets; seed edges not locked, so every layer prunes by its rule). The weights are the
initial ones; the pruned model's thresholds are calibrated (bisection on one ``thr_a`` and one
``thr_w`` for all layers, on this graph) until at least ``--edge-target`` of the edges and
``--weight-target`` of the weight entries are pruned (``--thr_a`` / ``--thr_w`` skip the
calibration: on a products-sized graph it is ten full inference runs). Both models use the
transform CPU's ``auto`` picks (the sparse kernel below 30% density). Each model is timed as a
deployed model runs, with an :class:`InferenceWorkspace` of its own kept from call to call (its
layers' output buffers already in memory: ``dense_s``, ``pruned_s``, ``pruned_dense_time_ratio``),
and cold, every buffer fresh (``*_cold``). ``first_touch_s``: after each round, the time to write a
fresh ``nodes x hidden`` tensor once (a layer's output is one; on a VM its page faults can cost as
much as a layer's arithmetic). Times are medians of ``--repeat`` rounds, the four runs of a round
alternating. Writes ``DIR/inference_speed.json`` with ``pruned_dense_time_ratio``,
``edge_sparsity``, ``weight_sparsity`` and ``macs_reduction``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch_geometric.data import Data

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, write_json  # noqa: E402

from unifews_dist.data import UnifewsDataModule  # noqa: E402
from unifews_dist.nn import InferenceWorkspace, UnifewsGNN  # noqa: E402

SCALES = {"products": ("synthetic-products", 256), "medium": ("synthetic-medium", 256),
          "small": ("synthetic-small", 256), "tiny": ("synthetic-tiny", 32)}
BATCH = 4096


def figures(model) -> dict:
    st = model.layer_stats
    kept, dense = sum(s.edges_kept for s in st), sum(s.edges_dense for s in st)
    nnz, numel = sum(s.weight_nnz for s in st), sum(s.weight_numel for s in st)
    return {"edge_sparsity": 1 - kept / max(dense, 1), "weight_sparsity": 1 - nnz / max(numel, 1),
            "macs": sum(s.macs_sparse for s in st), "macs_dense": sum(s.macs_dense for s in st),
            "edge_sparsity_per_layer": [s.edge_sparsity for s in st]}


def run(model, data, workspace=None) -> float:
    t = time.perf_counter()
    model.inference(data.x, data.edge_index, batch_size=BATCH, workspace=workspace)
    return time.perf_counter() - t


def set_thresholds(model, thr_a: float, thr_w: float) -> None:
    model.set_thresholds(thr_a=thr_a, thr_w=thr_w)
    for lin in model.weight_layers():
        lin.invalidate_mask()  # made again from the first batch's inputs at the next inference


def calibrate(model, data, edge_target: float, weight_target: float, steps: int = 10):
    """Bisection on (thr_a, thr_w): the smallest thresholds found that prune at least the targets."""
    lo_a, hi_a, lo_w, hi_w = 0.0, 8.0, 0.0, 16.0
    for _ in range(steps):
        thr_a, thr_w = (lo_a + hi_a) / 2, (lo_w + hi_w) / 2
        set_thresholds(model, thr_a, thr_w)
        run(model, data)
        f = figures(model)
        ok_a, ok_w = f["edge_sparsity"] >= edge_target, f["weight_sparsity"] >= weight_target
        hi_a, lo_a = (thr_a, lo_a) if ok_a else (hi_a, thr_a)
        hi_w, lo_w = (thr_w, lo_w) if ok_w else (hi_w, thr_w)
    set_thresholds(model, hi_a, hi_w)
    return hi_a, hi_w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--edge-target", type=float, default=0.75)
    p.add_argument("--weight-target", type=float, default=0.92)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--thr_a", type=float, default=None, help="with --thr_w: these thresholds, no calibration")
    p.add_argument("--thr_w", type=float, default=None)
    args = p.parse_args(argv)
    if (args.thr_a is None) != (args.thr_w is None):
        p.error("--thr_a and --thr_w go together")
    name, hidden = SCALES[args.scale]
    dm = UnifewsDataModule(name=name, num_neighbors=[-1, -1, -1])
    ds = dm.load()  # the prepared, memory-mapped graph: its CSC as the [2, E] edges layer-wise inference takes
    data = Data(x=ds.data.x, y=ds.data.y, edge_index=ds.edge_index(), num_nodes=ds.data.num_nodes)
    models = {}
    for kind in ("dense", "pruned"):
        torch.manual_seed(0)  # the same weights
        models[kind] = UnifewsGNN("sage", dm.num_features, hidden, dm.num_classes, num_layers=3, dropout=0.0,
                                  norm="none", lock_target_edges="never").eval()
    if args.thr_a is None:
        thr_a, thr_w = calibrate(models["pruned"], data, args.edge_target, args.weight_target)
    else:
        thr_a, thr_w = args.thr_a, args.thr_w
        set_thresholds(models["pruned"], thr_a, thr_w)
    spaces = {kind: InferenceWorkspace() for kind in models}
    runs = [(kind, cold) for cold in (False, True) for kind in ("dense", "pruned")]
    times = {f"{kind}{'_cold' if cold else ''}": [] for kind, cold in runs}
    for kind in ("dense", "pruned"):  # warm-up: numba compiles its kernels and the weight masks are made
        for _ in range(2):  # on the first pruned run; the second fills the workspace as every later run uses it
            run(models[kind], data, spaces[kind])
    touch = []  # this machine's cost of one layer's output written for the first time (page faults)
    for _ in range(args.repeat):
        for kind, cold in runs:
            times[f"{kind}{'_cold' if cold else ''}"].append(run(models[kind], data, None if cold else spaces[kind]))
        t0 = time.perf_counter()
        torch.empty(data.num_nodes, hidden).fill_(0)
        touch.append(time.perf_counter() - t0)
    t = {k: statistics.median(v) for k, v in times.items()}
    dense, pruned = figures(models["dense"]), figures(models["pruned"])
    res = {"scale": args.scale, "dataset": name, "nodes": data.num_nodes, "edges": data.edge_index.size(1),
           "hidden": hidden, "batch": BATCH, "thr_a": thr_a, "thr_w": thr_w,
           "dense_s": t["dense"], "pruned_s": t["pruned"], "pruned_dense_time_ratio": t["pruned"] / t["dense"],
           "dense_cold_s": t["dense_cold"], "pruned_cold_s": t["pruned_cold"],
           "pruned_dense_time_ratio_cold": t["pruned_cold"] / t["dense_cold"],
           "workspace_gib": spaces["pruned"].nbytes / 2 ** 30,
           "edge_sparsity": pruned["edge_sparsity"], "weight_sparsity": pruned["weight_sparsity"],
           "edge_sparsity_per_layer": pruned["edge_sparsity_per_layer"],
           "macs_dense": dense["macs"], "macs_pruned": pruned["macs"],
           "macs_reduction": dense["macs"] / max(pruned["macs"], 1), "times": times,
           "first_touch_s": touch,
           "backends": sorted({s.transform_backend for s in models["pruned"].layer_stats})}
    print(f"{name}: dense {t['dense']:.2f} s, pruned {t['pruned']:.2f} s (ratio {res['pruned_dense_time_ratio']:.3f}; "
          f"cold {t['dense_cold']:.2f} / {t['pruned_cold']:.2f} s, {res['pruned_dense_time_ratio_cold']:.3f}); "
          f"edges {res['edge_sparsity']:.1%}, weights {res['weight_sparsity']:.1%} pruned; "
          f"MACs {res['macs_reduction']:.1f}x fewer")
    print(write_json(args.out, "inference_speed.json", res))


if __name__ == "__main__":
    main()
