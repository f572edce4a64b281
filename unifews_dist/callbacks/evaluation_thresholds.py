"""Evaluate a checkpoint at thresholds other than those it was trained with."""
from __future__ import annotations

from typing import List, Optional, Union

from pytorch_lightning.callbacks import Callback


class EvaluationThresholds(Callback):
    """Sets the model's thresholds once a checkpoint has been loaded (evaluation only)."""

    def __init__(self, thr_a: Optional[Union[float, List[float]]] = None,
                 thr_w: Optional[Union[float, List[float]]] = None):
        self.thr_a, self.thr_w = thr_a, thr_w

    def _set(self, pl_module) -> None:
        pl_module.model.set_thresholds(thr_a=self.thr_a, thr_w=self.thr_w)
        if self.thr_w is not None:  # weight masks are remade from the first evaluation batch
            for lin in pl_module.model.weight_layers():
                lin.invalidate_mask()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._set(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._set(pl_module)
