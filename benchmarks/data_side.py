"""The data side of a training step, dense against Unifews, side by side in one run: feature
rows gathered, bytes moved to the device, data time and whole-step time per batch.

    python benchmarks/data_side.py [--graph quickstart|synthetic|both] [--steps 30] [--warmup 5]
                                   [--synthetic-thr-a 1.23] [--accelerator cpu|gpu] [--out DIR]

Runs per graph, each a Lightning fit in the main process (``num_workers=0``: a batch's
sampling and gather are the data time), thresholds at their targets from the first step:

- ``dense``: thresholds 0, every row gathered;
- ``unifews_gather_all``: the graph's thresholds, every row gathered (``prune_before_gather: false``);
- ``unifews``: the first layer's rule applied in the loader, only the rows a layer reads gathered;
- ``unifews_sample_less``: that, and the rule applied hop by hop while sampling (``sample_less``).

Graphs: ``quickstart`` (real Cora and the quick start's model: SAGE 2 x 64, fanout 25, 25, batch
140, thr_a [2, 1], thr_w [4, 0], seed edges locked in evaluation only) and ``synthetic``
(``synthetic-medium``, SAGE 3 x 256, fanout 15, 10, 5, batch 1024, thr_w 1, thr_a
``--synthetic-thr-a``: calibrate it to the quick start's edge sparsity). Per step (medians after
``--warmup``): ``rows`` gathered and ``nodes`` sampled (the throughput monitor's
``data/rows_gathered`` and ``data/nodes_sampled``), ``bytes`` of the batch as it leaves the
loader (every tensor: features, edges, ids, labels), ``data_s`` (from one step's end to the next
step's start: fetching the batch, its transfer and the data module's transfer hooks) and
``step_s`` (data and compute). Writes ``DIR/data_side.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEFAULT_OUT, write_json  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from unifews_dist.data import UnifewsDataModule  # noqa: E402
from unifews_dist.lit import UnifewsModule  # noqa: E402

GRAPHS = {  # data module options, model options
    "quickstart": ({"name": "cora", "num_neighbors": [25, 25], "batch_size": 140, "random_split": [0.5, 0.25]},
                   {"hidden_channels": 64, "num_layers": 2, "norm": "none", "thr_a": [2.0, 1.0],
                    "thr_w": [4.0, 0.0], "lock_target_edges": "eval", "lr": 0.01}),
    "synthetic": ({"name": "synthetic-medium", "num_neighbors": [15, 10, 5], "batch_size": 1024},
                  {"hidden_channels": 256, "num_layers": 3, "norm": "batch", "thr_a": 1.0, "thr_w": 1.0,
                   "lock_target_edges": "eval", "lr": 0.003}),
}
RUNS = {"dense": (False, False, False), "unifews_gather_all": (True, False, False), "unifews": (True, True, False),
        "unifews_sample_less": (True, True, True)}


class _Bytes(UnifewsDataModule):
    """The data module, noting each batch's bytes as the loader hands it over."""

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        self.last_bytes = sum(t.numel() * t.element_size() for t in batch.to_dict().values()
                              if isinstance(t, torch.Tensor))
        return super().on_before_batch_transfer(batch, dataloader_idx)


class _Clock(Callback):
    def __init__(self, dm):
        self.dm, self.rows = dm, []
        self._end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()
        self._data = None if self._end is None else self._start - self._end
        self._batch = (getattr(batch, "rows_gathered", None) or batch.n_id.numel(), batch.n_id.numel(),
                       self.dm.last_bytes)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self._end = time.perf_counter()
        if self._data is not None:
            rows, nodes, nbytes = self._batch
            self.rows.append({"rows": rows, "nodes": nodes, "bytes": nbytes, "data_s": self._data,
                              "step_s": self._data + self._end - self._start})


def measure(graph: str, run: str, steps: int, warmup: int, accelerator: str, synthetic_thr_a: float) -> dict:
    data, model = GRAPHS[graph]
    model = dict(model, thr_a=synthetic_thr_a) if graph == "synthetic" else dict(model)
    pruned, before_gather, sample_less = RUNS[run]
    if not pruned:
        model.update(thr_a=0.0, thr_w=0.0)
    dm = _Bytes(**data, seed=0, prune_before_gather=before_gather, sample_less=sample_less)
    pl.seed_everything(0)
    module = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv="sage", dropout=0.5,
                           **model)
    clock = _Clock(dm)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=steps + warmup + 1, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(module, dm)
    rows = clock.rows[warmup:]
    stats = module.model.layer_stats
    out = {k: statistics.median(r[k] for r in rows) for k in ("rows", "nodes", "bytes", "data_s", "step_s")}
    out["edge_sparsity"] = 1 - sum(float(s.edges_kept) for s in stats) / max(1.0, sum(float(s.edges_dense)
                                                                                    for s in stats))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graph", choices=["quickstart", "synthetic", "both"], default="both")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--synthetic-thr-a", type=float, default=1.23,
                   help="synthetic-medium's edge threshold (1.23: the quick start's edge sparsity, ~90%%)")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    res = {"steps": args.steps, "accelerator": args.accelerator, "synthetic_thr_a": args.synthetic_thr_a}
    for graph in (["quickstart", "synthetic"] if args.graph == "both" else [args.graph]):
        res[graph] = {}
        for run in args.runs:
            r = res[graph][run] = measure(graph, run, args.steps, args.warmup, args.accelerator,
                                          args.synthetic_thr_a)
            base = res[graph].get("dense", r)
            print(f"{graph:10s} {run:20s} rows {r['rows']:9.0f} ({r['rows'] / base['rows']:.2f}x)  nodes "
                  f"{r['nodes']:9.0f} ({r['nodes'] / base['nodes']:.2f}x)  MB {r['bytes'] / 1e6:7.2f} "
                  f"({r['bytes'] / base['bytes']:.2f}x)  data {r['data_s'] * 1e3:7.1f} ms "
                  f"({r['data_s'] / base['data_s']:.2f}x)  step {r['step_s'] * 1e3:7.1f} ms "
                  f"({r['step_s'] / base['step_s']:.2f}x)  edges pruned {r['edge_sparsity']:.1%}", flush=True)
    print(write_json(args.out, "data_side.json", res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
