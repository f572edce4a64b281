"""A run's start: the config checked, its directory resolved and made ready, and what a ``fit``
resumes from (or that it is finished already)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .checkpoint import finished, logged_steps, newest_readable
from .directory import RunFinished, check_writable, holds_results, keep_temporaries_in, resolve_run_dir, run_config_of

#: ``--ckpt_path`` values that name no file (Lightning resolves them)
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


@dataclass
class RunStart:
    """Where a run writes (``run_dir``), whether this process made that directory (it is removed
    again if the run fails before it trains), and for a resumed ``fit`` the checkpoint it resumes
    from, the logging step it continues at and the checkpoint's head (hyper-parameters, for the
    shape check)."""

    run_dir: str
    made: bool
    resume_from: Optional[str] = None
    resume_step: Optional[int] = None
    resume_head: Optional[dict] = None


def check_config(cfg, subcommand: str = "fit") -> None:
    """What no single class can check: one fanout per layer, no more GPUs than there are, and a
    ``fit`` that trains at least one step."""
    if subcommand == "fit":
        for key in ("max_epochs", "max_steps"):
            if cfg["trainer"].get(key) == 0:
                raise ValueError(f"trainer.{key}=0 trains nothing; give {key} >= 1 (or -1: no limit, with the "
                                 f"other one set)")
    data_hops = len(cfg["data"]["num_neighbors"])
    if data_hops != cfg["model"]["num_layers"]:
        raise ValueError(f"data.num_neighbors has {data_hops} hops but model.num_layers is "
                         f"{cfg['model']['num_layers']}: give one fanout per layer")
    devices = cfg["trainer"].get("devices", "auto")
    accel = cfg["trainer"].get("accelerator", "auto")
    devices = int(devices) if isinstance(devices, str) and devices.isdigit() else devices
    if isinstance(devices, int) and accel in ("gpu", "cuda") and devices > torch.cuda.device_count():
        raise ValueError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPUs")


def start_run(cfg, subcommand: str) -> RunStart:
    """Resolve and prepare ``cfg``'s run directory (written back into ``cfg``: ``run_dir``, the
    trainer's root, the checkpoint folders) and find the newest readable checkpoint a ``fit``
    resumes from. Raises :class:`RunFinished` when that run already trained as long as asked."""
    run_dir = resolve_run_dir(cfg.get("run_dir") or cfg["trainer"].get("default_root_dir"))
    cfg["run_dir"] = run_dir
    # ranks that Lightning starts itself (strategy ddp, no launcher) run this command again:
    # they find the same run directory here
    os.environ["UNIFEWS_RUN_DIR"] = run_dir
    start = RunStart(run_dir, made=not holds_results(run_dir))
    check_writable(run_dir)
    keep_temporaries_in(run_dir)
    cfg["trainer"]["default_root_dir"] = run_dir  # SLURM's requeue checkpoint goes here
    for key in ("checkpoint", "last_checkpoint"):
        if cfg[key].get("dirpath") is None:
            cfg[key]["dirpath"] = os.path.join(run_dir, "checkpoints")
    found = newest_readable(run_dir) if subcommand == "fit" and cfg.get("ckpt_path") is None else None
    if found is not None:  # loaded once here: what the run resumes from, and whether it is done
        start.resume_from, ckpt = found
        if finished(ckpt, cfg["trainer"].get("max_epochs"), cfg["trainer"].get("max_steps", -1)):
            raise RunFinished(run_dir, ckpt)
        start.resume_step = logged_steps(ckpt)
        # kept for the shape check once the model is made (not the weights: Lightning loads those)
        start.resume_head = {"hyper_parameters": ckpt.get("hyper_parameters")}
        if "state_dict" in ckpt:
            start.resume_head["state_dict"] = {}
    return start


def with_run_config(argv: List[str]) -> Tuple[List[str], Optional[str]]:
    """``(argv, config)``: ``test`` / ``validate`` / ``predict`` given a checkpoint get the config of
    the run it belongs to first (``config``), so it is evaluated on that run's data and reports
    into that run; the user's own ``--config`` files and arguments apply on top of it. A
    ``--ckpt_path`` that names no file is refused here, before anything is made."""
    if not argv or argv[0] not in ("fit", "test", "validate", "predict"):
        return argv, None
    ckpt = next((v for a, v in zip(argv, argv[1:] + [""]) if a == "--ckpt_path"), None)
    ckpt = ckpt or next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if ckpt and ckpt not in CKPT_KEYWORDS and not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt!r} does not exist (--ckpt_path takes a checkpoint file, "
                                f"RUN_DIR/checkpoints/*.ckpt)")
    config = run_config_of(ckpt) if ckpt and argv[0] != "fit" else None
    if config is None:
        given = any(a in ("--config", "-c") or a.startswith("--config=") for a in argv)
        if ckpt and ckpt not in CKPT_KEYWORDS and argv[0] != "fit" and not given:
            raise FileNotFoundError(
                f"checkpoint {ckpt!r} is not in a run directory: no config.yaml beside it or its checkpoints/ "
                f"folder, so the data and model it was trained with are unknown; pass them with --config "
                f"RUN_DIR/config.yaml (the run's) or the config it was trained with")
        return argv, None
    return [argv[0], "--config", config, *argv[1:]], config
