"""Checkpoints: written so they survive a kill mid-write, found for a restarted job to resume
from, and read (which step a resumed run logs next, whether its run is finished)."""
from __future__ import annotations

import glob
import os
import random
import pickle
import re
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn

PREVIOUS = ".prev"  # suffix of the checkpoint a newer one replaced

# Hyper-parameters that decide the shapes of a checkpoint's tensors.
SHAPE_KEYS = ("conv", "in_channels", "hidden_channels", "out_channels", "num_layers", "heads")


class UnsafeCheckpoint(ValueError):
    """A checkpoint holding objects that loading would have to run."""


def load_checkpoint_file(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain Python values only, so a
    crafted file cannot run code. Anything else is refused with one line (``ValueError``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:[Uu]nsupported global:?|unsupported) GLOBAL ([\w.]+)", str(e))
        if found:
            raise UnsafeCheckpoint(
                f"checkpoint {path!r} holds an object other than tensors and plain values "
                f"({found.group(1)}): refused, nothing in a checkpoint is run"
            ) from None
        why = first_sentence(str(e).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0])
        raise ValueError(
            f"checkpoint {path!r} cannot be read as tensors and plain values ({why}); nothing in it was run"
        ) from None
    except Exception as e:  # a truncated or foreign file
        raise ValueError(
            f"checkpoint {path!r} cannot be read: truncated, or not a PyTorch checkpoint "
            f"({type(e).__name__}: {first_sentence(str(e))})"
        ) from None


def first_sentence(text: str, limit: int = 200) -> str:
    """A library's error message as one whole sentence on one line: up to its first full stop,
    at most ``limit`` characters, cut at a word and marked when longer (never mid-word)."""
    text = " ".join(text.split())
    m = re.search(r"[.!?](\s|$)", text)
    if m:
        text = text[:m.start()]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path.tmp``, flushes it to disk, then renames it over ``path``; the checkpoint it
    replaces is kept as ``path.prev`` until the next one is complete.

    Lightning's ``TorchCheckpointIO`` serializes to memory first but then writes the target file
    in place, so a job killed during that write (SLURM preemption) leaves a truncated file where
    the previous good checkpoint was. A rename is atomic on POSIX file systems: the path holds
    either the old checkpoint or the new one, and should the new one still be unreadable (a disk
    or copy fault), :func:`newest_readable` falls back to the previous. Loading is always
    ``weights_only`` (:func:`load_checkpoint_file`).
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
        if os.path.isfile(path):
            os.replace(path, path + PREVIOUS)
        os.replace(tmp, path)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        prev = os.fspath(path) + PREVIOUS
        if os.path.isfile(prev):
            os.remove(prev)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        """Always ``weights_only``: see :func:`load_checkpoint_file`."""
        return load_checkpoint_file(os.fspath(path), map_location if map_location is not None else "cpu")


def newest_readable(run_dir: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``(path, checkpoint)`` of the newest readable checkpoint of a run: ``checkpoints/last.ckpt``
    or a SLURM ``hpc_ckpt_N.ckpt`` written on the requeue signal, whichever was written last; one
    that cannot be read is passed over, saying so, for the next newest (``last.ckpt.prev`` too).
    ``None`` when the run has none; ``ValueError`` when it has some and none can be read (a
    fresh start would overwrite them), or one holds objects loading would run."""
    candidates = glob.glob(os.path.join(run_dir, "hpc_ckpt_*.ckpt"))
    for name in ("last.ckpt", "last.ckpt" + PREVIOUS):
        path = os.path.join(run_dir, "checkpoints", name)
        if os.path.isfile(path):
            candidates.append(path)
    errors = []
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        try:
            return path, load_checkpoint_file(path)
        except UnsafeCheckpoint:
            raise
        except ValueError as e:
            rank_zero_warn(f"{e}: trying an older checkpoint")
            errors.append(str(e))
    if errors:
        raise ValueError(f"no checkpoint of {run_dir} can be read ({errors[0]}); move them away to start the run over")
    return None


def check_compatible(path: str, hparams: Dict[str, Any], ckpt: Optional[Dict[str, Any]] = None) -> None:
    """Raise ValueError when the checkpoint at ``path`` (``ckpt``: already loaded) was trained
    with another model shape."""
    ckpt = load_checkpoint_file(path) if ckpt is None else ckpt
    theirs = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(theirs, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path!r} is not a unifews_dist checkpoint (no hyper_parameters/state_dict)")
    diff = {k: (theirs.get(k), hparams.get(k)) for k in SHAPE_KEYS if k in hparams and theirs.get(k) != hparams.get(k)}
    if diff:
        text = ", ".join(f"{k}={a!r} in the checkpoint but {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path!r} is from another model: {text}")


def rng_state() -> Dict[str, Any]:
    """Every random generator training reads (torch CPU and CUDA, numpy, Python), as tensors and
    plain values (a ``weights_only`` checkpoint holds them). The sampler and the data order draw
    from generators seeded per batch and per epoch, so they need no state."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


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
