"""Log training throughput and where each step's time goes."""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch
from pytorch_lightning.callbacks import Callback

from ..nn.stats import FIELDS
from ._dist import log_every, reduce_sum

PHASES = ("data", "transfer", "forward", "backward")


class HostEvent:
    """A host-side stand-in for :class:`torch.cuda.Event` (``record``, ``synchronize``,
    ``elapsed_time`` in milliseconds), so the clock takes one path on every device."""

    def __init__(self, enable_timing: bool = True):
        self.t = None

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        """Nothing to wait for on the host."""

    def elapsed_time(self, end: "HostEvent") -> float:
        return (end.t - self.t) * 1000.0


class _Clock:
    """Events recorded at the step's marks: CUDA events on a GPU (read once per step, after the
    step's last event), :class:`HostEvent` elsewhere."""

    def __init__(self, device: torch.device, event=None):
        self.event = event or (torch.cuda.Event if device.type == "cuda" else HostEvent)
        self.marks: Dict[str, object] = {}

    def mark(self, name: str) -> None:
        ev = self.event(enable_timing=True)
        ev.record()
        self.marks[name] = ev

    def seconds(self, a: str, b: str) -> float:
        if a not in self.marks or b not in self.marks:
            return 0.0
        self.marks[b].synchronize()
        return self.marks[a].elapsed_time(self.marks[b]) / 1000.0


class ThroughputMonitor(Callback):
    r"""Logs seeds, sampled edges and aggregated (kept) edges per second, summed over ranks, and
    splits each training step into ``time/data_s`` (sampling and loading: from the previous
    step's end to the batch's transfer), ``time/transfer_s`` (host to device),
    ``time/forward_s`` and ``time/backward_s`` (backward and optimizer), averaged over ranks,
    plus ``time/step_s``. Keys: ``throughput/seeds_per_s``, ``throughput/edges_per_s`` (edges of
    the sampled blocks), ``throughput/kept_edges_per_s`` (messages the layers aggregated, summed
    over layers); each epoch the same keys with an ``_epoch`` suffix (epoch totals over the
    epoch's wall time). The data side, per batch and averaged over ranks: ``data/nodes_sampled``
    (the block's nodes) and ``data/rows_gathered`` (feature rows gathered for it), and each
    epoch their means over its batches (``_epoch``). On GPU forward, backward and transfer are
    timed with CUDA events, which synchronizes once per step; data time is host wall time.

    Lightning's own ``ThroughputMonitor`` counts samples and FLOPs from a batch-size function;
    it does not split the step into phases or count edges, which is what a GNN run needs.

    Args:
        log_every_n_steps: log step values every n training steps (``None``: the trainer's
            ``log_every_n_steps``).
    """

    def __init__(self, log_every_n_steps: Optional[int] = None):
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1 or null, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self.epoch_totals: Dict[str, float] = {}
        self._clock: Optional[_Clock] = None
        self._t_prev_end = 0.0
        self._t_fetched: Optional[float] = None
        self._epoch = [0.0] * 5  # seeds, sampled edges, nodes sampled, rows gathered, batches
        self._epoch_kept = None  # device tensor: the epoch's packed layer statistics
        self._epoch_t0 = 0.0
        self._trainer = None
        self.last_times: Dict[str, float] = {}

    # Lightning gives callbacks no hook around the host-to-device copy; the data module's public
    # batch-transfer hooks (on_before / on_after_batch_transfer) bracket it, and a data module
    # with a ``transfer_listener`` attribute (UnifewsDataModule) calls it from them
    def setup(self, trainer, pl_module, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        if stage == "fit" and hasattr(dm, "transfer_listener"):
            self._trainer = trainer
            dm.transfer_listener = self._on_transfer

    def _on_transfer(self, edge: str) -> None:
        if not self._trainer.training or self._clock is None:
            return
        if edge == "start":
            self._t_fetched = time.perf_counter()
        self._clock.mark("transfer0" if edge == "start" else "transfer1")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        if getattr(dm, "transfer_listener", None) == self._on_transfer:
            dm.transfer_listener = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start_epoch(pl_module)

    def _start_epoch(self, pl_module) -> None:
        self._clock = _Clock(pl_module.device)
        self._epoch, self._epoch_kept = [0.0] * 5, None
        self._epoch_t0 = self._t_prev_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._clock is None:  # resumed mid-epoch (a SLURM requeue checkpoint): no epoch start
            self._start_epoch(pl_module)
        if self._t_fetched is None:  # no data module told of the transfer: no transfer time
            self._t_fetched = time.perf_counter()
            self._clock.marks.pop("transfer0", None)
        self._clock.mark("forward0")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._clock.mark("backward0")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._clock.mark("end")
        now = time.perf_counter()
        data = max(0.0, self._t_fetched - self._t_prev_end)
        step = now - self._t_prev_end
        self._t_prev_end, self._t_fetched = now, None
        seeds = float(getattr(batch, "batch_size", 0) or 0)
        edges = float(batch.edge_index.size(1)) if hasattr(batch, "edge_index") else 0.0
        nodes, rows = _data_side(batch)
        counts = pl_module.model.stats_tensor()  # summed whole (one op); kept edges read off when logged
        self._epoch = [t + v for t, v in zip(self._epoch, (seeds, edges, nodes, rows, 1.0))]
        self._epoch_kept = counts.clone() if self._epoch_kept is None else self._epoch_kept.add_(counts)
        if trainer.global_step % log_every(trainer, self.log_every_n_steps):
            return
        kept = _kept_edges(counts)
        times = {"data": data, "transfer": self._clock.seconds("transfer0", "transfer1"),
                 "forward": self._clock.seconds("forward0", "backward0"),
                 "backward": self._clock.seconds("backward0", "end")}
        #: this rank's last logged step: phase seconds and the whole step (read by benchmarks)
        self.last_times = dict(times, step=step)
        rate = 1.0 / step if step > 0 else 0.0
        s = reduce_sum(trainer, (kept * rate).view(1),
                       extra=[seeds * rate, edges * rate] + [times[p] for p in PHASES] + [step, nodes, rows])
        w = max(trainer.world_size, 1)
        metrics = {"throughput/kept_edges_per_s": s[0], "throughput/seeds_per_s": s[1],
                   "throughput/edges_per_s": s[2], "time/step_s": s[-3] / w,
                   "data/nodes_sampled": s[-2] / w, "data/rows_gathered": s[-1] / w}
        metrics.update({f"time/{p}_s": s[3 + i] / w for i, p in enumerate(PHASES)})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._epoch_t0
        kept = _kept_edges(self._epoch_kept).view(1) if self._epoch_kept is not None else [0.0]
        s = reduce_sum(trainer, kept, extra=self._epoch + [seconds])
        wall = s[-1] / max(trainer.world_size, 1)
        self.epoch_totals = {"seeds": s[1], "edges": s[2], "kept_edges": s[0], "seconds": wall,
                             "nodes_sampled": s[3], "rows_gathered": s[4], "batches": s[5]}
        metrics = {}
        if wall > 0:
            metrics.update({"throughput/seeds_per_s_epoch": s[1] / wall, "throughput/edges_per_s_epoch": s[2] / wall,
                            "throughput/kept_edges_per_s_epoch": s[0] / wall})
        if s[5] > 0:  # per batch of one rank
            metrics.update({"data/nodes_sampled_epoch": s[3] / s[5], "data/rows_gathered_epoch": s[4] / s[5]})
        if metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def state_dict(self) -> dict:
        return {"epoch_totals": self.epoch_totals}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_totals = state_dict.get("epoch_totals", {})


def _kept_edges(counts):
    """Edges aggregated, summed over layers, from a packed statistics tensor (``nn/stats.py``)."""
    return counts.view(-1, len(FIELDS))[:, FIELDS.index("edges_kept")].sum()


def _data_side(batch) -> tuple:
    """``(nodes sampled, feature rows gathered)`` of a batch: the block's nodes (its ``n_id``), and
    the feature rows gathered for it (``rows_gathered``, when the loader gathered only the rows a
    layer reads; else the rows of ``x``, with ``feature_gather: device`` gathered after the transfer)."""
    n_id, x = getattr(batch, "n_id", None), getattr(batch, "x", None)
    nodes = float(n_id.numel()) if isinstance(n_id, torch.Tensor) else float(getattr(batch, "num_nodes", 0) or 0)
    rows = getattr(batch, "rows_gathered", None)
    rows = float(rows) if rows is not None else float(x.size(0)) if isinstance(x, torch.Tensor) else 0.0
    return nodes, rows
