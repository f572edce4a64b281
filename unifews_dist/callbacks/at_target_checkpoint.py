"""Keep the best checkpoint among those taken at the target sparsity."""
from __future__ import annotations

from pytorch_lightning.callbacks import ModelCheckpoint


class AtTargetCheckpoint(ModelCheckpoint):
    """:class:`~pytorch_lightning.callbacks.ModelCheckpoint` that saves (and so ranks) a
    checkpoint only once every sparsity controller in the trainer (any callback with an
    ``at_target`` attribute: :class:`SparsitySchedule`, :class:`TargetSparsity`) reports its
    target reached.

    Lightning's ModelCheckpoint ranks every validation. With a dense warm-up or a ramp the best
    ``val/acc`` is often a dense or half-pruned epoch, and testing ``"best"`` would then report
    a denser model's accuracy for a sparse run. Without such a controller, or with one that has
    nothing to reach (a dense run), it is exactly ModelCheckpoint. If no epoch reaches the
    target, no best checkpoint is written and ``unifews-dist fit`` tests the final model (and says
    so). Its ``save_last`` is left off: the CLI keeps ``last.ckpt`` with a checkpoint of its own.
    """

    def _at_target(self, trainer) -> bool:
        return all(getattr(cb, "at_target", True) for cb in trainer.callbacks if cb is not self)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._at_target(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._at_target(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._at_target(trainer):
            super().on_validation_end(trainer, pl_module)
