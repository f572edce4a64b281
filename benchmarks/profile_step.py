"""Where a training step's time goes, op by op: torch.profiler over a few steps, dense and sparse.

    python benchmarks/profile_step.py [--scale products|medium|small|tiny] [--steps N]
                                      [--thr_a A] [--thr_w W] [--out DIR]

The model and sampler of ``train_speed.py`` (GraphSAGE 3 x 256, fanout 15,10,5, batch 1024),
driven by a plain loop so that only the framework's own work is profiled: sampling (the
sampler and feature gather), forward, backward + Adam. On CUDA the graph is sampled on the
GPU. For each run it prints the top ops by self CPU and self CUDA time and counts host-device
synchronisations (``aten::_local_scalar_dense``: a tensor read on the host; ``aten::nonzero``
and ``aten::unique`` also wait for the device), which on a GPU decide whether the host can
run ahead of the device. Writes ``DIR/profile_step.json`` (per-step milliseconds and counts).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, write_json  # noqa: E402
from train_speed import SCALES, _module, _sync  # noqa: E402

from unifews_dist.data import UnifewsDataModule  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::unique", "aten::_unique2")


def cuda_counts(by_key, steps: int) -> dict:
    """Per step, from the profiler's CUDA runtime calls: kernel launches, host waits for the
    device (stream / device synchronisations) and memory copies (both directions; a device to
    host read is among them). All 0 on a CPU."""
    def count(names):
        return sum(by_key[k].count for k in names if k in by_key) / steps

    return {"kernel_launches": count(("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel")),
            "synchronizations": count(("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")),
            "memcpys": count(("cudaMemcpyAsync", "cudaMemcpy"))}


def run(dm, hidden, layers, thr_a, thr_w, steps, device, top):
    torch.manual_seed(0)
    module = _module(dm, hidden, layers, thr_a=thr_a, thr_w=thr_w, lock_target_edges="eval").to(device)
    opt = torch.optim.Adam(module.parameters(), lr=0.003)
    it = iter(dm.train_dataloader())

    def step():
        with record_function("sample"):
            batch = next(it).to(device)
        with record_function("forward"):
            loss = F.cross_entropy(module(batch), batch.y[: batch.batch_size])
        with record_function("backward+adam"):
            opt.zero_grad()
            loss.backward()
            opt.step()

    for _ in range(3):  # warm-up (and weight masks computed)
        step()
    _sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        _sync()
    wall = (time.perf_counter() - t0) / steps
    ka = prof.key_averages()
    # on CUDA a record_function range has two rows: the host one (CPU time, and the device time of
    # the kernels it launched) and a device-side annotation (CPU time 0): keep the host one
    by_key = {}
    for e in ka:
        if e.key not in by_key or e.cpu_time_total > by_key[e.key].cpu_time_total:
            by_key[e.key] = e
    cuda = device.type == "cuda"
    res = {"step_ms": wall * 1e3,
           "syncs_per_step": {k: by_key[k].count / steps for k in SYNC_OPS if k in by_key},
           "cuda_per_step": cuda_counts(by_key, steps),
           "ranges_ms": {}}
    for k in ("sample", "forward", "backward+adam"):
        if k in by_key:
            e = by_key[k]
            res["ranges_ms"][k] = {"cpu": e.cpu_time_total / 1e3 / steps,
                                   "device": (getattr(e, "device_time_total", 0) or 0) / 1e3 / steps}
    print(ka.table(sort_by="self_cpu_time_total", row_limit=top))
    if cuda:
        print(ka.table(sort_by="self_device_time_total", row_limit=top))
    stats = module.model.layer_stats
    res["edge_sparsity"] = 1 - sum(s.edges_kept for s in stats) / max(1, sum(s.edges_dense for s in stats))
    res["weight_sparsity"] = 1 - sum(s.weight_nnz for s in stats) / max(1, sum(s.weight_numel for s in stats))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--scale", choices=sorted(SCALES), default="products")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--thr_a", type=float, default=1.0, help="sparse run's edge threshold")
    p.add_argument("--thr_w", type=float, default=1.0, help="sparse run's weight threshold")
    p.add_argument("--top", type=int, default=25, help="ops listed per table")
    args = p.parse_args(argv)
    name, hidden, fanout, batch = SCALES[args.scale]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = UnifewsDataModule(name=name, num_neighbors=fanout, batch_size=batch, seed=0,
                           gpu_sampling=device.type == "cuda")
    dm.setup("fit")
    res = {"scale": args.scale, "device": device.type, "steps": args.steps}
    for label, (a, w) in (("dense", (0.0, 0.0)), ("sparse", (args.thr_a, args.thr_w))):
        print(f"\n===== {label} (thr_a={a}, thr_w={w}) =====")
        res[label] = run(dm, hidden, len(fanout), a, w, args.steps, device, args.top)
    for label in ("dense", "sparse"):
        r = res[label]
        print(f"{label:<7} step {r['step_ms']:.1f} ms  " + "  ".join(
            f"{k} {v['cpu']:.1f}/{v['device']:.1f} ms" for k, v in r["ranges_ms"].items())
            + f"  syncs/step {r['syncs_per_step']}  edges {r['edge_sparsity']:.1%} weights {r['weight_sparsity']:.1%}")
    print(write_json(args.out, "profile_step.json", res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
