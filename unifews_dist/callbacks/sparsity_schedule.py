"""Raise the Unifews thresholds over training on a schedule."""
from __future__ import annotations

import math
from typing import Dict, List, Literal, Optional, Union, get_args

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

from ..checks import check_choice
from ..sparsify import check_threshold

Kind = Literal["constant", "linear", "cosine", "cubic", "table"]
Interval = Literal["epoch", "step"]
MaskUpdate = Literal["reference", "epoch", "step", "keep"]
KINDS, INTERVALS, MASK_UPDATES = get_args(Kind), get_args(Interval), get_args(MaskUpdate)

Threshold = Union[float, List[float]]


def ramp_fraction(kind: str, t: int, warmup: int, ramp: int) -> float:
    """Fraction of the final threshold at time ``t``: 0 during ``warmup``, then rising to 1 over
    ``ramp`` intervals. ``cubic`` is Zhu & Gupta's gradual pruning, ``1 - (1 - p)^3``."""
    if t < warmup:
        return 0.0
    if kind == "constant" or ramp <= 0:
        return 1.0
    p = min(1.0, (t - warmup) / ramp)
    if kind == "linear":
        return p
    if kind == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * p))
    if kind == "cubic":
        return 1.0 - (1.0 - p) ** 3
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def table_value(table: Dict[int, Threshold], t: int) -> Optional[Threshold]:
    """The value of the largest key ``<= t`` (``None`` before the first key)."""
    keys = [k for k in table if k <= t]
    return table[max(keys)] if keys else None


def _scale(value: Threshold, frac: float) -> Threshold:
    return [v * frac for v in value] if isinstance(value, list) else value * frac


def _check_value(name: str, value) -> None:
    for v in value if isinstance(value, list) else [value]:
        check_threshold(name, v)


class SparsitySchedule(Callback):
    r"""Sets ``thr_a`` / ``thr_w`` of the model over training.

    At time ``t`` (the epoch, or the optimizer step with ``interval="step"``) the threshold is
    ``final * f(t)`` with ``f = 0`` for ``t < warmup`` (dense warm-up) and then, with
    ``p = min(1, (t - warmup) / ramp)``: ``constant`` 1, ``linear`` p, ``cosine``
    ``(1 - cos(pi p)) / 2``, ``cubic`` ``1 - (1 - p)^3`` (Zhu & Gupta, 2017). With ``kind="table"``
    ``thr_a`` / ``thr_w`` are ``{t: value}`` tables instead: the value of the largest key ``<= t``
    holds, thresholds are 0 before the first key (the YAML form of Lightning's
    ``GradientAccumulationScheduler``). A value is one number or one per layer.

    Weight masks (``mask_update``): ``step`` recomputes them on every training step; ``epoch``
    on the first batch of each epoch and keeps them otherwise; ``reference`` (the Unifews
    reference code) does ``epoch`` in the first ``recompute_fraction`` of training, then only
    prunes further (the new mask is AND-ed with the kept one) until ``refine_fraction`` of
    training, and keeps the masks after that; ``keep`` computes a mask once.

    ``at_target`` (read by :class:`AtTargetCheckpoint`) holds once the schedule is done: the
    thresholds at their final values and no later epoch changing a weight mask, so the checkpoint
    that is tested is as sparse as the schedule makes it. A threshold whose final value is 0 has
    nothing to reach: with both at 0 (a dense run) every epoch is at target.

    The thresholds are a function of the trainer's epoch / step only, so every rank sets the
    same values and a resumed run continues the schedule exactly; ``state_dict`` carries the
    schedule so a checkpoint that was trained with another one is reported.

    Args:
        thr_a, thr_w: final thresholds, or tables. Give neither and the schedule ramps to the
            model's own thresholds (``model.thr_a`` / ``model.thr_w``, as configured), so the
            model's are the one source of truth (``--model.thr_a 0 --model.thr_w 0`` is a
            dense run); give one and the other threshold is left alone.
        kind: one of ``constant``, ``linear``, ``cosine``, ``cubic``, ``table``.
        interval: ``epoch`` or ``step``.
        warmup: intervals of dense training first.
        ramp: intervals from the end of warm-up to the final value; ``None``: to the end of
            training (``max_epochs`` / ``max_steps``).
        mask_update: ``reference``, ``epoch``, ``step`` or ``keep``.
        recompute_fraction: with ``reference``, the fraction of the epochs that recompute.
        refine_fraction: with ``reference``, the fraction of the epochs that update the masks
            (recompute, then refine); the masks are kept after it.
    """

    def __init__(self, thr_a: Union[None, Threshold, Dict[int, Threshold]] = None,
                 thr_w: Union[None, Threshold, Dict[int, Threshold]] = None, kind: Kind = "cubic",
                 interval: Interval = "epoch", warmup: int = 0, ramp: Optional[int] = None,
                 mask_update: MaskUpdate = "reference", recompute_fraction: float = 0.5,
                 refine_fraction: float = 1.0):
        check_choice("SparsitySchedule kind", kind, KINDS)
        check_choice("SparsitySchedule interval", interval, INTERVALS)
        check_choice("SparsitySchedule mask_update", mask_update, MASK_UPDATES)
        for name, value in (("thr_a", thr_a), ("thr_w", thr_w)):
            if value is None:
                continue
            if kind == "table":
                if not isinstance(value, dict) or not value:
                    raise ValueError(f"kind 'table' takes {name} as a non-empty {{step: value}} mapping, got {value!r}")
                for k, v in value.items():
                    if not isinstance(k, int) or k < 0:
                        raise ValueError(f"{name} table keys must be integers >= 0, got {k!r}")
                    _check_value(name, v)
            else:
                if isinstance(value, dict):
                    raise ValueError(f"{name} is a table; set kind: table to use it (got kind {kind!r})")
                _check_value(name, value)
        if warmup < 0 or (ramp is not None and ramp < 0):
            raise ValueError(f"warmup and ramp must be >= 0, got warmup={warmup}, ramp={ramp}")
        if not 0.0 <= recompute_fraction <= refine_fraction <= 1.0:
            raise ValueError(f"recompute_fraction and refine_fraction must satisfy 0 <= recompute_fraction <= "
                             f"refine_fraction <= 1, got {recompute_fraction}, {refine_fraction}")
        self.thr_a, self.thr_w, self.kind, self.interval = thr_a, thr_w, kind, interval
        self.warmup, self.ramp, self.mask_update = warmup, ramp, mask_update
        self.recompute_fraction, self.refine_fraction = recompute_fraction, refine_fraction
        self.follows_model = thr_a is None and thr_w is None
        self.current: Dict[str, Optional[Threshold]] = {"thr_a": None, "thr_w": None}
        #: whether the thresholds hold their final values (read by :class:`AtTargetCheckpoint`)
        self.at_target = False
        self._loaded_config: Optional[dict] = None  # a checkpoint's schedule, compared when training starts

    # -- the schedule as a function -----------------------------------------------------------
    def _length(self, trainer: "pl.Trainer") -> int:
        if self.interval == "epoch":
            if trainer.max_epochs is None or trainer.max_epochs < 0:
                raise ValueError("SparsitySchedule with interval 'epoch' and no ramp needs trainer.max_epochs")
            return trainer.max_epochs
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.max_steps
        if trainer.estimated_stepping_batches not in (None, float("inf")):
            return int(trainer.estimated_stepping_batches)
        raise ValueError("SparsitySchedule with interval 'step' and no ramp needs trainer.max_steps or max_epochs")

    def values_at(self, t: int, length: Optional[int] = None) -> Dict[str, Optional[Threshold]]:
        """Thresholds at time ``t`` (``length``: training length, used when ``ramp`` is None)."""
        out: Dict[str, Optional[Threshold]] = {}
        for name in ("thr_a", "thr_w"):
            value = getattr(self, name)
            if value is None:
                out[name] = None
            elif self.kind == "table":
                v = table_value(value, t)
                out[name] = 0.0 if v is None else v
            else:
                ramp = self.ramp if self.ramp is not None else max(1, (length or 1) - self.warmup)
                out[name] = _scale(value, ramp_fraction(self.kind, t, self.warmup, ramp))
        return out

    def mask_mode_at(self, epoch: int, batch_idx: int, max_epochs: Optional[int]) -> str:
        if self.mask_update == "step":
            return "recompute"
        if self.mask_update == "keep" or batch_idx != 0:
            return "keep"
        if self.mask_update == "epoch" or not max_epochs or max_epochs < 0:
            return "recompute"
        if epoch < self.recompute_fraction * max_epochs:
            return "recompute"
        return "refine" if epoch < self.refine_fraction * max_epochs else "keep"

    def masks_final_at(self, epoch: int, max_epochs: Optional[int]) -> bool:
        """Whether no epoch after ``epoch`` changes a weight mask."""
        if self.mask_update == "keep":
            return True
        if not max_epochs or max_epochs < 0:
            return False
        if self.mask_update == "reference":
            last = min(max_epochs, math.ceil(self.refine_fraction * max_epochs)) - 1
            return epoch >= last
        return epoch >= max_epochs - 1

    def _final_zero(self, name: str) -> bool:
        """Whether threshold ``name`` has nothing to reach: not scheduled, or 0 at the end."""
        value = getattr(self, name)
        if value is None:
            return True
        finals = [value[max(value)]] if self.kind == "table" else [value]
        return all(v == 0 for f in finals for v in (f if isinstance(f, list) else [f]))

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """A schedule given no thresholds takes the model's configured ones as its targets (read
        before a checkpoint restores the ramped values a run had reached)."""
        if self.follows_model and stage == "fit":
            self.thr_a, self.thr_w = list(pl_module.model.thr_a), list(pl_module.model.thr_w)

    def _now(self, trainer: "pl.Trainer") -> int:
        return trainer.current_epoch if self.interval == "epoch" else trainer.global_step

    def _apply(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        needs_length = self.ramp is None and self.kind not in ("table", "constant")
        length = self._length(trainer) if needs_length else None
        self.current = self.values_at(self._now(trainer), length)
        if self.kind == "table":
            final_t = max(max(getattr(self, n)) for n in ("thr_a", "thr_w") if getattr(self, n) is not None)
        elif self.kind == "constant":
            final_t = self.warmup
        else:
            final_t = self.warmup + (self.ramp if self.ramp is not None else length)
        ramped = self._now(trainer) >= final_t
        edges_done = self._final_zero("thr_a") or ramped
        weights_done = self._final_zero("thr_w") or (
            ramped and self.masks_final_at(trainer.current_epoch, trainer.max_epochs)
        )
        self.at_target = edges_done and weights_done
        pl_module.model.set_thresholds(thr_a=self.current["thr_a"], thr_w=self.current["thr_w"])

    def on_sanity_check_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Lightning's sanity check evaluates at the thresholds of now (0 in a dense warm-up), not at
        the final ones: a weight mask made there from a validation batch would otherwise be kept
        as the training mask once the thresholds rise (the quick start's epoch 1 ran at 99.7%
        weight sparsity and 0.41 val accuracy that way)."""
        self._apply(trainer, pl_module)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._check_resumed()
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._apply(trainer, pl_module)
        pl_module.model.set_mask_mode(self.mask_mode_at(trainer.current_epoch, batch_idx, trainer.max_epochs))
        for name, value in self.current.items():
            if value is not None:
                vals = value if isinstance(value, list) else [value]
                pl_module.log(f"schedule/{name}", float(sum(vals) / len(vals)), on_step=True, on_epoch=False)

    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.model.set_mask_mode("keep")  # evaluation after fit uses the last masks

    def state_dict(self) -> dict:
        return {
            "config": {
                k: getattr(self, k)
                for k in (
                    "thr_a",
                    "thr_w",
                    "kind",
                    "interval",
                    "warmup",
                    "ramp",
                    "mask_update",
                    "recompute_fraction",
                    "refine_fraction",
                    "follows_model",
                )
            },
            "current": dict(self.current),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # compared when training resumes (test, validate and predict restore it too, and do not
        # use it: no warning there)
        self._loaded_config = state_dict.get("config", {})
        self.current = dict(state_dict.get("current", self.current))

    def _check_resumed(self) -> None:
        config, self._loaded_config = self._loaded_config, None
        if not config:
            return
        mine = self.state_dict()["config"]
        changed = {k: (v, mine.get(k)) for k, v in config.items() if mine.get(k) != v}
        if changed:
            rank_zero_warn(
                f"SparsitySchedule differs from the checkpoint's (checkpoint, now): {changed}; "
                "continuing with the new one"
            )
