"""Running ``unifews-dist`` as a user does, in a subprocess, and reading what it wrote."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: what subprocesses import test callbacks from (``--trainer.callbacks+=killer.KillAt``)
HELPERS = os.path.join(ROOT, "tests", "helpers")
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")
SUMMARY_KEYS = {"test_acc", "val_acc", "epochs", "world_size", "edge_sparsity", "edge_sparsity_per_layer",
                "weight_sparsity", "weight_sparsity_per_layer", "macs_dense", "macs_sparse", "train_seeds_per_s",
                "wall_s"}


def cli_env():
    """The environment of a CLI subprocess: offline W&B, the helpers importable, no traceback mode."""
    env = dict(os.environ, PYTHONPATH=HELPERS + os.pathsep + os.environ.get("PYTHONPATH", ""), WANDB_MODE="offline")
    env.pop("UNIFEWS_TRACEBACK", None)
    return env


def run_cli(args, cwd, timeout=300, runner=None, env=None):
    """``python -m unifews_dist ARGS`` (or ``runner + ARGS``) in ``cwd``: the completed process."""
    cmd = (runner or [sys.executable, "-m", "unifews_dist"]) + args
    return subprocess.run(cmd, cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def read_summary(proc):
    """The summary.json whose path a successful fit printed last."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = proc.stdout.strip().splitlines()[-1]
    assert path.endswith("summary.json") and os.path.isfile(path), proc.stdout[-2000:]
    with open(path) as f:
        s = json.load(f)
    assert SUMMARY_KEYS <= set(s)
    return s
