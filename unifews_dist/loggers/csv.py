"""``RUN_DIR/metrics.csv``: every logged row, kept across restarts."""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Optional

import torch
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

METRICS = "metrics.csv"


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


class RunCSVLogger(Logger):
    """``RUN_DIR/metrics.csv``, kept across restarts: every step's row exactly once.

    Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts and writes rows
    every ``flush_logs_every_n_steps``: a resumed run lost its history, and a killed one the rows
    since the last write. This one writes each row when it is logged, and a run resumed at
    logging step ``resume_step`` keeps the rows before it (the ones after were logged by the
    killed run after its checkpoint, and are logged again).

    ``test``, ``validate`` and ``predict`` of a run's checkpoint add their rows to the file and
    drop none (``keep_before=None``); their rows sit at the run's last logged step and epoch, as
    the test after ``fit`` does, not at step 0 (their trainer starts from 0), so the file's steps
    never go back.

    Args:
        run_dir: the run directory.
        keep_before: rows logged at steps before this one are kept, the rest dropped: a resumed
            ``fit``'s first logging step, 0 for a new ``fit``; ``None`` keeps every row.
    """

    def __init__(self, run_dir: str, keep_before: Optional[int] = 0):
        super().__init__()
        self._dir, self._path = run_dir, os.path.join(run_dir, METRICS)
        self._keys: List[str] = []
        self._at: Optional[Dict[str, Any]] = None  # step and epoch an evaluation's rows sit at
        self._truncate(keep_before)

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def root_dir(self) -> str:
        return self._dir

    @property
    def log_dir(self) -> str:
        return self._dir

    @property
    def save_dir(self) -> str:
        return self._dir

    @property
    @rank_zero_experiment
    def experiment(self) -> str:
        return self._path

    @rank_zero_only
    def _truncate(self, keep_before: Optional[int]) -> None:
        rows = self._read()
        if keep_before is None:
            self._keys = sorted(set().union(*rows)) if rows else []
            last = max((r for r in rows if r.get("step") not in (None, "")), key=lambda r: _number(r["step"]),
                       default=None)
            if last is not None:
                epochs = [_number(r["epoch"]) for r in rows if r.get("epoch") not in (None, "")]
                self._at = {"step": _number(last["step"]), "epoch": max(epochs) if epochs else None}
            return
        kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < keep_before]
        if not kept:
            if os.path.isfile(self._path):
                os.remove(self._path)
            self._keys = []
        elif kept != rows:
            self._write(kept)
        else:
            self._keys = sorted(set().union(*kept))

    def rows(self) -> List[Dict[str, Any]]:
        """The rows in the file, in logging order: ``{"step": s, key: value}`` with each row's
        logged keys only, numbers as logged (ints stay ints)."""
        return [{k: _number(v) for k, v in r.items() if v not in (None, "")} for r in self._read()]

    def _read(self) -> List[Dict[str, str]]:
        if not os.path.isfile(self._path):
            return []
        with open(self._path, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: List[Dict[str, Any]]) -> None:
        keys = sorted(set().union(*rows)) if rows else []
        os.makedirs(self._dir, exist_ok=True)
        with open(self._path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(self._path + ".tmp", self._path)
        self._keys = keys

    @rank_zero_only
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        row["step"] = step
        if self._at is not None:  # an evaluation of a trained run: at its last step and epoch
            row["step"] = max(step or 0, self._at["step"])
            if "epoch" in row and self._at["epoch"] is not None:
                row["epoch"] = self._at["epoch"]
        if set(row) - set(self._keys) or not os.path.isfile(self._path):  # a new column: rewrite once
            self._write(self._read() + [row])
            return
        with open(self._path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._keys).writerow(row)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is ``RUN_DIR/config.yaml``; nothing to add here."""
