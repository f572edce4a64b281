"""Seconds per batch of PyG's NodeLoader over the prepared graph's (FeatureStore, GraphStore)
pair, as the data module gives it, against the same loader over an in-memory ``Data`` of the
same arrays: what PyG's remote-backend interface costs.

Both run the data module's sampler over the prepared CSC (one sampler for both: the stores'
cost apart from the sampler's; ``tests/data/test_prepared.py`` checks that the two give the
same batches) in the main process, and both gather each batch's features and labels in the
loader (``feature_gather: loader``): the stores' path through ``FeatureStore.multi_get_tensor``,
the ``Data`` path by ``index_select``. Rounds alternate the paths; each path's figure is its
median batch over all rounds (each round starts with the next path).

    python benchmarks/store_speed.py [--scale medium|small|tiny] [--batches 20] [--rounds 6] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import unifews_dist  # noqa: F401  (before torch: its OpenMP setting, as the CLI has it)
import torch
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEFAULT_OUT, write_json  # noqa: E402

from unifews_dist.data import UnifewsDataModule  # noqa: E402

SCALES = {"medium": "synthetic-medium", "small": "synthetic-small", "tiny": "synthetic-tiny"}
FANOUT = [15, 10, 5]


def _per_batch(loader, batches: int) -> list:
    ts, it = [], iter(loader)
    next(it)  # (the first batch: the iterator's start-up)
    for _ in range(batches):
        t = time.perf_counter()
        batch = next(it)
        ts.append(time.perf_counter() - t)
        assert batch.x.size(0) == batch.n_id.numel()
    return ts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="medium")
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    dm = UnifewsDataModule(SCALES[args.scale], num_neighbors=FANOUT, batch_size=args.batch_size, sampler="torch")
    ds = dm.load()
    seeds = ds.train_idx[torch.randperm(ds.train_idx.numel(), generator=torch.Generator().manual_seed(0))]
    seeds = seeds[:args.batch_size * (args.batches + 1)]
    data = Data(x=ds.data.x, y=ds.data.y, edge_index=ds.edge_index(), num_nodes=ds.data.num_nodes)
    sampler = dm._sampler(FANOUT)  # the prepared graph's (its CSC as stored), for both paths
    paths = {
        "data": lambda: NodeLoader(data, sampler, input_nodes=seeds, batch_size=args.batch_size),
        "stores": lambda: NodeLoader(dm.graph, sampler, input_nodes=seeds, batch_size=args.batch_size),
    }
    times = {k: [] for k in paths}
    for r in range(args.rounds):
        names = list(paths)[r % len(paths):] + list(paths)[:r % len(paths)]  # each path first in turn
        for k in names:
            times[k] += _per_batch(paths[k](), args.batches)
        print(f"round {r + 1}: " + ", ".join(f"{k} {sorted(v)[len(v) // 2] * 1e3:.1f} ms" for k, v in times.items()),
              flush=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    result = {"scale": args.scale, "dataset": SCALES[args.scale], "num_nodes": int(ds.data.num_nodes),
              "num_edges": int(ds.num_edges), "batch_size": args.batch_size, "fanout": FANOUT,
              "batches": args.batches, "rounds": args.rounds,
              "s_per_batch": med, "stores_vs_data": med["stores"] / med["data"]}
    print(f"s/batch: Data {med['data']:.4f}, stores {med['stores']:.4f}; stores / Data {result['stores_vs_data']:.3f}")
    write_json(args.out, "store_speed.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
