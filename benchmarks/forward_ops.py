"""Host work of the layer stack's forward, per conv: aten ops and host syncs (``op_counter.py``).

    python benchmarks/forward_ops.py [--out DIR]

One 3-hop sampled block (a 400-node random graph, fanout [8, 6, 4], 32 seeds, the built-in
sampler), a 3-layer ``UnifewsGNN`` 16 -> 32 -> 5 of each conv with the transform CUDA's ``auto``
picks (dense with the mask), weight masks kept (as between mask updates): the forward dense,
pruned (thresholds 1 / 1) with the seeds' edges locked in evaluation only, and pruned with them
locked always. Exact counts, no timing. Writes ``DIR/forward_ops.json``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch_geometric.data import Data
from torch_geometric.sampler import NodeSamplerInput

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, write_json  # noqa: E402
from op_counter import OpCounter  # noqa: E402

from unifews_dist.data.sampler import TorchNeighborSampler  # noqa: E402
from unifews_dist.nn import UnifewsGNN  # noqa: E402

CONVS = ("sage", "gin", "gcn", "gcnii", "gat")
RUNS = {"dense": (0.0, "eval"), "sparse": (1.0, "eval"), "sparse_locked": (1.0, "always")}


def block(seed: int = 0):
    """The sampled block: features, edges, per-hop node and edge counts."""
    n = 400
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 6000), generator=g)
    ei = torch.unique(ei[:, ei[0] != ei[1]], dim=1)
    seeds = torch.randperm(n, generator=g)[:32]
    out = TorchNeighborSampler(Data(edge_index=ei, num_nodes=n), [8, 6, 4], seed=seed).sample_from_nodes(
        NodeSamplerInput(input_id=torch.arange(32), node=seeds))
    x = torch.randn(out.node.numel(), 16, generator=g)
    return x, torch.stack([out.row, out.col]), out.num_sampled_nodes, out.num_sampled_edges


def count(conv: str, thr: float, lock: str, data) -> dict:
    x, ei, hops, edges = data
    torch.manual_seed(0)
    thr_a = thr * 0.3 if conv == "gat" else thr  # attention ~ 1 / degree: GATv2's thresholds live in [0, 1)
    model = UnifewsGNN(conv, 16, 32, 5, num_layers=3, thr_a=thr_a, thr_w=thr, weight_backend="dense",
                       lock_target_edges=lock)
    model(x, ei, num_sampled_nodes=hops, batch_size=32, num_sampled_edges=edges)  # masks made
    for lin in model.weight_layers():
        lin.mask_mode = "keep"
    with OpCounter() as c:
        model(x, ei, num_sampled_nodes=hops, batch_size=32, num_sampled_edges=edges)
    return {**c.counts(), "sync_ops": {k.split(":")[-1]: v for k, v in c.sync_ops.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    data = block()
    res = {conv: {run: count(conv, thr, lock, data) for run, (thr, lock) in RUNS.items()} for conv in CONVS}
    print(f"{'ops / syncs':<8}" + "".join(f"{run:>16}" for run in RUNS))
    for conv, runs in res.items():
        print(f"{conv:<8}" + "".join(f"{r['ops']:>11} / {r['syncs']:<2}" for r in runs.values()))
    print(write_json(args.out, "forward_ops.json", res))


if __name__ == "__main__":
    main()
