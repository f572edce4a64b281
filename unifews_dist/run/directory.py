"""The run directory: where a run writes everything, and what a restarted run continues from.

``RUN_DIR/config.yaml`` (the resolved config), ``metrics.csv``, ``checkpoints/``, ``wandb/`` and
``wandb_id``, ``summary.json``. A run started again with the same directory resumes from its
newest readable checkpoint, keeps its metrics history and its W&B run; a finished run started
again changes nothing.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from typing import List, Optional

from pytorch_lightning.utilities import rank_zero_only

from ..loggers.csv import METRICS


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


#: the temporary folders this process made (removed when its command ends: run/guard.py)
TEMPORARIES: List[str] = []


def keep_temporaries_in(run_dir: str) -> str:
    """Temporary files of this process and the ones it starts (PyG's generated ``propagate``
    modules, W&B's media and artifact staging) go to ``RUN_DIR/tmp/HOST-PID`` instead of the
    system's temporary folder, and the folder is removed when the command ends: a run directory
    does not gain a module per command. Folders a killed process of this host left are removed
    here (those of other hosts, on a shared file system, are theirs to remove)."""
    base = os.path.abspath(os.path.join(run_dir, "tmp"))
    host = socket.gethostname()
    if os.path.isdir(base):
        for name in os.listdir(base):
            h, _, pid = name.rpartition("-")
            if h == host and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    tmp = os.path.join(base, f"{host}-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    TEMPORARIES.append(tmp)
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
