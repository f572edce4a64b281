"""``unifews-dist compare --config C --seeds N``: a config against its dense run, seed by seed.

For each seed ``S`` it trains two runs of the same config on the same split and seed
(``--seed_everything S --data.seed S``): the config as given (Unifews) and the same with
``--model.thr_a 0 --model.thr_w 0`` (dense). Any other argument is passed to both ``fit`` calls.
It prints and writes one table (``OUT/table.md``, ``table.csv``, ``compare.json``): test accuracy
of each, their difference, the sparsity the trained model reached in training
(``last_train_epoch``) and on the test batches, the MACs and the wall time; then the mean and
spread (sample standard deviation) over the seeds. Runs are subprocesses with their own run
directories (``OUT/seedS-unifews``, ``OUT/seedS-dense``), so the same command again resumes an
interrupted comparison and reuses the finished runs. ``--baseline OTHER_OUT`` takes the dense
runs of an earlier comparison of the same config instead of training them again.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from typing import List, Optional

from ..errors import OneLineArgumentParser, fail

COLUMNS = ("seed", "dense_test_acc", "unifews_test_acc", "diff", "train_edge_sparsity", "train_weight_sparsity",
           "train_macs", "test_edge_sparsity", "test_weight_sparsity", "test_macs", "dense_wall_s", "unifews_wall_s")


def _ratio(f: dict) -> float:
    return f["macs_sparse"] / f["macs_dense"] if f.get("macs_dense") else float("nan")


def run_fit(configs: List[str], seed: int, run_dir: str, extra: List[str], dense: bool) -> Optional[dict]:
    """Train one run (or resume / reuse it) and return its ``summary.json`` (``None``: it failed;
    its output is in ``run_dir + '.log'``)."""
    summary = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(summary):
        cmd = [sys.executable, "-m", "unifews_dist", "fit"]
        for c in configs:
            cmd += ["--config", c]
        cmd += ["--seed_everything", str(seed), "--data.seed", str(seed), "--run_dir", run_dir, "--wandb", "false",
                "--trainer.enable_progress_bar", "false", *extra]
        if dense:
            cmd += ["--model.thr_a", "0", "--model.thr_w", "0"]
        print("+ " + " ".join(cmd), flush=True)
        with open(run_dir.rstrip("/") + ".log", "a") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if code != 0 or not os.path.isfile(summary):
            return None
    with open(summary) as f:
        return json.load(f)


def row(seed: int, dense: dict, sparse: dict) -> dict:
    trained = sparse["last_train_epoch"]
    return {"seed": seed, "dense_test_acc": dense["test_acc"], "unifews_test_acc": sparse["test_acc"],
            "diff": sparse["test_acc"] - dense["test_acc"],
            "train_edge_sparsity": trained["edge_sparsity"], "train_weight_sparsity": trained["weight_sparsity"],
            "train_macs": _ratio(trained), "test_edge_sparsity": sparse["edge_sparsity"],
            "test_weight_sparsity": sparse["weight_sparsity"], "test_macs": _ratio(sparse),
            "dense_wall_s": dense["wall_s"], "unifews_wall_s": sparse["wall_s"]}


def mean_std(values: List[float]) -> tuple:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def table(rows: List[dict]) -> List[str]:
    def fmt(c: str, v) -> str:
        if c == "seed":
            return str(v)
        if c.endswith("wall_s"):
            return f"{v:.0f}"
        if c == "diff":
            return f"{100 * v:+.1f}"
        if c.endswith("macs"):
            return f"{v:.3f}x"
        return f"{100 * v:.1f}"

    head = ["seed", "dense acc", "Unifews acc", "diff (points)", "edges pruned (train)", "weights pruned (train)",
            "MACs (train)", "edges pruned (test)", "weights pruned (test)", "MACs (test)", "dense s", "Unifews s"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(fmt(c, r[c]) for c in COLUMNS) + " |" for r in rows]
    stats = {c: mean_std([r[c] for r in rows]) for c in COLUMNS[1:]}
    md.append("| mean ± std | " + " | ".join(
        f"{fmt(c, m)} ± {fmt(c, s).lstrip('+')}" for c, (m, s) in stats.items()) + " |")
    return md


def main(argv=None) -> int:
    p = OneLineArgumentParser(prog="unifews-dist compare", description=__doc__.split("\n\n")[0],
                                epilog="Other arguments (e.g. --data.name citeseer) are passed to every fit.")
    p.add_argument("--config", "-c", action="append", required=True, help="a fit config (repeatable)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    p.add_argument("--out", default=None, help="where the runs and the table go (default runs/compare-CONFIG)")
    p.add_argument("--baseline", default=None, help="an earlier comparison's OUT whose dense runs to reuse")
    args, extra = p.parse_known_args(argv)
    if args.seeds < 1:
        return fail(f"--seeds must be >= 1, got {args.seeds}", "compare")
    for c in args.config:
        if not os.path.isfile(c):
            return fail(f"config {c} does not exist", "compare")
    if args.baseline is not None and not os.path.isdir(args.baseline):
        return fail(f"--baseline {args.baseline} is not a directory (an earlier comparison's OUT)", "compare")
    out = args.out or os.path.join("runs", "compare-" + os.path.splitext(os.path.basename(args.config[-1]))[0])
    os.makedirs(out, exist_ok=True)
    rows = []
    for seed in range(args.seeds):
        dense_dir = os.path.join(args.baseline or out, f"seed{seed}-dense")
        if args.baseline is not None and not os.path.isfile(os.path.join(dense_dir, "summary.json")):
            return fail(f"--baseline {args.baseline} has no finished dense run of seed {seed} ({dense_dir})", "compare")
        runs = {}
        for kind, run_dir in (("unifews", os.path.join(out, f"seed{seed}-unifews")), ("dense", dense_dir)):
            runs[kind] = run_fit(args.config, seed, run_dir, extra, dense=kind == "dense")
            if runs[kind] is None:
                return fail(f"the {kind} run of seed {seed} failed; its output: {run_dir.rstrip('/')}.log", "compare")
        rows.append(row(seed, runs["dense"], runs["unifews"]))
    md = table(rows)
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump({"configs": args.config, "extra_args": extra, "rows": rows}, f, indent=2)
    path = os.path.abspath(os.path.join(out, "table.md"))
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(path, flush=True)
    return 0
