"""``unifews-dist sweep-table SWEEP_DIR``: one table from a threshold sweep's runs.

Each run directory under ``SWEEP_DIR`` (``launch/slurm/sweep.sbatch`` makes one per
``(thr_a, thr_w)`` pair) holds ``config.yaml`` and, once finished, ``summary.json``. The table
(``SWEEP_DIR/table.csv`` and ``table.md``) has a row per run, sorted by the thresholds; runs
still without a summary are listed as unfinished.
"""
from __future__ import annotations

import csv
import json
import os
from typing import List

import yaml

from ..errors import OneLineArgumentParser, fail

COLUMNS = ("run", "thr_a", "thr_w", "test_acc", "val_acc", "edge_sparsity", "weight_sparsity",
           "macs_reduction", "train_seeds_per_s", "global_step", "world_size")


def _mean(v) -> float:
    return float(sum(v) / len(v)) if isinstance(v, list) else float(v)


def collect(sweep_dir: str) -> tuple[List[dict], List[str]]:
    rows, unfinished = [], []
    for name in sorted(os.listdir(sweep_dir)):
        run = os.path.join(sweep_dir, name)
        if not os.path.isfile(os.path.join(run, "config.yaml")):
            continue
        summary = os.path.join(run, "summary.json")
        if not os.path.isfile(summary):
            unfinished.append(name)
            continue
        with open(os.path.join(run, "config.yaml")) as f:
            model = (yaml.safe_load(f) or {}).get("model", {})
        with open(summary) as f:
            s = json.load(f)
        rows.append({"run": name, "thr_a": _mean(model.get("thr_a", 0.0)), "thr_w": _mean(model.get("thr_w", 0.0)),
                     "test_acc": s["test_acc"], "val_acc": s["val_acc"], "edge_sparsity": s["edge_sparsity"],
                     "weight_sparsity": s["weight_sparsity"],
                     "macs_reduction": s["macs_dense"] / s["macs_sparse"] if s.get("macs_sparse") else float("nan"),
                     "train_seeds_per_s": s["train_seeds_per_s"], "global_step": s.get("global_step"),
                     "world_size": s["world_size"]})
    rows.sort(key=lambda r: (r["thr_a"], r["thr_w"], r["run"]))
    return rows, unfinished


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    p = OneLineArgumentParser(prog="unifews-dist sweep-table", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    if not os.path.isdir(args.sweep_dir):
        return fail(f"sweep directory {args.sweep_dir} does not exist", "sweep-table")
    rows, unfinished = collect(args.sweep_dir)
    if not rows:
        return fail(f"no finished run (config.yaml + summary.json) under {args.sweep_dir}"
                    f"{' (unfinished: ' + ', '.join(unfinished) + ')' if unfinished else ''}", "sweep-table")
    csv_path = os.path.join(args.sweep_dir, "table.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    if unfinished:
        md.append(f"\nunfinished: {', '.join(unfinished)}")
    md_path = os.path.join(args.sweep_dir, "table.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(os.path.abspath(csv_path))
    return 0
