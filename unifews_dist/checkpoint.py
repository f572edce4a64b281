"""Checkpoints that survive a kill mid-write, and finding the one a restarted job resumes from."""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

# Hyper-parameters that decide the shapes of a checkpoint's tensors.
SHAPE_KEYS = ("conv", "in_channels", "hidden_channels", "out_channels", "num_layers", "heads")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path.tmp``, flushes it to disk, then renames it over ``path``.

    Lightning's ``TorchCheckpointIO`` serializes to memory first but then writes the target file
    in place, so a job killed during that write (SLURM preemption) leaves a truncated file where
    the previous good checkpoint was. A rename is atomic on POSIX file systems: the path holds
    either the old checkpoint or the new one.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def resume_checkpoint(run_dir: str) -> Optional[str]:
    """The newest complete checkpoint of a run: ``checkpoints/last.ckpt`` or a SLURM
    ``hpc_ckpt_N.ckpt`` written on the requeue signal, whichever was written last."""
    candidates = glob.glob(os.path.join(run_dir, "hpc_ckpt_*.ckpt"))
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if os.path.isfile(last):
        candidates.append(last)
    return max(candidates, key=os.path.getmtime) if candidates else None


def check_compatible(path: str, hparams: Dict[str, Any]) -> None:
    """Raise ValueError when the checkpoint at ``path`` was trained with another model shape."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path!r} cannot be read ({type(e).__name__}: {e})") from e
    theirs = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(theirs, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path!r} is not a unifews_dist checkpoint (no hyper_parameters/state_dict)")
    diff = {k: (theirs.get(k), hparams.get(k)) for k in SHAPE_KEYS if k in hparams and theirs.get(k) != hparams.get(k)}
    if diff:
        text = ", ".join(f"{k}={a!r} in the checkpoint but {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path!r} is from another model: {text}")
