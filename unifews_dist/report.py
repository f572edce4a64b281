"""``unifews-dist report RUN_DIR``: a run's sparsity and throughput curves as PNG files.

For people without W&B: reads the run's ``metrics.csv`` (Lightning's CSVLogger, which every run
writes) and ``summary.json`` if it is there, and draws one PNG per panel into
``RUN_DIR/report/``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from typing import Dict, List, Tuple

Series = Dict[str, Tuple[List[float], List[float]]]


def read_metrics(path: str) -> Series:
    """``{key: (steps, values)}`` for every numeric column of a Lightning ``metrics.csv``."""
    out: Series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if step in (None, ""):
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    xs, ys = out.setdefault(key, ([], []))
                    xs.append(float(step))
                    ys.append(v)
    return out


def _layer_keys(series: Series, prefix: str) -> List[str]:
    pat = re.compile(re.escape(prefix) + r"layer(\d+)$")
    return sorted((k for k in series if pat.match(k)), key=lambda k: int(pat.match(k).group(1)))


PANELS = {
    "edge_sparsity": ("Edge sparsity per layer", "fraction of sampled edges pruned", lambda s: _layer_keys(s, "sparsity/edge/") + [k for k in ("sparsity/edge/all",) if k in s]),
    "weight_sparsity": ("Weight sparsity per layer", "fraction of weight entries pruned", lambda s: _layer_keys(s, "sparsity/weight/") + [k for k in ("sparsity/weight/all",) if k in s]),
    "throughput": ("Throughput (all ranks)", "per second", lambda s: [k for k in ("throughput/seeds_per_s", "throughput/kept_edges_per_s", "throughput/edges_per_s") if k in s]),
    "step_time": ("Step time split (mean over ranks)", "seconds", lambda s: [k for k in ("time/data_s", "time/transfer_s", "time/forward_s", "time/backward_s") if k in s]),
}


def draw(run_dir: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(metrics):
        raise FileNotFoundError(f"{run_dir!r} has no metrics.csv: give the directory a run wrote "
                                "(the folder that holds summary.json)")
    series = read_metrics(metrics)
    summary_path = os.path.join(run_dir, "summary.json")
    summary = json.load(open(summary_path)) if os.path.isfile(summary_path) else None
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, (title, ylabel, keys_of) in PANELS.items():
        keys = keys_of(series)
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            xs, ys = series[k]
            if k.endswith("/all"):  # dashed and on top: visible where it coincides with a layer's line
                ax.plot(xs, ys, label=k, color="black", ls="--", lw=1.6, zorder=3)
            else:
                ax.plot(xs, ys, label=k, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("trainer/global_step")
        ax.set_ylabel(ylabel)
        if name == "throughput":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if summary and name == "edge_sparsity":
            ax.text(0.01, 0.01, f"test acc {summary['test_acc']:.3f}, MACs {summary['macs_sparse'] / max(summary['macs_dense'], 1):.2f}x",
                    transform=ax.transAxes, fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if not written:
        raise ValueError(f"{metrics} holds no sparsity/ or throughput/ columns (was the run trained with "
                         "unifews-dist fit?)")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="unifews-dist report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (holds metrics.csv and summary.json)")
    args = parser.parse_args(argv)
    try:
        paths = draw(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"unifews-dist report: error: {e}\n")
        return 2
    for p in paths:
        print(os.path.abspath(p))
    return 0
