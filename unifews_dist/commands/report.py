"""``unifews-dist report RUN_DIR [--baseline DENSE_RUN]``: a run's curves as PNG files.

For people without W&B: reads the run's ``metrics.csv`` (which every run writes) and
``summary.json`` if it is there, and draws one PNG per panel into ``RUN_DIR/report/``:
accuracy above the sparsity over training (``accuracy.png``), sparsity per layer, throughput and
the step-time split; a baseline run's accuracy, throughput and step times beside this one's.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Dict, List, Optional, Tuple

from ..errors import OneLineArgumentParser, fail

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
    "edge_sparsity": (
        "Edge sparsity per layer (progressive: grows with depth)",
        "fraction of sampled edges pruned",
        lambda s: _layer_keys(s, "sparsity/edge/") + [k for k in ("sparsity/edge/all",) if k in s],
    ),
    "weight_sparsity": (
        "Weight sparsity per layer",
        "fraction of weight entries pruned",
        lambda s: _layer_keys(s, "sparsity/weight/") + [k for k in ("sparsity/weight/all",) if k in s],
    ),
    "throughput": (
        "Throughput (all ranks; baseline dotted)",
        "per second",
        lambda s: [
            k for k in ("throughput/seeds_per_s", "throughput/kept_edges_per_s", "throughput/edges_per_s") if k in s
        ],
    ),
    "step_time": (
        "Step time split (mean over ranks; baseline dotted)",
        "seconds",
        lambda s: [k for k in ("time/data_s", "time/transfer_s", "time/forward_s", "time/backward_s") if k in s],
    ),
}


def _summary(run_dir: str):
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _metrics(run_dir: str) -> Tuple[str, Series]:
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{run_dir!r} has no metrics.csv: give the directory a run wrote (the folder that holds summary.json)"
        )
    return path, read_metrics(path)


#: what a reader sees for each logged key (legends, axes)
LABELS = {
    "train/acc": "train accuracy", "val/acc": "validation accuracy",
    "sparsity/edge/all": "edges pruned (all layers)", "sparsity/weight/all": "weights pruned (all layers)",
    "throughput/seeds_per_s": "seed nodes / s", "throughput/kept_edges_per_s": "edges aggregated / s",
    "throughput/edges_per_s": "edges sampled / s",
    "time/data_s": "sampling + loading", "time/transfer_s": "host to device", "time/forward_s": "forward",
    "time/backward_s": "backward + optimizer",
}
STEP = "training step (optimizer steps)"


def label(key: str) -> str:
    """``LABELS[key]``, or ``layer i`` for a per-layer key (layers counted from 1)."""
    if key in LABELS:
        return LABELS[key]
    m = re.search(r"layer(\d+)$", key)
    return f"layer {int(m.group(1)) + 1}" if m else key


def draw_accuracy(plt, series: Series, summary, baseline, path: str) -> bool:
    """Two panels on one step axis: accuracy (train and validation per epoch, the test accuracy,
    the baseline run's validation and test accuracy when given as ``(series, summary)``) above,
    and the edge and weight sparsity over training below (the baseline's, dense, is 0)."""
    keys = [k for k in ("train/acc", "val/acc") if k in series]
    if not keys:
        return False
    sparsity = [k for k in ("sparsity/edge/all", "sparsity/weight/all") if k in series]
    fig, axes = plt.subplots(2 if sparsity else 1, 1, figsize=(7, 6 if sparsity else 4), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2]} if sparsity else None, squeeze=False)
    ax = axes[0][0]
    for k, color in zip(keys, ("tab:blue", "tab:orange")):
        ax.plot(*series[k], label=label(k), color=color, lw=1.4, marker=".", ms=3)
    if summary and math.isfinite(summary.get("test_acc", float("nan"))):
        ax.axhline(summary["test_acc"], color="tab:red", lw=1.0, label=f"test accuracy {summary['test_acc']:.3f}")
    if baseline is not None:
        b_series, b_summary = baseline
        if "val/acc" in b_series:
            ax.plot(*b_series["val/acc"], label="baseline: validation accuracy", color="grey", ls=":", lw=1.4)
        if b_summary and math.isfinite(b_summary.get("test_acc", float("nan"))):
            ax.axhline(b_summary["test_acc"], color="black", ls="--", lw=1.0,
                       label=f"baseline: test accuracy {b_summary['test_acc']:.3f}")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Accuracy and sparsity over training")
    if sparsity:
        ax2 = axes[1][0]
        for k, color in zip(sparsity, ("tab:green", "tab:purple")):
            ax2.plot(*series[k], label=label(k), color=color, lw=1.2)
        ax2.set_ylabel("fraction pruned")
        ax2.set_ylim(0, 1)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="lower right")
    axes[-1][0].set_xlabel(STEP)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def draw(run_dir: str, baseline_dir: Optional[str] = None) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, series = _metrics(run_dir)
    summary = _summary(run_dir)
    baseline = (_metrics(baseline_dir)[1], _summary(baseline_dir)) if baseline_dir else None
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "accuracy.png")
    if draw_accuracy(plt, series, summary, baseline, path):
        written.append(path)
    for name, (title, ylabel, keys_of) in PANELS.items():
        keys = keys_of(series)
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, k in enumerate(keys):
            xs, ys = series[k]
            color = f"C{i}"
            if k.endswith("/all"):  # dashed and on top: visible where it coincides with a layer's line
                ax.plot(xs, ys, label=label(k), color="black", ls="--", lw=1.6, zorder=3)
            else:
                ax.plot(xs, ys, label=label(k), lw=1.2, color=color)
            if baseline is not None and name in ("throughput", "step_time") and k in baseline[0]:
                ax.plot(*baseline[0][k], label=f"baseline: {label(k)}", lw=1.0, ls=":", color=color)
        ax.set_title(title)
        ax.set_xlabel(STEP)
        ax.set_ylabel(ylabel)
        if name == "throughput":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if summary and name == "edge_sparsity":
            ax.text(
                0.01,
                0.01,
                f"test accuracy {summary['test_acc']:.3f}, "
                f"MACs {summary['macs_sparse'] / max(summary['macs_dense'], 1):.2f}x of dense",
                transform=ax.transAxes,
                fontsize=8,
            )
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if not written:
        raise ValueError(
            f"{metrics} holds no sparsity/ or throughput/ columns (was the run trained with unifews-dist fit?)"
        )
    return written


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog="unifews-dist report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (holds metrics.csv and summary.json)")
    parser.add_argument(
        "--baseline",
        metavar="DENSE_RUN",
        default=None,
        help="another run directory (the dense run, say) whose accuracy is drawn beside this one's",
    )
    args = parser.parse_args(argv)
    try:
        paths = draw(args.run_dir, args.baseline)
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e), "report")
    for p in paths:
        print(os.path.abspath(p))
    return 0
