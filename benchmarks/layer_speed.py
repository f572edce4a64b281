"""Time a GCN and a SAGE layer, dense vs pruned, on a random graph (default 1M edges, 256 channels).

Propagation: scoring + selecting + aggregating over the kept edges (the layer's own code path)
vs aggregating over every edge. Transform: the sparse kernel vs a dense matmul at the same
weight density. Thresholds are calibrated to hit each target sparsity exactly.

    python benchmarks/layer_speed.py [--out DIR] [--scale tiny] [--device cpu|cuda]

On CUDA the sparse transform is torch's CSR matmul (cuSPARSE); the JSON is then
``layer_speed_cuda.json``, so the CPU figures stay beside it.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, timeit, write_json  # noqa: E402

from unifews_dist.nn import UnifewsGCNConv, UnifewsLinear, UnifewsSAGEConv  # noqa: E402
from unifews_dist.nn.selection import select_edges  # noqa: E402
from unifews_dist.sparsify import edge_scores, node_norms  # noqa: E402
from unifews_dist.sparsify.spmm import sparse_linear  # noqa: E402

SPARSITIES = (0.5, 0.9, 0.99)
SCALES = {"full": (100_000, 1_000_000, 256), "tiny": (2_000, 20_000, 32)}
# (rows, in, out) of the transform crossover sweep: where the sparse kernel starts to beat dense
CROSSOVER_SHAPES = {"full": [(2_000, 64, 64), (2_000, 256, 256), (20_000, 256, 256), (20_000, 1433, 64),
                             (100_000, 64, 64), (100_000, 256, 256), (100_000, 1433, 64)],
                    "tiny": [(500, 32, 16)]}
CROSSOVER_DENSITIES = (0.1, 0.3, 0.5, 0.7)


def calibrated_thr_a(scores: torch.Tensor, locked: torch.Tensor, sparsity: float) -> float:
    """thr_a that prunes ``sparsity`` of all edges, as far as the locked ones allow."""
    free = scores[~locked]
    q = min(sparsity * scores.numel() / max(free.numel(), 1), 1.0)
    sample = free[torch.randperm(free.numel())[:1_000_000]]
    return float(torch.quantile(sample, q) / scores.mean()) * (1 + 1e-6)


def calibrated_thr_w(weight: torch.Tensor, x: torch.Tensor, sparsity: float) -> float:
    c = x.norm(dim=0)
    rel = (weight.detach().abs() * c).flatten()  # prune iff rel < thr_w * ||c|| / F_in
    return float(torch.quantile(rel, sparsity) * x.size(1) / c.norm())


def bench_propagation(conv, x, ei, ew, repeat):
    h = x
    norms = node_norms(h)
    scores = edge_scores(norms, ei[0], ew)
    size = (x.size(0), x.size(0))
    dense = timeit(lambda: conv.propagate(ei, x=(h, h), edge_weight=ew, size=size), repeat)
    rows = {}
    for sp in SPARSITIES:
        conv.thr_a = calibrated_thr_a(scores, ei[0] == ei[1], sp)

        def pruned():
            keep = conv.prune_edges(ei, ew, node_norms(h))
            sel = select_edges(keep, None, x.size(0), x.size(0), ei, ew)
            conv.propagate(sel.edge_index, x=(h, h), edge_weight=sel.edge_weight, size=size)
            return sel
        t = timeit(pruned, repeat)
        rows[sp] = {"s": t, "ratio": t / dense, "edge_sparsity": 1 - int(pruned().edges_kept) / ei.size(1)}
    conv.thr_a = 0.0
    return dense, rows


def bench_transform(n, channels, repeat, device):
    x = torch.randn(n, channels, device=device)
    lin = UnifewsLinear(channels, channels, bias=False).to(device)
    dense = timeit(lambda: torch.nn.functional.linear(x, lin.weight), repeat)
    rows = {}
    for sp in SPARSITIES:
        lin.thr_w = calibrated_thr_w(lin.weight, x, sp)
        lin.update_mask(x)
        lin.mask_mode = "keep"
        lin.eval()
        out = {}
        for backend in ("sparse", "dense"):
            lin.backend = backend
            out[backend] = timeit(lambda: lin(x), repeat)
        rows[sp] = {"s": out["sparse"], "ratio": out["sparse"] / dense,
                    "masked_dense_ratio": out["dense"] / dense, "weight_sparsity": 1 - lin.weight_density()}
    return dense, rows


def bench_crossover(shapes, repeat, device):
    """Sparse / dense transform time by weight density (random masks) for each (rows, in, out)."""
    rows = []
    for n, fi, fo in shapes:
        x = torch.randn(n, fi, device=device)
        w = torch.randn(fo, fi, device=device)
        dense = timeit(lambda: x @ w.t(), repeat)
        ratios = {}
        for d in CROSSOVER_DENSITIES:
            m = torch.rand(fo, fi, device=device) < d
            ratios[str(d)] = timeit(lambda: sparse_linear(x, w, m), repeat) / dense
        rows.append({"rows": n, "in": fi, "out": fo, "dense_s": dense, "ratio_by_density": ratios})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--repeat", type=int, default=None, help="timed repeats (default 5 on CPU, 20 on CUDA)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    repeat = args.repeat or (20 if device.type == "cuda" else 5)
    torch.manual_seed(0)
    n, e, c = SCALES[args.scale]
    ei = torch.randint(0, n, (2, e), device=device)
    x = torch.randn(n, c, device=device)
    result = {"scale": args.scale, "device": device.type, "num_nodes": n, "num_edges": e, "channels": c,
              "layers": {}}
    print(f"graph: {n} nodes, {e} edges, {c} channels, {torch.get_num_threads()} threads")
    print(f"{'layer':6} {'op':12} {'target':>7} {'actual':>7} {'seconds':>9} {'pruned/dense':>12}")
    for name, Conv in (("gcn", UnifewsGCNConv), ("sage", UnifewsSAGEConv)):
        conv = Conv(c, c).to(device)
        ei_p, ew = conv.prepare_edges(ei, n, n)
        dense, rows = bench_propagation(conv, x, ei_p, ew, repeat)
        print(f"{name:6} {'propagation':12} {'0%':>7} {'0%':>7} {dense:9.4f} {1:12.3f}")
        for sp, r in rows.items():
            print(f"{name:6} {'propagation':12} {sp:7.0%} {r['edge_sparsity']:7.1%} {r['s']:9.4f} {r['ratio']:12.3f}")
        result["layers"][name] = {"propagation_dense_s": dense, "propagation": {str(k): v for k, v in rows.items()}}
    dense, rows = bench_transform(n, c, repeat, device)
    print(f"{'any':6} {'transform':12} {'0%':>7} {'0%':>7} {dense:9.4f} {1:12.3f}")
    for sp, r in rows.items():
        print(f"{'any':6} {'transform':12} {sp:7.0%} {r['weight_sparsity']:7.1%} {r['s']:9.4f} {r['ratio']:12.3f}"
              f"   (masked dense: {r['masked_dense_ratio']:.3f})")
    result["transform"] = {"dense_s": dense, **{str(k): v for k, v in rows.items()}}
    result["crossover"] = bench_crossover(CROSSOVER_SHAPES[args.scale], repeat, device)
    print("transform crossover, sparse / dense time at density " + " / ".join(map(str, CROSSOVER_DENSITIES)))
    for r in result["crossover"]:
        print(f"  {r['rows']:>7} x {r['in']:>4} x {r['out']:>4} (dense {r['dense_s'] * 1e3:7.2f} ms): "
              + " / ".join(f"{v:.2f}" for v in r["ratio_by_density"].values()))
    result["propagation_ratio_90"] = max(result["layers"][k]["propagation"]["0.9"]["ratio"] for k in ("gcn", "sage"))
    result["transform_ratio_90"] = rows[0.9]["ratio"]
    path = write_json(args.out, "layer_speed.json" if device.type == "cpu" else "layer_speed_cuda.json", result)
    print(f"propagation_ratio_90 = {result['propagation_ratio_90']:.3f} (goal <= 0.20), "
          f"transform_ratio_90 = {result['transform_ratio_90']:.3f} (goal <= 0.50)")
    print(path)


if __name__ == "__main__":
    main()
