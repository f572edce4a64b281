"""W&B for a run: the config block, offline by default, the wandb settings object, and the
``WandbLogger`` whose history holds every step once across a job's restarts.

W&B writes what a run logs to its ``.wandb`` file (the transaction log; offline and online
alike) every ``flush_interval_s`` seconds, from a separate process. A job killed hard lost what
was logged since the last write, and a resumed run logged again the steps its killed
predecessor had logged after its checkpoint: gaps and duplicates in the dashboard.
:class:`RunWandbLogger` closes both when a run resumes: it logs the rows before the checkpoint
that no earlier attempt's file holds (from ``metrics.csv``, written row by row as each is
logged), and skips the rows that an earlier attempt's file already holds.

wandb 0.31 has no public call that makes W&B write its buffered rows, and waiting for its next
write after every checkpoint would cost up to ``flush_interval_s`` per checkpoint; W&B's own
way to drop the rows after a checkpoint, rewinding the run (``resume_from``), is a private
preview of the W&B server that offline runs and self-hosted servers cannot use.

Library modules do not import wandb; W&B enters through Lightning's ``WandbLogger`` (wandb is
imported here only to build its ``Settings``).
"""
from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from .wandb_records import STEP_KEY, W_AND_B_KEYS, history_rows, read_records, run_files


@dataclass
class WandbOptions:
    """W&B run settings (``--wandb false`` logs to CSV only).

    Args:
        project, entity, group, tags: as in ``wandb.init``.
        name: the run's display name; default: the run directory's name.
        flush_interval_s: seconds between writes of the run's data to its ``.wandb`` file
            (wandb's default is 15): how far behind a running job's file (and a dashboard fed
            from it) may be. A job killed hard loses nothing of it: the resumed run logs what
            W&B had not written (:class:`RunWandbLogger`).
    """
    project: str = "unifews_dist"
    name: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    entity: Optional[str] = None
    flush_interval_s: float = 2.0


def wandb_settings(flush_interval_s: float):
    if not flush_interval_s >= 0:
        raise ValueError(f"wandb.flush_interval_s must be >= 0, got {flush_interval_s}")
    import wandb
    try:
        return wandb.Settings(x_transaction_log_flush_interval=flush_interval_s)
    except Exception:  # an older wandb without the setting: its default behaviour
        return None


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def default_wandb_mode() -> None:
    """Offline unless the user chose a mode or is logged in (no server is assumed reachable)."""
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"


def _row_key(step, keys) -> Tuple[int, FrozenSet[str]]:
    return int(step), frozenset(k for k in keys if k not in W_AND_B_KEYS)


class RunWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose run history holds every row once across restarts.

    When a run resumes under the same W&B id (``rows_before_resume`` given: the rows that
    ``metrics.csv`` keeps, those logged before the checkpoint), at its first logged row it logs
    the rows before the checkpoint that no earlier attempt's ``.wandb`` file holds (W&B had not
    written them when the job was killed), and from then on skips each row that an earlier
    attempt's file holds (same ``trainer/global_step``, same metric names: rows the killed
    attempt logged after its checkpoint; the resumed run recomputes them exactly, resume being
    bit-exact). The dashboard plots against ``trainer/global_step``, so back-filled rows land
    where they belong.

    Args:
        rows_before_resume: ``[{"step": s, metric: value, ...}]`` in logging order, or ``None``
            for a new run.
        Others: as ``WandbLogger``.
    """

    def __init__(self, *args, rows_before_resume: Optional[List[Dict[str, Any]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Lightning passes wandb.init an 'anonymous' setting whatever is asked, and wandb >= 0.23
        # warns on every run that it has no effect (wandb PR #10909). WandbLogger has no public
        # way to leave it out: the one private name used here (a test fails if it goes away).
        init = getattr(self, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
        self._rows_before = rows_before_resume
        self._earlier: Optional[Set[Tuple[int, FrozenSet[str]]]] = None
        self.skipped_rows = self.backfilled_rows = 0

    def _earlier_rows(self) -> Set[Tuple[int, FrozenSet[str]]]:
        """Row keys of the earlier attempts' files (read once, at the first row)."""
        if self._earlier is None:
            self._earlier = set()
            run = self.experiment
            mine = os.path.abspath(run.settings.sync_file)
            for path in run_files(os.path.dirname(os.path.dirname(mine)), run.id):
                if os.path.abspath(path) != mine:
                    self._earlier.update(_row_key(row[STEP_KEY], row) for _, row in history_rows(read_records(path))
                                         if STEP_KEY in row)
            for row in self._rows_before or []:  # what W&B lost of the rows before the checkpoint
                step = row.get("step")
                metrics = {k: v for k, v in row.items() if k != "step"}
                if step is not None and metrics and _row_key(step, metrics) not in self._earlier:
                    super().log_metrics(metrics, int(step))
                    self.backfilled_rows += 1
            self._rows_before = None
        return self._earlier

    @rank_zero_only
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        if step is not None and _row_key(step, metrics) in self._earlier_rows():
            self.skipped_rows += 1
            return
        super().log_metrics(metrics, step)
