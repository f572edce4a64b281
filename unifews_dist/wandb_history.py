"""A W&B run's history that holds every step once across a job's restarts, and a reader of the
run's ``.wandb`` file (wandb ships no Python reader for it).

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

wandb is imported only inside functions: W&B enters through Lightning's ``WandbLogger``.
"""
from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

BLOCK = 32 * 1024
HEADER = 7
STEP_KEY = "trainer/global_step"
_W_AND_B_KEYS = {"_step", "_runtime", "_timestamp", STEP_KEY}


class TransactionLog:
    """Reads a ``.wandb`` file as it grows: a leveldb-style log, a 7-byte file header (``:W&B``,
    magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32,
    little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of a serialized
    ``wandb_internal_pb2.Record``. :meth:`read_new` returns the records completed since the
    last call (a record cut off by a write in progress is read on a later call)."""

    def __init__(self, path: str):
        self.path = path
        self._pos = HEADER  # the next chunk's offset
        self._pieces = b""

    def read_new(self) -> list:
        from wandb.proto import wandb_internal_pb2

        try:
            with open(self.path, "rb") as f:
                if self._pos == HEADER and f.read(4) not in (b":W&B", b""):
                    raise ValueError(f"{self.path} is not a .wandb file")
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return []
        out, pos = [], 0
        while True:
            at = self._pos + pos
            left = BLOCK - at % BLOCK
            if left < HEADER:  # block trailer padding
                if pos + left > len(data):
                    break
                pos += left
                continue
            if pos + HEADER > len(data):
                break
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
            if kind == 0 and length == 0:  # zero padding to the block's end
                if pos + left > len(data):
                    break
                pos += left
                continue
            if pos + HEADER + length > len(data):  # a chunk still being written
                break
            payload = data[pos + HEADER:pos + HEADER + length]
            pos += HEADER + length
            if kind == 1:
                out.append(payload)
            elif kind == 2:
                self._pieces = payload
            elif kind == 3:
                self._pieces += payload
            elif kind == 4:
                out.append(self._pieces + payload)
                self._pieces = b""
            else:
                raise ValueError(f"{self.path}: bad chunk type {kind} at byte {at}")
        self._pos += pos
        return [wandb_internal_pb2.Record.FromString(p) for p in out]


def read_records(path: str) -> list:
    """Every record of a ``.wandb`` file."""
    return TransactionLog(path).read_new()


def history_rows(records) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(_step, {key: value})`` of each logged history row."""
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            row = {(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item}
            yield rec.history.step.num, row


def run_files(wandb_dir: str, run_id: str) -> List[str]:
    """The ``.wandb`` files of run ``run_id`` under ``wandb_dir``, oldest first (one per
    attempt: ``offline-run-<time>-<id>`` offline, ``run-<time>-<id>`` online)."""
    files = glob.glob(os.path.join(wandb_dir, "*run-*", f"run-{run_id}.wandb"))
    return sorted(files, key=lambda p: os.path.basename(os.path.dirname(p)).split("run-", 1)[1])


def _row_key(step, keys) -> Tuple[int, FrozenSet[str]]:
    return int(step), frozenset(k for k in keys if k not in _W_AND_B_KEYS)


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
