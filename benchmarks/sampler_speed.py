"""Seconds per batch of the built-in sampler vs torch-sparse (and pyg-lib when present).

Random graph of 200,000 nodes and 4,000,000 edges, fanout [15, 10, 5], batch 1024. The built-in
sampler is timed twice: on an idle machine, and beside one busy process competing for the cores
(``builtin_busy_vs_idle``; goal <= 2: a shared node must not collapse it).

    python benchmarks/sampler_speed.py [--out DIR] [--scale tiny]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import unifews_dist  # noqa: F401  (before torch: its OpenMP setting, as the CLI has it)
import torch
from torch_geometric.data import Data
from torch_geometric.sampler import NodeSamplerInput

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, timeit, write_json  # noqa: E402

from unifews_dist.data.samplers import has_module, make_sampler  # noqa: E402

SCALES = {"full": (200_000, 4_000_000, 1024, 5), "tiny": (5_000, 50_000, 128, 3)}
FANOUT = [15, 10, 5]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    args = p.parse_args(argv)
    n, e, b, batches = SCALES[args.scale]
    torch.manual_seed(0)
    data = Data(edge_index=torch.randint(0, n, (2, e)), num_nodes=n)
    seeds = torch.randperm(n)[: b * batches].view(batches, b)
    result = {"scale": args.scale, "num_nodes": n, "num_edges": e, "batch_size": b, "fanout": FANOUT}
    names = {"torch": "builtin", "torch_sparse": "torch_sparse", "pyg_lib": "pyg_lib"}
    print(f"graph: {n} nodes, {e} edges, fanout {FANOUT}, batch {b}")
    for kind, key in names.items():
        if kind != "torch" and not has_module(kind):
            result[f"{key}_s_per_batch"] = None
            print(f"{key:13} not installed")
            continue
        sampler = make_sampler(kind, data, FANOUT, 0)
        it = iter(range(10**9))

        def one():
            i = next(it) % batches
            return sampler.sample_from_nodes(NodeSamplerInput(input_id=torch.arange(b), node=seeds[i]))
        t = timeit(one, repeat=batches, warmup=1)
        result[f"{key}_s_per_batch"] = t
        print(f"{key:13} {t:8.4f} s/batch")
        if kind == "torch":  # again, beside a busy process (bounded: it stops itself after 120 s)
            busy = subprocess.Popen([sys.executable, "-c",
                                     "import time\nt = time.time()\nwhile time.time() - t < 120: pass"])
            try:
                time.sleep(0.5)
                tb = timeit(one, repeat=batches, warmup=1)
            finally:
                busy.kill()
                busy.wait()
            result["builtin_busy_s_per_batch"] = tb
            result["builtin_busy_vs_idle"] = tb / t
            print(f"{'builtin busy':13} {tb:8.4f} s/batch (one competing process): {tb / t:.2f}x idle (goal <= 2)")
    if result.get("torch_sparse_s_per_batch"):
        result["builtin_vs_torch_sparse"] = result["builtin_s_per_batch"] / result["torch_sparse_s_per_batch"]
        print(f"built-in / torch-sparse = {result['builtin_vs_torch_sparse']:.3f} (goal <= 0.2)")
    print(write_json(args.out, "sampler_speed.json", result))


if __name__ == "__main__":
    main()
