"""Every GPU figure in one call, each part in its own time budget: what a lent GPU runs first.

    python benchmarks/gpu_check.py [--out DIR] [--parts tests train_speed ...] [--smoke]

Parts (default: all, in this order; budgets in seconds, about 8 minutes in all on one H100):

- ``tests`` (60): the ``gpu``-marked tests.
- ``train_speed`` (240): ``train_speed.py`` on the products-sized graph, batch 1024 and 8192, each
  with GPU sampling and with host sampling in 4 workers plus the device-side feature gather:
  the plain PyG loop, unifews dense and unifews sparse; seconds per epoch extrapolated from 20
  timed steps (mean step x batches per epoch, as ``train_speed.py`` states).
- ``step_overhead`` (60): ``step_overhead.py`` (aten ops and host syncs per step, as counted on
  the CPU) and ``profile_step.py`` on the GPU (kernel launches, synchronisations and memory
  copies per step from ``torch.profiler``'s CUDA runtime calls).
- ``inference_speed`` (75): ``inference_speed.py`` products-sized, dense against pruned.
- ``data_side`` (120): ``data_side.py`` on the GPU: rows gathered, bytes moved, data and step
  time per batch, dense against Unifews (every row gathered, only the rows a layer reads, and
  sampling less), on the quick start and on ``synthetic-medium``.
- ``launch`` (30): one rank started by ``python -m unifews_dist.launch`` on the GPU (the launcher
  refuses to fork once CUDA is initialised; this shows the ranks it forks can use it).
- ``fit`` (30): ``unifews-dist fit`` of the debug config with ``--trainer.accelerator gpu``.

A part that fails or runs out of its budget is recorded as such and the next one runs; the
results are written after every part: ``DIR/gpu_check.json`` (each part's command, exit code,
seconds, figures and the tail of its output) and ``DIR/gpu_check.md`` (a table for
BENCHMARKS.md). ``--smoke`` runs the same parts at tiny scale on whatever device there is (the
CPU in CI), so the script cannot rot.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
PARTS = ("tests", "train_speed", "step_overhead", "inference_speed", "data_side", "launch", "fit")
BUDGET_S = {"tests": 60, "train_speed": 240, "step_overhead": 60, "inference_speed": 75, "data_side": 120,
            "launch": 30, "fit": 30}
#: data_side.py's threshold for synthetic-medium: its edge sparsity is the quick start's (BENCHMARKS.md)
SYNTHETIC_THR_A = "1.23"


def _py(*args: str) -> List[str]:
    return [sys.executable, *args]


def commands(part: str, out: str, smoke: bool, accel: str) -> Dict[str, List[str]]:
    """The named commands of a part (run in turn, sharing its budget)."""
    scale = "tiny" if smoke else "products"
    if part == "tests":
        return {"gpu_tests": _py("-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                 os.path.join(ROOT, "tests"))}
    if part == "train_speed":
        cmds = {}
        for batch in ((32, 64) if smoke else (1024, 8192)):
            base = _py(os.path.join(BENCH, "train_speed.py"), "--out", out, "--scale", scale, "--batch-size",
                       str(batch), "--steps", "2" if smoke else "20", "--warmup", "1" if smoke else "3")
            gpu = ["--gpu-sampling"] if accel == "gpu" else ["--no-gpu-sampling"]
            cmds[f"train_speed_b{batch}_gpu_sampling"] = base + gpu + ["--name", f"train_speed_b{batch}_gpu_sampling"]
            cmds[f"train_speed_b{batch}_workers"] = base + ["--no-gpu-sampling", "--num-workers", "1" if smoke else "4",
                                                           "--feature-gather", "device",
                                                           "--name", f"train_speed_b{batch}_workers"]
        return cmds
    if part == "step_overhead":
        small = "tiny" if smoke else "small"
        return {"step_overhead": _py(os.path.join(BENCH, "step_overhead.py"), "--out", out, "--scale", small,
                                     "--steps", "2" if smoke else "4"),
                "profile_step": _py(os.path.join(BENCH, "profile_step.py"), "--out", out, "--scale", small,
                                    "--steps", "2" if smoke else "10", "--top", "5")}
    if part == "inference_speed":
        return {"inference_speed": _py(os.path.join(BENCH, "inference_speed.py"), "--out", out, "--scale", scale,
                                       "--repeat", "1" if smoke else "2")}
    if part == "data_side":
        size = ["--graph", "quickstart", "--steps", "2", "--warmup", "1"] if smoke else ["--steps", "20"]
        return {"data_side": _py(os.path.join(BENCH, "data_side.py"), "--out", out, "--accelerator", accel, *size,
                                 "--synthetic-thr-a", SYNTHETIC_THR_A)}
    fit = ["fit", "--config", os.path.join(ROOT, "configs", "debug.yaml"), "--trainer.accelerator", accel,
           "--trainer.devices", "1", "--wandb", "false", "--trainer.enable_progress_bar", "false"]
    if part == "launch":
        return {"launch": _py("-m", "unifews_dist.launch", "--standalone", "--nproc_per_node=1", *fit,
                              "--trainer.strategy", "ddp", "--run_dir", os.path.join(out, "launch_run"))}
    if part == "fit":
        return {"fit": _py("-m", "unifews_dist", *fit, "--run_dir", os.path.join(out, "fit_run"))}
    raise ValueError(f"unknown part {part!r}; parts: {', '.join(PARTS)}")


def _load(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def figures(name: str, out: str, log: str) -> dict:
    """The figures a command left: from its JSON results, or from its output."""
    if name == "gpu_tests":
        m = re.findall(r"(\d+) (passed|failed|skipped|error)", log)
        return {k: int(v) for v, k in m}
    if name.startswith("train_speed"):
        r = _load(os.path.join(out, f"{name}.json")) or {}
        return {k: r.get(k) for k in ("batch_size", "gpu_sampling", "num_workers", "feature_gather",
                                      "batches_per_epoch", "framework_overhead_ratio", "sparse_step_ratio",
                                      "edge_sparsity", "weight_sparsity")} | {
            f"epoch_s_{run}": sum(v.values()) for run, v in (r.get("epoch_s") or {}).items()}
    if name == "step_overhead":
        r = _load(os.path.join(out, "step_overhead.json")) or {}
        return {run: {ph: r[run][ph] for ph in ("sampling", "forward", "backward") if ph in r[run]}
                for run in ("pyg", "unifews_dense", "unifews_sparse") if run in r}
    if name == "profile_step":
        r = _load(os.path.join(out, "profile_step.json")) or {}
        return {run: {"step_ms": v.get("step_ms"), **(v.get("cuda_per_step") or {}),
                      "aten_syncs": sum((v.get("syncs_per_step") or {}).values())}
                for run, v in r.items() if isinstance(v, dict) and "step_ms" in v}
    if name == "inference_speed":
        r = _load(os.path.join(out, "inference_speed.json")) or {}
        return {k: r.get(k) for k in ("pruned_dense_time_ratio", "pruned_dense_time_ratio_cold", "edge_sparsity",
                                      "weight_sparsity", "macs_reduction")} | {"times_s": r.get("times_s")}
    if name == "data_side":
        r = _load(os.path.join(out, "data_side.json")) or {}
        return {g: {run: {k: v[k] for k in ("rows", "nodes", "bytes", "data_s", "step_s")} for run, v in r[g].items()}
                for g in ("quickstart", "synthetic") if g in r}
    if name in ("launch", "fit"):
        s = _load(os.path.join(out, f"{name}_run", "summary.json")) or {}
        return {k: s.get(k) for k in ("test_acc", "world_size", "global_step")}
    return {}


def run_part(part: str, out: str, smoke: bool, accel: str, budget: float) -> dict:
    """Run a part's commands in turn within ``budget`` seconds; what each did."""
    res, t_end = {}, time.monotonic() + budget
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name, cmd in commands(part, out, smoke, accel).items():
        left = t_end - time.monotonic()
        if left <= 1:
            res[name] = {"cmd": cmd, "status": "not run: budget spent"}
            continue
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
            rc, log = p.returncode, p.stdout + p.stderr
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired as e:
            rc, status = None, f"out of budget ({budget:.0f} s for the part)"
            log = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace") \
                if isinstance(e.stdout, bytes) else (e.stdout or "") + (e.stderr or "")
        res[name] = {"cmd": cmd, "status": status, "exit": rc, "seconds": round(time.monotonic() - t0, 1),
                     "figures": figures(name, out, log), "tail": log[-3000:]}
    return res


def markdown(results: dict, device: str) -> str:
    lines = [f"GPU check on {device}", "", "| part | command | status | s | figures |",
             "| --- | --- | --- | --- | --- |"]
    for part, cmds in results.items():
        for name, r in cmds.items():
            figs = json.dumps(r.get("figures", {}), default=str)
            figs = figs if len(figs) < 400 else figs[:397] + "..."
            lines.append(f"| {part} | {name} | {r['status']} | {r.get('seconds', '')} | `{figs}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(BENCH, "results", "gpu_check"))
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--smoke", action="store_true", help="tiny scale on any device (CI)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's budget")
    args = p.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        p.error("no CUDA device: run with --smoke for the tiny CPU version")
    device = torch.cuda.get_device_name() if cuda else "cpu"
    accel = "gpu" if cuda else "cpu"
    os.makedirs(args.out, exist_ok=True)
    results: Dict[str, dict] = {}
    t0 = time.monotonic()
    for part in args.parts:
        budget = BUDGET_S[part] * args.budget_scale * (4 if args.smoke else 1)
        print(f"[gpu_check] {part} (budget {budget:.0f} s)", flush=True)
        results[part] = run_part(part, args.out, args.smoke, accel, budget)
        for name, r in results[part].items():
            print(f"  {name}: {r['status']} {r.get('seconds', '')}", flush=True)
        payload = {"device": device, "smoke": args.smoke, "seconds": round(time.monotonic() - t0, 1), "parts": results}
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump(payload, f, indent=2, default=str)
        with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
            f.write(markdown(results, device))
    print(os.path.join(args.out, "gpu_check.json"))
    failed = [n for r in results.values() for n, c in r.items() if c["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
