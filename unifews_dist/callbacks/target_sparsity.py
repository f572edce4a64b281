"""Feedback control of the Unifews thresholds towards target edge and weight sparsity."""
from __future__ import annotations

import math
from typing import List, Optional, Union

from pytorch_lightning.callbacks import Callback

from ._dist import reduce_sum
from .sparsity_monitor import _layers, sparsity_metrics
from .sparsity_schedule import SparsitySchedule

Target = Union[None, float, List[float]]


def _targets(name: str, value: Target, num_layers: int) -> Optional[List[float]]:
    if value is None:
        return None
    values = [float(value)] * num_layers if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != num_layers:
        raise ValueError(f"TargetSparsity {name} needs one value or {num_layers} (one per layer), got {values}")
    return values


def control_step(thr: float, target: float, measured: float, gain: float, lo: float, hi: float) -> float:
    """One multiplicative (log-space integral) update: ``thr * exp(gain * (target - measured))``,
    clipped to ``[lo, hi]``. Sparsity rises monotonically with the threshold, so this converges."""
    return min(hi, max(lo, thr * math.exp(gain * (target - measured))))


class TargetSparsity(Callback):
    r"""Drives ``thr_a`` / ``thr_w`` per layer until the measured sparsity meets its target.

    After every ``update_every_n_steps`` training steps, layer ``i``'s edge sparsity
    ``1 - kept_i / sampled_i`` (its share of sampled edges pruned by layers ``0..i``) and its
    weight sparsity are summed over ranks, and each threshold moves by
    ``thr <- thr * exp(gain * (target - measured))``. The update uses only rank-reduced numbers,
    so every rank holds the same thresholds. Weight masks are recomputed on every step while it
    runs (``mask_mode="recompute"``). Edges locked by ``lock_target_edges`` can make a high edge
    target at the last layer unreachable; the threshold then stops at ``max_thr``.

    Args:
        edge_sparsity, weight_sparsity: target in ``[0, 1)``, one value or one per layer;
            ``None`` leaves that threshold alone.
        gain: controller gain (log-threshold change per unit of sparsity error).
        init_thr_a, init_thr_w: starting thresholds where the model's are 0.
        update_every_n_steps: steps between updates.
        min_thr, max_thr: the range the thresholds are kept in.
        tolerance: ``at_target`` holds once every controlled layer's measured sparsity is
            within this of its target (or its threshold sits at ``max_thr``: unreachable).
    """

    def __init__(self, edge_sparsity: Target = 0.9, weight_sparsity: Target = 0.9, gain: float = 3.0,
                 init_thr_a: float = 0.5, init_thr_w: float = 0.5, update_every_n_steps: int = 1,
                 min_thr: float = 1e-3, max_thr: float = 1e3, tolerance: float = 0.02):
        for name, value in (("edge_sparsity", edge_sparsity), ("weight_sparsity", weight_sparsity)):
            for v in [] if value is None else (value if isinstance(value, list) else [value]):
                if not 0.0 <= float(v) < 1.0:
                    raise ValueError(f"TargetSparsity {name} must be in [0, 1), got {v}")
        if edge_sparsity is None and weight_sparsity is None:
            raise ValueError("TargetSparsity needs edge_sparsity or weight_sparsity, got neither")
        if not gain > 0 or not init_thr_a > 0 or not init_thr_w > 0:
            raise ValueError(f"gain, init_thr_a and init_thr_w must be > 0, got {gain}, {init_thr_a}, {init_thr_w}")
        if update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps must be >= 1, got {update_every_n_steps}")
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        if not 0 < min_thr < max_thr:
            raise ValueError(f"need 0 < min_thr < max_thr, got {min_thr}, {max_thr}")
        self.edge_sparsity, self.weight_sparsity, self.gain = edge_sparsity, weight_sparsity, gain
        self.init_thr_a, self.init_thr_w = init_thr_a, init_thr_w
        self.update_every_n_steps, self.min_thr, self.max_thr = update_every_n_steps, min_thr, max_thr
        self.thr_a: Optional[List[float]] = None
        self.thr_w: Optional[List[float]] = None
        self.tolerance = tolerance
        self.measured: dict = {}
        #: whether the last measurement met every target (read by :class:`AtTargetCheckpoint`)
        self.at_target = False
        self._sums = None  # device tensor of the counts since the last update
        self._count = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if any(isinstance(cb, SparsitySchedule) for cb in trainer.callbacks):
            raise ValueError("TargetSparsity and SparsitySchedule both set the thresholds; use one of them")

    def on_train_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        L = model.num_layers
        self._edge_t = _targets("edge_sparsity", self.edge_sparsity, L)
        self._weight_t = _targets("weight_sparsity", self.weight_sparsity, L)
        if self.thr_a is None:  # not restored from a checkpoint
            self.thr_a = [t if t > 0 else self.init_thr_a for t in model.thr_a]
            self.thr_w = [t if t > 0 else self.init_thr_w for t in model.thr_w]
        self._apply(model)
        if self._weight_t is not None:
            model.set_mask_mode("recompute")

    def _apply(self, model) -> None:
        model.set_thresholds(thr_a=self.thr_a if self._edge_t is not None else None,
                             thr_w=self.thr_w if self._weight_t is not None else None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        stats = pl_module.model.layer_stats
        counts = pl_module.model.stats_tensor()  # summed on the device, read when the control acts
        self._sums = counts.clone() if self._sums is None else self._sums.add_(counts)
        self._count += 1
        if self._count < self.update_every_n_steps:
            return
        measured = sparsity_metrics(_layers(reduce_sum(trainer, self._sums), len(stats)))
        self._sums, self._count = None, 0
        edge = [measured[f"sparsity/edge/layer{i}"] for i in range(len(stats))]
        weight = [measured[f"sparsity/weight/layer{i}"] for i in range(len(stats))]
        self.measured = {"edge": edge, "weight": weight}
        if self._edge_t is not None:
            self.thr_a = [control_step(t, g, m, self.gain, self.min_thr, self.max_thr)
                          for t, g, m in zip(self.thr_a, self._edge_t, edge)]
        if self._weight_t is not None:
            self.thr_w = [control_step(t, g, m, self.gain, self.min_thr, self.max_thr)
                          for t, g, m in zip(self.thr_w, self._weight_t, weight)]
        self.at_target = all(
            abs(g - m) <= self.tolerance or t >= self.max_thr
            for targets, measured, thr in ((self._edge_t, edge, self.thr_a), (self._weight_t, weight, self.thr_w))
            if targets is not None for g, m, t in zip(targets, measured, thr))
        self._apply(pl_module.model)
        for i in range(len(stats)):
            pl_module.log(f"schedule/thr_a/layer{i}", self.thr_a[i], on_step=True, on_epoch=False)
            pl_module.log(f"schedule/thr_w/layer{i}", self.thr_w[i], on_step=True, on_epoch=False)

    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.model.set_mask_mode("keep")

    def state_dict(self) -> dict:
        return {"thr_a": self.thr_a, "thr_w": self.thr_w}

    def load_state_dict(self, state_dict: dict) -> None:
        self.thr_a, self.thr_w = state_dict.get("thr_a"), state_dict.get("thr_w")
