"""A hard kill in the middle of training, for the resume tests: SIGKILL (no cleanup, no
checkpoint on the way out) at a given epoch and batch, on every rank."""
import os
import signal

from pytorch_lightning.callbacks import Callback


class KillAt(Callback):
    def __init__(self, epoch: int = 1, batch: int = 2):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
