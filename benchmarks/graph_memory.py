"""Host memory and start-up of a run on one node: peak PSS summed over every process of the
run, for 1 process and for 2 and 4 torchrun ranks (CPU, gloo), and the time to the first
training step of a run that prepares the graph against one that maps it prepared.

    python benchmarks/graph_memory.py [--scale products|medium|tiny] [--ranks 1 2 4] [--out DIR]
        [--launchers torchrun fork] [--sampler torch|torch_sparse|pyg_lib] [--eval none|layerwise]

Each run is ``unifews-dist fit`` with the debug model (configs/debug.yaml) on the scale's
synthetic graph for ``--steps`` steps, no validation. PSS (proportional set size, from
``/proc/PID/smaps_rollup``) divides a page shared by k processes by k, so pages of the mapped
graph count once however many ranks map them; the sum is sampled every 0.1 s over the
launcher (torchrun's agent) and every process below it. Start-up: the first run prepares into
an empty cache (``UNIFEWS_CACHE`` in a temporary folder), the second finds it prepared; both
time from launch to the first training batch. Writes ``graph_memory.json``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEFAULT_OUT, write_json  # noqa: E402

SCALES = {"tiny": "synthetic-tiny", "medium": "synthetic-medium", "products": "synthetic-products"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree_pss(pid: int) -> int:
    """PSS in bytes summed over ``pid`` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack += _children(p)
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def run(name: str, ranks: int, steps: int, cache: str, run_dir: str, torchrun: bool = False,
        launcher: str = "torchrun", sampler: str = "torch", evaluate: str = "none") -> dict:
    val = ["--trainer.limit_val_batches", "0"] if evaluate == "none" else [
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--data.eval_mode", evaluate]
    args = ["--config", os.path.join(ROOT, "configs", "debug.yaml"), "--data.name", name, "--run_dir", run_dir,
            "--wandb", "false", "--trainer.max_steps", str(steps), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", str(steps), *val,
            "--trainer.limit_test_batches", "2", "--trainer.callbacks+=first_step.FirstStep", "--data.sampler", sampler]
    if ranks == 1 and not torchrun:
        cmd = [sys.executable, "-m", "unifews_dist", "fit", *args]
    else:
        launch = ["unifews_dist.launch"] if launcher == "fork" else ["torch.distributed.run"]
        cmd = [
            sys.executable,
            "-m",
            *launch,
            "--standalone",
            f"--nproc_per_node={ranks}",
            *([] if launcher == "fork" else ["-m", "unifews_dist"]),
            "fit",
            *args,
            "--trainer.devices",
            str(ranks),
            "--trainer.strategy",
            "ddp",
        ]
    env = {
        **os.environ,
        "UNIFEWS_CACHE": cache,
        "OMP_NUM_THREADS": "1",
        "BENCH_T0": repr(time.time()),
        "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss(proc.pid))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{out[-3000:]}")
    first = [float(line.split()[-2]) for line in out.splitlines() if line.startswith("[bench] first step at")]
    return {
        "ranks": ranks,
        "torchrun": ranks > 1 or torchrun,
        "launcher": launcher if ranks > 1 or torchrun else None,
        "peak_pss_gib": peak[0] / 2**30,
        "first_step_s": min(first) if first else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=list(SCALES), default="products")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--torchrun-one", action="store_true", help="also 1 rank under torchrun (its agent's share)")
    p.add_argument(
        "--sampler",
        choices=["torch", "torch_sparse", "pyg_lib"],
        default="torch",
        help="the sampler (pyg-lib and torch-sparse read an int64 row: mapped, shared)",
    )
    p.add_argument(
        "--eval",
        choices=["none", "sampled", "layerwise"],
        default="none",
        help="a validation after training and a test (none: the test only, sampled)",
    )
    p.add_argument(
        "--launchers",
        nargs="+",
        choices=["torchrun", "fork"],
        default=["torchrun", "fork"],
        help="how several ranks start: torchrun (each rank a new interpreter) or "
        "`python -m unifews_dist.launch` (torchrun forking its ranks after the imports)",
    )
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    name = SCALES[args.scale]
    tmp = tempfile.mkdtemp(prefix="graph_memory_")
    try:
        cache = os.path.join(tmp, "cache")
        first = run(
            name, 1, args.steps, cache, os.path.join(tmp, "run-first"), sampler=args.sampler, evaluate=args.eval
        )
        print(
            f"first run (prepares): first step at {first['first_step_s']:.1f} s, "
            f"peak PSS {first['peak_pss_gib']:.2f} GiB",
            flush=True,
        )
        rows = []
        plan = [(r, False, "torchrun") for r in args.ranks if r == 1]
        plan += [(1, True, la) for la in args.launchers] if args.torchrun_one else []
        plan += [(r, False, la) for la in args.launchers for r in args.ranks if r > 1]
        for r, tr, la in plan:
            res = run(
                name, r, args.steps, cache, os.path.join(tmp, f"run-{r}-{tr}-{la}"), tr, la, args.sampler, args.eval
            )
            rows.append(res)
            print(
                f"{r} rank(s){' (' + res['launcher'] + ')' if res['launcher'] else ''}, prepared: first step at "
                f"{res['first_step_s']:.1f} s, peak PSS {res['peak_pss_gib']:.2f} GiB",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one = next((r for r in rows if r["ranks"] == 1 and not r["torchrun"]), None)
    result = {
        "scale": args.scale,
        "dataset": name,
        "steps": args.steps,
        "sampler": args.sampler,
        "eval": args.eval,
        "first_run": first,
        "runs": rows,
    }
    if one is not None:
        for r in rows:
            r["pss_vs_one_process"] = r["peak_pss_gib"] / one["peak_pss_gib"]
        result["startup_ratio"] = one["first_step_s"] / first["first_step_s"]
        print(
            "pss vs 1 process: "
            + ", ".join(
                f"{r['ranks']} ranks{' (' + r['launcher'] + ')' if r['launcher'] else ''} "
                f"{r['pss_vs_one_process']:.2f}x"
                for r in rows
            )
            + f"; start-up prepared / preparing {result['startup_ratio']:.2f}"
        )
    write_json(args.out, "graph_memory.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
