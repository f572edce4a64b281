"""Checkpoint and requeue a SLURM job on its warning signal, at a step every rank agrees on.

``#SBATCH --signal=SIGUSR1@90`` warns the job's tasks 90 s before the time limit. Lightning's
own answer (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint inside the signal
handler, which runs wherever each rank's interpreter happens to be: one rank can enter the
checkpoint's collectives while another is still in a gradient all-reduce or the mask check, and
the job hangs until SLURM kills it, with no checkpoint (Lightning issue #21406; seen here as a
job still RUNNING 400 s after the signal). Here the handler only notes the signal; at the end of
a training step the ranks agree whether any of them got it (one all-reduce of one number on a
CPU group, so no device synchronisation), and if so all of them write the checkpoint together,
rank 0 requeues the job with ``scontrol requeue``, and every rank ends with :class:`Requeued`
when the next step starts (after that step's metrics reached the loggers).
The requeued job resumes from that checkpoint (the CLI starts from a run's newest checkpoint).
"""
from __future__ import annotations

import glob
import multiprocessing
import os
import signal
import subprocess
from typing import Literal, Optional

import torch
import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

HPC_PREFIX = "hpc_ckpt_"


class Requeued(SystemExit):
    """Raised on every rank once the requeue checkpoint is written and the job requeued: the
    process ends with exit code 0 and runs nothing after training (no test, no summary)."""

    def __init__(self, step: int, path: str, job: str):
        super().__init__(0)
        self.step, self.path, self.job = step, path, job


def job_id() -> Optional[str]:
    """The SLURM job to requeue (``ARRAY_TASK`` form for an array task), or ``None``."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(Callback):
    """On ``requeue_signal``: checkpoint to ``RUN_DIR/hpc_ckpt_<step>.ckpt`` at the end of the
    next training step whose number is a multiple of ``check_every_n_steps``, requeue the job,
    end every rank. ``enabled``: ``None`` turns it on inside a SLURM step (ranks started by srun,
    or forked by ``python -m unifews_dist.launch`` under srun).
    Raise ``check_every_n_steps`` when steps are much shorter than the all-reduce of one number
    between hosts; the signal's lead time (``@90``) must cover that many steps and the write."""

    def __init__(self, enabled: Optional[bool] = None, requeue_signal: Literal["SIGUSR1", "SIGUSR2"] = "SIGUSR1",
                 check_every_n_steps: int = 1):
        if not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ValueError(f"requeue.check_every_n_steps must be an integer >= 1, got {check_every_n_steps!r}")
        self.enabled, self.requeue_signal, self.check_every_n_steps = enabled, requeue_signal, check_every_n_steps
        self._on = False
        self._received = False
        self._group = None
        self._previous = None
        self._pending: Optional[Requeued] = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._on = stage == "fit" and (SLURMEnvironment.detect() if self.enabled is None else self.enabled)
        if not self._on:
            return
        if multiprocessing.parent_process() is not None and not TorchElasticEnvironment.detect():
            # a ddp_fork / ddp_spawn worker: Lightning's launcher waits for its result, which a
            # requeued worker does not return (torchrun's agent, which forks the ranks of
            # unifews_dist.launch, waits for their exit codes only)
            rank_zero_warn("requeue: the requeue signal is handled when srun or torchrun starts the processes, "
                           "not in ddp_fork / ddp_spawn workers: turned off")
            self._on = False
            return
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # its own CPU group: agreeing on the flag never waits for the device
            self._group = dist.new_group(backend="gloo")

    def on_train_start(self, trainer, pl_module) -> None:
        self._received, self._pending = False, None
        if self._on:
            self._previous = signal.signal(getattr(signal, self.requeue_signal), self._note)

    def _note(self, signum, frame) -> None:  # the handler does nothing but note it
        self._received = True

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(getattr(signal, self.requeue_signal), self._previous)
            self._previous = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()
        if self._group is not None and dist.is_initialized():
            dist.destroy_process_group(self._group)
        self._group = None

    def _any_rank(self, value: bool) -> bool:
        if self._group is None:
            return value
        t = torch.tensor([int(value)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group)
        return bool(t[0])  # a CPU tensor: no device synchronisation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._on or trainer.global_step % self.check_every_n_steps:
            return
        if not self._any_rank(self._received):
            return
        step = trainer.global_step
        path = os.path.join(trainer.default_root_dir, f"{HPC_PREFIX}{step}.ckpt")
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(path)  # every rank, at the same step (its hooks gather from all ranks)
        job, ok = job_id(), False
        if trainer.is_global_zero:
            for old in glob.glob(os.path.join(trainer.default_root_dir, f"{HPC_PREFIX}*.ckpt")):
                if os.path.abspath(old) != os.path.abspath(path):
                    os.remove(old)
            ok = self._requeue(job)
            if ok:
                for logger in trainer.loggers:
                    if isinstance(logger, WandbLogger):
                        logger.experiment.mark_preempting()
        if self._any_rank(ok):
            # ended at the next step's start: this step's row reaches the loggers first
            self._pending = Requeued(step, path, job)
        else:
            self._received = False  # not requeued: training goes on; the checkpoint stays

    def _end_if_requeued(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._restore()
            raise pending

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._end_if_requeued()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._end_if_requeued()  # the resumed run validates that epoch instead

    @staticmethod
    def _requeue(job: Optional[str]) -> bool:
        if not job:
            rank_zero_warn("requeue: checkpoint written, but SLURM_JOB_ID is not set: nothing to requeue; training "
                           "goes on")
            return False
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        except OSError as e:
            rank_zero_warn(f"requeue: checkpoint written, but `scontrol requeue {job}` could not run ({e}); "
                           "training goes on")
            return False
        if done.returncode != 0:
            rank_zero_warn(f"requeue: checkpoint written, but `scontrol requeue {job}` failed "
                           f"({(done.stderr or done.stdout).strip()}); training goes on")
            return False
        return True
