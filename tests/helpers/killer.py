"""A hard kill in the middle of training, for the resume tests: SIGKILL (no cleanup, no
checkpoint on the way out) at a given epoch and batch, on every rank."""
import os
import signal
import time

from pytorch_lightning.callbacks import Callback


class KillAt(Callback):
    """``delay``: seconds to wait first (W&B writes what was logged meanwhile)."""

    def __init__(self, epoch: int = 1, batch: int = 2, delay: float = 0.0):
        self.epoch, self.batch, self.delay = epoch, batch, delay

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            time.sleep(self.delay)
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(Callback):
    """The SLURM warning signal (SIGUSR1) to one rank only, before a given epoch's batch: the
    other ranks never get it, as when a signal reaches the ranks at different moments."""

    def __init__(self, rank: int = 0, epoch: int = 1, batch: int = 2):
        self.rank, self.epoch, self.batch = rank, epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGUSR1)


class InterruptAt(Callback):
    """Ctrl-C (SIGINT to this process) before a given epoch's batch, as a user at the terminal."""

    def __init__(self, epoch: int = 1, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGINT)
