"""Test accuracy against edge and weight sparsity on real Cora, GCN and SAGE, several seeds.

    python benchmarks/accuracy_sparsity.py [--out DIR] [--scale full|tiny] [--root ../shared/data/planetoid]
                                           [--models gcn sage] [--thr_a A ...] [--thr_w W ...]
                                           [--hidden 64] [--accelerator cpu|gpu] [--split public|reference]
                                           [--jobs N] [--seeds N] [--interval step|epoch] [--thr_w_out W]
                                           [--norm none|batch]

Sweeps ``thr_a x thr_w`` over the reference method's ranges (the Unifews scripts sweep edge
thresholds up to a few units and weight thresholds up to about 2), 3 seeds each, with the
quick start's recipe (``configs/quickstart.yaml``: 100 epochs, dense warm-up 10, cubic ramp
over 40, the best checkpoint among epochs at the target sparsity), the warm-up and ramp counted
in optimizer steps: on the public split (140 seeds, one batch) a step is an epoch, as in the
quick start; the reference split has 10 batches an epoch, and a ramp in epochs would allow the
sparse runs only epochs >= 50, long after the dense baseline's best validation epoch (1-20: it
overfits early at lr 0.01), a comparison rigged against sparsity (``--interval epoch``
restores it, for comparison; files then end in ``_epoch_ramp``). Sparsity is the last
training epoch's (share of sampled edges and of weight entries not computed). Writes
``DIR/accuracy_sparsity.json`` and ``DIR/accuracy_sparsity.png`` (accuracy against edge and
against weight sparsity, the dense baseline as a line). ``--scale tiny`` (CI) runs a 2 x 2
grid, one seed, 5 epochs, GCN only.

``--split public`` (default) trains on Planetoid's public split (140 labels); ``--split
reference`` on the split the Unifews reference code evaluates Cora on (class-stratified random
50% / 25% / 25%, drawn per seed), where its accuracy claims were measured; the files are then
``accuracy_sparsity_reference.*``.

``--jobs N`` trains N runs at a time in spawned processes, the CPU's cores shared out among
them (Cora is too small for one run to keep several cores busy: on this 2-core box two
one-thread runs finish the grid sooner than one two-thread run at a time). ``--seeds N`` runs
seeds 0..N-1 instead of 3. Seed-to-seed spread on Cora is larger than the 1-point goal, so the
goal block also gives, for the best cell, its accuracy minus dense paired by seed (same seed,
same split draw, same initialisation) with the standard error of that mean.

``--thr_w_out W`` gives the output layer's weights their own threshold (``0``: kept dense) in
every cell with ``thr_w > 0``; the hidden layers keep the cell's ``thr_w`` (a per-layer threshold,
as ``UnifewsGNN`` and the reference code take it). On Cora the output layer is 64 x 7 (0.5% of
the weight entries) and the hidden layer 1433 x 64: pruned by the hidden layer's rule the output
layer keeps ~6% of its entries, and the 7 class scores come from a few dozen weights.
Files then end in ``_out<W>``; rows keep the hidden layers' ``thr_w``, the grid records ``thr_w_out``.

``--norm batch`` puts batch normalisation after the hidden layer, as the reference code's models
do (default ``none``, the quick start's model); files then end in ``_bn``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from common import DEFAULT_OUT, write_json  # noqa: E402

import pytorch_lightning as pl  # noqa: E402

from unifews_dist.callbacks import AtTargetCheckpoint, SparsityMonitor, SparsitySchedule  # noqa: E402
from unifews_dist.callbacks.sparsity_monitor import sparsity_metrics  # noqa: E402
from unifews_dist.data import UnifewsDataModule  # noqa: E402
from unifews_dist.lit import UnifewsModule  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "planetoid")
# public: Planetoid's split (140 training labels); reference: the Unifews reference code's split of
# Planetoid graphs, class-stratified random 50% / 25% / 25%, a new draw per seed
NUM_LAYERS = 2
SPLITS = {"public": None, "reference": [0.5, 0.25]}
GRIDS = {
    "full": {"models": ("gcn", "sage"), "thr_a": (0.0, 0.5, 1.0, 2.0, 4.0), "thr_w": (0.0, 0.5, 1.0, 2.0),
             "seeds": (0, 1, 2), "epochs": 100, "warmup": 10, "ramp": 40, "hidden": 64},
    "tiny": {"models": ("gcn",), "thr_a": (0.0, 1.0), "thr_w": (0.0, 0.5), "seeds": (0,), "epochs": 5,
             "warmup": 1, "ramp": 2, "hidden": 64},
}


def layer_thresholds(thr_w, thr_w_out, num_layers):
    """``thr_w`` for every layer, or, with ``thr_w_out`` set and ``thr_w > 0``, per layer with the
    output layer's replaced."""
    if thr_w_out is None or thr_w == 0:
        return thr_w
    return [thr_w] * (num_layers - 1) + [thr_w_out]


def run_one(conv, thr_a, thr_w, seed, g, root, workdir, accelerator="cpu", split="public"):
    pl.seed_everything(seed, workers=True)
    thr_w_layers = layer_thresholds(thr_w, g.get("thr_w_out"), NUM_LAYERS)
    dm = UnifewsDataModule(name="cora", root=root, num_neighbors=[25] * NUM_LAYERS,
                           eval_num_neighbors=[-1] * NUM_LAYERS, batch_size=140, eval_batch_size=1000, seed=seed,
                           random_split=SPLITS[split])
    dm.prepare_data()
    dm.setup("fit")
    module = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv=conv,
                           hidden_channels=g["hidden"],
                           num_layers=NUM_LAYERS, dropout=0.5, norm=g["norm"], thr_a=thr_a, thr_w=thr_w_layers,
                           lock_target_edges="eval", lr=0.01, weight_decay=5e-4)
    monitor = SparsityMonitor()
    ckpt = AtTargetCheckpoint(dirpath=os.path.join(workdir, f"{conv}-{thr_a}-{thr_w}-{seed}"), monitor="val/acc",
                              mode="max", save_top_k=1)
    cbs = [monitor, ckpt]
    if thr_a > 0 or thr_w > 0:
        cbs.insert(0, SparsitySchedule(thr_a=thr_a, thr_w=thr_w_layers, kind="cubic", interval=g["interval"],
                                         warmup=g["warmup"], ramp=g["ramp"]))
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=g["epochs"], logger=False, callbacks=cbs,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    test = trainer.test(module, datamodule=dm, ckpt_path="best" if ckpt.best_model_path else None, verbose=False)
    m = sparsity_metrics(monitor.epoch_layers)  # the last training epoch's, as SparsityMonitor logs them
    return {"conv": conv, "thr_a": thr_a, "thr_w": thr_w, "seed": seed, "test_acc": float(test[0]["test/acc"]),
            "num_train": int(dm.load().train_idx.numel()),
            "edge_sparsity": m["sparsity/edge/all"], "weight_sparsity": m["sparsity/weight/all"],
            "macs_reduction": m["macs/reduction"],
            "layers": [{"edge_sparsity": m[f"sparsity/edge/layer{i}"],
                        "weight_sparsity": m[f"sparsity/weight/layer{i}"]} for i in range(len(monitor.epoch_layers))]}


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def run_all(cells, g, root, workdir, accelerator, split, jobs):
    """``run_one`` over ``cells`` ((conv, thr_a, thr_w, seed) each), ``jobs`` at a time; rows in
    the order of ``cells``."""
    def show(r):
        print(f"  {r['conv']} thr_a {r['thr_a']} thr_w {r['thr_w']} seed {r['seed']}: acc {r['test_acc']:.4f}, "
              f"edges {r['edge_sparsity']:.1%}, weights {r['weight_sparsity']:.1%}", flush=True)
        return r
    if jobs == 1:
        return [show(run_one(*c, g, root, workdir, accelerator, split)) for c in cells]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = [pool.submit(run_one, *c, g, root, workdir, accelerator, split) for c in cells]
        return [show(f.result()) for f in futures]


def aggregate(rows):
    out = []
    keys = sorted({(r["conv"], r["thr_a"], r["thr_w"]) for r in rows})
    for conv, a, w in keys:
        rs = [r for r in rows if (r["conv"], r["thr_a"], r["thr_w"]) == (conv, a, w)]
        acc = [r["test_acc"] for r in rs]
        out.append({"conv": conv, "thr_a": a, "thr_w": w, "seeds": len(rs), "test_acc": statistics.mean(acc),
                    "test_acc_std": statistics.pstdev(acc),
                    **{k: statistics.mean(r[k] for r in rs) for k in ("edge_sparsity", "weight_sparsity",
                                                                       "macs_reduction")}})
    return out


def paired_difference(rows, conv, cell):
    """Mean and standard error over seeds of (accuracy at ``cell`` - dense accuracy, same seed)."""
    acc = {(r["thr_a"], r["thr_w"], r["seed"]): r["test_acc"] for r in rows if r["conv"] == conv}
    diffs = [acc[cell + (s,)] - acc[(0.0, 0.0, s)] for (a, w, s) in acc if (a, w) == cell and (0.0, 0.0, s) in acc]
    sem = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return statistics.mean(diffs), sem


def goal_check(agg, rows, models):
    """#7's goal per model: the best cell with >= 90% weights and >= 70% edges pruned, against dense."""
    goal = {}
    for conv in models:
        rs = [r for r in agg if r["conv"] == conv]
        base = next(r["test_acc"] for r in rs if r["thr_a"] == 0 and r["thr_w"] == 0)
        ok = [r for r in rs if r["weight_sparsity"] >= 0.9 and r["edge_sparsity"] >= 0.7]
        best = max(ok, key=lambda r: r["test_acc"]) if ok else None
        goal[conv] = {"dense_acc": base, "best_at_90w_70e": best,
                      "within_1_point": bool(best and best["test_acc"] >= base - 0.01)}
        if best:
            diff, sem = paired_difference(rows, conv, (best["thr_a"], best["thr_w"]))
            goal[conv].update(paired_diff=diff, paired_diff_sem=sem)
    return goal


def plot(agg, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    convs = sorted({r["conv"] for r in agg})
    fig, axes = plt.subplots(len(convs), 2, figsize=(10, 4 * len(convs)), squeeze=False)
    for i, conv in enumerate(convs):
        rs = [r for r in agg if r["conv"] == conv]
        base = next((r["test_acc"] for r in rs if r["thr_a"] == 0 and r["thr_w"] == 0), None)
        for j, key in enumerate(("edge_sparsity", "weight_sparsity")):
            ax = axes[i][j]
            ax.errorbar([r[key] for r in rs], [r["test_acc"] for r in rs], yerr=[r["test_acc_std"] for r in rs],
                        fmt="o", capsize=3)
            if base is not None:
                ax.axhline(base, color="k", ls="--", label=f"dense {base:.3f}")
                ax.legend()
            ax.set_xlabel(key.replace("_", " "))
            ax.set_ylabel("test accuracy")
            ax.set_title(f"Cora, {conv.upper()}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--scale", choices=sorted(GRIDS), default="full")
    p.add_argument("--root", default=ROOT, help="folder holding Cora/raw (PyG Planetoid layout)")
    p.add_argument("--models", nargs="+", choices=["gcn", "sage"], default=None, help="subset of the models")
    p.add_argument("--thr_a", nargs="+", type=float, default=None, help="override the edge-threshold grid")
    p.add_argument("--thr_w", nargs="+", type=float, default=None, help="override the weight-threshold grid")
    p.add_argument("--hidden", type=int, default=None, help="hidden channels (default 64; the paper's 512)")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--split", choices=sorted(SPLITS), default="public",
                   help="Cora split: Planetoid's public one, or the reference code's random 50/25/25")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time, in separate processes")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (0..N-1; default 3)")
    p.add_argument("--interval", choices=["step", "epoch"], default="step",
                   help="unit of the warm-up and ramp: optimizer steps (default) or epochs")
    p.add_argument("--thr_w_out", type=float, default=None,
                   help="threshold of the output layer's weights where thr_w > 0 (0: kept dense; default thr_w)")
    p.add_argument("--norm", choices=["none", "batch"], default="none",
                   help="normalisation after the hidden layer (the reference code uses batch)")
    args = p.parse_args(argv)
    if args.thr_w_out is not None and not args.thr_w_out >= 0:
        p.error(f"--thr_w_out must be >= 0, got {args.thr_w_out}")
    if not os.path.isdir(os.path.join(args.root, "Cora", "raw")):
        sys.stderr.write(f"accuracy_sparsity: no Cora/raw under {args.root} (pass --root)\n")
        return 2
    g = dict(GRIDS[args.scale])
    for key in ("models", "thr_a", "thr_w"):
        if getattr(args, key):
            g[key] = tuple(sorted(set(getattr(args, key)) | ({0.0} if key != "models" else set())))
    if args.hidden is not None:
        if args.hidden < 1:
            p.error(f"--hidden must be >= 1, got {args.hidden}")
        g["hidden"] = args.hidden
    if args.thr_w_out is not None:
        g["thr_w_out"] = args.thr_w_out
    g["norm"], g["interval"] = args.norm, args.interval
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.seeds is not None:
        if args.seeds < 1:
            p.error(f"--seeds must be >= 1, got {args.seeds}")
        g["seeds"] = tuple(range(args.seeds))
    cells = [(conv, a, w, seed) for conv in g["models"] for a in g["thr_a"] for w in g["thr_w"] for seed in g["seeds"]]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        rows = run_all(cells, g, args.root, work, args.accelerator, args.split, args.jobs)
    agg = aggregate(rows)
    goal = goal_check(agg, rows, g["models"])
    print(f"{'conv':<5} {'thr_a':>6} {'thr_w':>6} {'acc':>7} {'std':>6} {'edge sp':>8} {'weight sp':>9} {'MACs x':>7}")
    for r in agg:
        print(f"{r['conv']:<5} {r['thr_a']:>6} {r['thr_w']:>6} {r['test_acc']:>7.4f} {r['test_acc_std']:>6.3f} "
              f"{r['edge_sparsity']:>8.1%} {r['weight_sparsity']:>9.1%} {r['macs_reduction']:>7.1f}")
    for conv, v in goal.items():
        b = v["best_at_90w_70e"]
        print(f"{conv}: dense {v['dense_acc']:.4f}; best at >= 90% weight and >= 70% edge sparsity: "
              + (f"{b['test_acc']:.4f} (thr_a {b['thr_a']}, thr_w {b['thr_w']}; minus dense paired by seed "
                 f"{v['paired_diff']:+.4f} +- {v['paired_diff_sem']:.4f} s.e.)" if b else "none reached"))
    os.makedirs(args.out, exist_ok=True)
    stem = "accuracy_sparsity" + ("" if args.split == "public" else "_" + args.split)
    stem += "" if args.interval == "step" else "_epoch_ramp"
    stem += "" if args.thr_w_out is None else f"_out{args.thr_w_out:g}"
    stem += "" if args.norm == "none" else "_bn"
    png = os.path.join(args.out, stem + ".png")
    plot(agg, png)
    print(write_json(args.out, stem + ".json", {"scale": args.scale, "split": args.split, "interval": args.interval,
                                                "jobs": args.jobs,
                                                "grid": g, "runs": rows, "aggregate": agg, "goal": goal,
                                                "seconds": time.perf_counter() - t0}))
    print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
