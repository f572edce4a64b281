"""How long the training process waits for data, per step: sampling in the main process, in
DataLoader workers gathering the features there (``feature_gather: loader``), and in workers
returning node ids only, the features gathered after the transfer (``feature_gather: device``).

    python benchmarks/data_wait.py [--scale medium|products|tiny] [--steps 20] [--workers 1] [--out DIR]

The model of configs/synthetic-products.yaml (GraphSAGE 3 x 256, fanout 15,10,5, batch 1024;
``--scale tiny``: the debug model) on the scale's synthetic graph, CPU. A step's wait is the
time from the end of one training batch to the start of the next (Lightning fetches the next
batch, moves it to the device and runs ``on_after_batch_transfer`` there); its compute is the
batch itself (forward, backward, optimizer). Reported: ``wait_fraction`` = wait / (wait +
compute), medians over the steps after ``--warmup``. Writes ``data_wait.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEFAULT_OUT, write_json  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from unifews_dist.data import UnifewsDataModule  # noqa: E402
from unifews_dist.lit import UnifewsModule  # noqa: E402

SCALES = {"tiny": ("synthetic-tiny", [5, 5], 64, 32, 2), "medium": ("synthetic-medium", [15, 10, 5], 1024, 256, 3),
          "products": ("synthetic-products", [15, 10, 5], 1024, 256, 3)}


class StepClock(Callback):
    def __init__(self):
        self.waits, self.computes, self._end, self._start = [], [], None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._end is not None:
            self.waits.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._end = time.perf_counter()
        self.computes.append(self._end - self._start)


def measure(scale: str, steps: int, warmup: int, workers: int, gather: str) -> dict:
    name, fanout, batch, hidden, layers = SCALES[scale]
    dm = UnifewsDataModule(name, num_neighbors=fanout, batch_size=batch, num_workers=workers,
                           persistent_workers=workers > 0, feature_gather=gather, seed=0)
    module = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv="sage",
                           hidden_channels=hidden, num_layers=layers, dropout=0.5, norm="batch", thr_a=1.0,
                           thr_w=1.0, lr=0.003)
    clock = StepClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps + warmup, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock])
    trainer.fit(module, dm)
    waits, computes = clock.waits[warmup:], clock.computes[warmup + 1:]
    wait, compute = statistics.median(waits), statistics.median(computes)
    return {"workers": workers, "feature_gather": gather, "wait_s": wait, "compute_s": compute,
            "wait_fraction": wait / (wait + compute)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=list(SCALES), default="medium")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    rows = []
    for workers, gather in ((0, "loader"), (args.workers, "loader"), (args.workers, "device")):
        r = measure(args.scale, args.steps, args.warmup, workers, gather)
        rows.append(r)
        print(f"workers {workers}, gather in {gather:6s}: wait {r['wait_s'] * 1e3:7.1f} ms, "
              f"compute {r['compute_s'] * 1e3:7.1f} ms, wait fraction {r['wait_fraction']:.3f}", flush=True)
    write_json(args.out, "data_wait.json", {"scale": args.scale, "steps": args.steps, "runs": rows,
                                            "wait_fraction_device_gather": rows[-1]["wait_fraction"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
