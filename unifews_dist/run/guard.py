"""How a run's command starts and ends: a launcher's stop during set-up handled on every rank;
a finished run, a requeue, a bad value, each said in one line; whatever the command made before
it failed removed; the process left as it was found."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from typing import Any, List

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities import rank_zero_only

from ..callbacks import Requeued
from ..errors import error_line, say_once
from .checkpoint import newest_readable
from .directory import TEMPORARIES, RunFinished, remove_if_unused
from .summary import SUMMARY

# -- set-up: under torchrun or srun every rank parses the same arguments and loads the same
# data, so a bad value fails on every rank; the launcher then stops the others as soon as one
# exits (SIGTERM), and a rank stopped while setting up cleans up too.

class SetupStopped(SystemExit):
    """SIGTERM while the run is set up: a launcher stopping the other ranks after one failed."""


def _stop_on_sigterm(signum, frame) -> None:
    raise SetupStopped(128 + signum)


_SIGTERM_BEFORE: List[Any] = [None]  # the handler replaced while the run is set up


def setup_begins() -> None:
    """Until :func:`setup_done`, SIGTERM raises :class:`SetupStopped` (so the caller cleans up)."""
    if threading.current_thread() is threading.main_thread():
        _SIGTERM_BEFORE[0] = signal.signal(signal.SIGTERM, _stop_on_sigterm)


def setup_done() -> None:
    """Training or evaluation starts: SIGTERM gets its previous handler back (Lightning then
    installs its own for the run)."""
    if _SIGTERM_BEFORE[0] is not None:
        signal.signal(signal.SIGTERM, _SIGTERM_BEFORE[0])
        _SIGTERM_BEFORE[0] = None


#: the run directory this call made (removed again if it fails before it trains)
MADE = {"run_dir": None}


def interrupted_line(run_dir) -> str:
    """What Ctrl-C leaves: how to resume the run, or that there is nothing to resume."""
    try:
        found = newest_readable(run_dir) if run_dir and os.path.isdir(run_dir) else None
    except ValueError:  # checkpoints there, none readable
        found = None
    if found is None:
        return "unifews-dist: interrupted before the first checkpoint: nothing to resume; run the command again"
    return (f"unifews-dist: interrupted; {run_dir} holds checkpoint {os.path.basename(found[0])}: the same command "
            f"with --run_dir {run_dir} resumes from it")


@contextlib.contextmanager
def command_guard():
    """Around one ``unifews-dist`` command: what it sets for its run (the run directory it made,
    the temporary and W&B cache folders) is put back when it returns, as ``main()`` may run again
    in one process; every exit is one line (``UNIFEWS_TRACEBACK=1``: the traceback) and code 2
    for bad input, and leaves no process group behind (gloo's threads abort the interpreter at
    exit otherwise)."""
    MADE["run_dir"] = None
    saved_env = {k: os.environ.get(k) for k in ("TMPDIR", "WANDB_CACHE_DIR", "UNIFEWS_RUN_DIR")}
    saved_tempdir = tempfile.tempdir
    setup_begins()  # a set-up stopped by SIGTERM cleans up too (below)
    try:
        yield
    except RunFinished as done:  # started again after it finished: nothing to do, nothing changed
        print(f"run {done.run_dir} is finished ({done.epochs} epochs, {done.steps} steps): nothing to do; "
              f"raise trainer.max_epochs or trainer.max_steps to train on")
        summary = os.path.abspath(os.path.join(done.run_dir, SUMMARY))
        if os.path.isfile(summary):
            print(summary, flush=True)
    except Requeued as r:  # every rank: the checkpoint is written and SLURM runs the job again
        if rank_zero_only.rank == 0:
            print(f"requeue signal: step {r.step} checkpointed to {r.path}; SLURM job {r.job} requeued, "
                  "it resumes from there", flush=True)
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C; a parser error; SIGTERM during set-up
        remove_if_unused(MADE["run_dir"])
        # Ctrl-C before Lightning runs (set-up, data preparation), or Lightning's exit after it in a loop
        if isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            say_once(interrupted_line(os.environ.get("UNIFEWS_RUN_DIR")))
            raise SystemExit(130)
        raise
    except (ValueError, FileNotFoundError, KeyError, TypeError, MisconfigurationException) as e:
        if os.environ.get("UNIFEWS_TRACEBACK"):
            raise
        # cleaned up first: a rank other than 0 waits in say_once, where the launcher may stop it
        remove_if_unused(MADE["run_dir"])
        say_once(error_line(f"{str(e).strip() or type(e).__name__} (set UNIFEWS_TRACEBACK=1 for the traceback)"))
        raise SystemExit(2)
    finally:
        while TEMPORARIES:  # this process's temporary files (its children have ended)
            shutil.rmtree(TEMPORARIES.pop(), ignore_errors=True)
        setup_done()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = saved_tempdir
