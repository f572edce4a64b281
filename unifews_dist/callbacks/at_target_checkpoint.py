"""Keep the best checkpoint among those taken at the target sparsity."""
from __future__ import annotations

from pytorch_lightning.callbacks import ModelCheckpoint


class AtTargetCheckpoint(ModelCheckpoint):
    """:class:`~pytorch_lightning.callbacks.ModelCheckpoint` that ranks a checkpoint only once
    every sparsity controller in the trainer (any callback with an ``at_target`` attribute:
    :class:`SparsitySchedule`, :class:`TargetSparsity`) reports its target reached.

    Lightning's ModelCheckpoint ranks every validation. With a dense warm-up or a ramp the best
    ``val/acc`` is often a dense or half-pruned epoch, and testing ``"best"`` would then report
    a denser model's accuracy for a sparse run. Without such a controller it is exactly
    ModelCheckpoint. If no epoch reaches the target, no best checkpoint is written and
    ``unifews-dist fit`` tests the final model (and says so).
    """

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if all(getattr(cb, "at_target", True) for cb in trainer.callbacks if cb is not self):
            super()._save_topk_checkpoint(trainer, monitor_candidates)
