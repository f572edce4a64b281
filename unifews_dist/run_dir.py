"""The run directory: where a run writes everything, and what a restarted run continues from.

``RUN_DIR/config.yaml`` (the resolved config), ``metrics.csv``, ``checkpoints/``, ``wandb/`` and
``wandb_id``, ``summary.json``. A run started again with the same directory resumes from its
newest readable checkpoint, keeps its metrics history and its W&B run; a finished run started
again changes nothing.
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

METRICS = "metrics.csv"
SUMMARY = "summary.json"


def resolve_run_dir(explicit: Optional[str]) -> str:
    """The run directory: ``explicit`` (``--run_dir``), else ``$UNIFEWS_RUN_DIR``, else one named
    after the launcher's job id (torchrun's rendezvous id; SLURM's job id when srun started
    several tasks), which every rank computes alike, else ``runs/<date-time>`` for one process."""
    if explicit:
        return explicit
    env = os.environ
    if env.get("UNIFEWS_RUN_DIR"):
        return env["UNIFEWS_RUN_DIR"]
    rdzv = env.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return os.path.join("runs", f"torchrun-{rdzv}")
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = env.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{env['SLURM_ARRAY_TASK_ID']}" if job else env["SLURM_JOB_ID"]
        return os.path.join("runs", f"slurm-{job}")
    if int(env.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("several processes were launched without a shared job id: pass --run_dir DIR "
                         "(or set UNIFEWS_RUN_DIR) so every rank writes to the same run directory")
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        path, n = f"{base}-{n}", n + 1
    return path


class RunFinished(Exception):
    """The run directory holds a run that already trained as long as it was asked to."""

    def __init__(self, run_dir: str, ckpt: dict):
        super().__init__(run_dir)
        self.run_dir, self.epochs, self.steps = run_dir, ckpt.get("epoch", 0) + 1, ckpt.get("global_step", 0)


def run_config_of(ckpt_path: str) -> Optional[str]:
    """``RUN_DIR/config.yaml`` of the run a checkpoint belongs to (``RUN_DIR/checkpoints/F.ckpt``
    or ``RUN_DIR/hpc_ckpt_N.ckpt``), if there is one."""
    run = os.path.dirname(os.path.abspath(ckpt_path))
    if os.path.basename(run) == "checkpoints":
        run = os.path.dirname(run)
    config = os.path.join(run, "config.yaml")
    return config if os.path.isfile(config) else None


def predictions_path(run_dir: str, nodes: str) -> str:
    """Where ``predict`` of ``nodes`` (``all``, a split, or a file of node ids) writes:
    ``RUN_DIR/predictions-<nodes>.pt``, numbered ``-2``, ``-3``, ... when that file exists, so
    an earlier prediction is never overwritten."""
    name = os.path.splitext(os.path.basename(str(nodes)))[0] or "nodes"
    base = os.path.join(run_dir, f"predictions-{name}")
    path, n = base + ".pt", 2
    while os.path.exists(path):
        path, n = f"{base}-{n}.pt", n + 1
    return path


def holds_results(run_dir: str) -> bool:
    """Whether a run directory holds anything a run made worth keeping: a checkpoint or metrics."""
    return any(os.path.exists(os.path.join(run_dir, f)) for f in ("checkpoints", METRICS))


def remove_if_unused(run_dir: Optional[str]) -> None:
    """Remove a run directory that holds no checkpoint and no metrics (a run that failed before
    it trained: bad input, setup). Every rank that fails does: under a launcher the ranks make
    its ``tmp/`` at different moments, so the last to fail leaves nothing."""
    if run_dir and os.path.isdir(run_dir) and not holds_results(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)


def check_writable(run_dir: str) -> None:
    """A run directory that cannot be written is one clear line before anything starts (not a
    traceback later, with W&B quietly writing elsewhere)."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".writable-", dir=run_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"run directory {os.path.abspath(run_dir)!r} cannot be written ({e.strerror or e}); "
                         f"give --run_dir a folder this user can write") from None


def keep_temporaries_in(run_dir: str) -> str:
    """Temporary files of this process and the ones it starts (PyG's generated ``propagate``
    modules, W&B's media and artifact staging) go to ``RUN_DIR/tmp`` instead of the system's
    temporary folder, where killed runs left them behind."""
    tmp = os.path.abspath(os.path.join(run_dir, "tmp"))
    os.makedirs(tmp, exist_ok=True)
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    return tmp


def write_atomic(path: str, text: str) -> None:
    """Write a small text file so that a reader never sees it half-written."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def wandb_run_id(run_dir: str) -> str:
    """The W&B run id kept in ``run_dir/wandb_id`` (made and written by rank 0 on first use)."""
    path = os.path.join(run_dir, "wandb_id")
    if os.path.isfile(path):
        with open(path) as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        write_atomic(path, run_id + "\n")
    return run_id


def build_summary(metrics: dict, test: dict, epochs: int, global_step: int, world_size: int,
                  num_layers: int, wall_s: float) -> dict:
    """summary.json. Every figure belongs to the model it names: accuracy, sparsity and MACs at
    the top level are the tested model's (the best checkpoint), measured on the test batches
    (:class:`SparsityMonitor` logs them as ``test/...``); ``last_train_epoch`` holds the last
    training epoch's figures (the ``*_epoch`` totals of the monitors, summed over ranks).
    ``callback_metrics`` and the test results reach the launching process under every strategy,
    ``ddp_fork``/``ddp_spawn`` included, where the callbacks' own state stays in the workers."""
    def figures(src: dict, prefix: str, suffix: str) -> dict:
        def get(key: str) -> float:
            return float(src.get(f"{prefix}{key}{suffix}", 0.0))
        return {"edge_sparsity": get("sparsity/edge/all"),
                "edge_sparsity_per_layer": [get(f"sparsity/edge/layer{i}") for i in range(num_layers)],
                "weight_sparsity": get("sparsity/weight/all"),
                "weight_sparsity_per_layer": [get(f"sparsity/weight/layer{i}") for i in range(num_layers)],
                "macs_dense": int(get("macs/dense")), "macs_sparse": int(get("macs/sparse"))}

    ogb = {"test_ogb_acc": float(test["test/ogb_acc"])} if "test/ogb_acc" in test else {}
    return {
        "test_acc": float(test.get("test/acc", float("nan"))), **ogb,
        "val_acc": float(metrics.get("val/acc", float("nan"))),
        **figures(test, "test/", ""),
        "epochs": int(epochs), "global_step": int(global_step), "world_size": int(world_size),
        "train_seeds_per_s": float(metrics.get("throughput/seeds_per_s_epoch", 0.0)),
        "last_train_epoch": figures(metrics, "", "_epoch"),
        "wall_s": float(wall_s),
    }


def add_test_result(run_dir: str, result: dict) -> str:
    """Append a test of one of the run's checkpoints to ``summary.json`` (``tests``); its path."""
    path = os.path.abspath(os.path.join(run_dir, SUMMARY))
    summary = {}
    if os.path.isfile(path):
        with open(path) as f:
            summary = json.load(f)
    summary.setdefault("tests", []).append(result)
    os.makedirs(run_dir, exist_ok=True)
    write_atomic(path, json.dumps(summary, indent=2))
    return path


def logged_steps(ckpt: Dict[str, Any]) -> int:
    """The logging step a run resumed from ``ckpt`` logs next (Lightning logs at its count of
    batches that stepped the optimizer, which for :class:`UnifewsModule`'s one optimizer is the
    checkpoint's ``global_step``): rows of ``metrics.csv`` from it on are logged again. A
    checkpoint written at a step's end (SLURM's requeue, ``every_n_train_steps``) or mid-epoch
    holds the count before that step's increment, and Lightning adds the step when it resumes
    from one; so does this."""
    fit = ckpt.get("loops", {}).get("fit_loop", {})
    steps = int(ckpt.get("global_step", 0))
    progress = fit.get("epoch_loop.batch_progress", {})
    total = progress.get("total", {})
    on_batch_end = bool(total) and total.get("started") == total.get("ready") == total.get("processed") \
        and total.get("completed") == total.get("processed", 0) - 1
    if progress and (on_batch_end or not progress.get("is_last_batch", True)):
        steps += 1
    return steps


def finished(ckpt: Dict[str, Any], max_epochs: Optional[int], max_steps: int) -> bool:
    """Whether a checkpoint is of a run that already trained ``max_epochs`` / ``max_steps``."""
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    # an end-of-epoch checkpoint is written after the epoch was processed, before it is counted completed
    epochs_done = progress.get("current", {}).get("processed", ckpt.get("epoch", 0))
    if max_steps is not None and max_steps >= 0 and ckpt.get("global_step", 0) >= max_steps:
        return True
    return max_epochs is not None and max_epochs >= 0 and epochs_done >= max_epochs


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
    drop none (``keep_before=None``).

    Args:
        run_dir: the run directory.
        keep_before: rows logged at steps before this one are kept, the rest dropped: a resumed
            ``fit``'s first logging step, 0 for a new ``fit``; ``None`` keeps every row.
    """

    def __init__(self, run_dir: str, keep_before: Optional[int] = 0):
        super().__init__()
        self._dir, self._path = run_dir, os.path.join(run_dir, METRICS)
        self._keys: List[str] = []
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
        if set(row) - set(self._keys) or not os.path.isfile(self._path):  # a new column: rewrite once
            self._write(self._read() + [row])
            return
        with open(self._path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._keys).writerow(row)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is ``RUN_DIR/config.yaml``; nothing to add here."""
