"""A run's set-up, as every rank of a launched job goes through it: errors said once, and a
stop by the launcher (SIGTERM while setting up) leaving nothing behind.

Under torchrun or srun every rank parses the same arguments and loads the same data, so a bad
value fails on every rank; the launcher then stops the others as soon as one exits.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, List

from pytorch_lightning.utilities import rank_zero_only


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


def say_once(line: str) -> None:
    """A set-up error's one line, said by rank 0. The other ranks wait a moment before they
    exit, because the launcher stops every rank as soon as one exits, which could stop rank 0
    before it said anything."""
    if rank_zero_only.rank == 0:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    else:
        time.sleep(3.0)
