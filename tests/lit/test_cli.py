import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")
SUMMARY_KEYS = {"test_acc", "val_acc", "epochs", "world_size", "edge_sparsity", "edge_sparsity_per_layer",
                "weight_sparsity", "weight_sparsity_per_layer", "macs_dense", "macs_sparse", "train_seeds_per_s",
                "wall_s"}


def _env():
    env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""), WANDB_MODE="offline")
    env.pop("UNIFEWS_TRACEBACK", None)
    return env


def _run(args, cwd, timeout=300, runner=None):
    cmd = (runner or [sys.executable, "-m", "unifews_dist"]) + args
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _summary(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = proc.stdout.strip().splitlines()[-1]
    assert path.endswith("summary.json") and os.path.isfile(path), proc.stdout[-2000:]
    with open(path) as f:
        s = json.load(f)
    assert SUMMARY_KEYS <= set(s)
    return s


def test_debug_fit_writes_summary(tmp_path):
    s = _summary(_run(["fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path)], tmp_path))
    assert s["world_size"] == 1 and s["epochs"] == 2
    assert 0 <= s["test_acc"] <= 1 and 0 < s["edge_sparsity"] < 1 and 0 < s["weight_sparsity"] < 1
    assert len(s["edge_sparsity_per_layer"]) == 2 and s["macs_sparse"] < s["macs_dense"]
    assert s["train_seeds_per_s"] > 0


@pytest.mark.parametrize("args,pattern", [
    (["--model.thr_a", "-1"], "thr_a must be a finite number >= 0, got -1"),
    (["--model.thr_w", "abc"], "thr_w"),
    (["--model.no_such_key", "1"], "no_such_key"),
    (["--data.name", "imagenet"], "unknown dataset 'imagenet'; known datasets:"),
    (["--data.name", "cora", "--data.root", "/nonexistent/empty"], "nonexistent"),
    (["--model.num_layers", "3"], "data.num_neighbors has 2 hops but model.num_layers is 3"),
    (["--trainer.accelerator", "gpu", "--trainer.devices", "4"], "devices"),
    (["--model.conv", "gcm"], "gcm"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, pattern):
    proc = _run(["fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path), *args], tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = [l for l in proc.stderr.strip().splitlines() if l.startswith("unifews-dist: error:")]
    assert len(err) == 1 and pattern in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _check_ranks(tmp_path, proc):
    s = _summary(proc)
    assert s["world_size"] == 2
    with open(tmp_path / "ranks.json") as f:
        r = json.load(f)
    assert r["world"] == 2 and len(set(r["steps"])) == 1 and r["steps"][0] > 0  # same optimizer steps
    assert r["param_diff"] == 0.0 and r["mask_diff"] == 0.0 and r["mask_density"] < 1.0  # identical, pruned
    summaries = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f == "summary.json"]
    assert len(summaries) == 1


@pytest.mark.slow
def test_torchrun_two_ranks_identical_models(tmp_path):
    proc = _run(["fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path), "--trainer.devices", "2",
                 "--trainer.strategy", "ddp", "--trainer.callbacks+=rank_check.RankCheck",
                 f"--trainer.callbacks.out={tmp_path / 'ranks.json'}"], tmp_path, timeout=400,
                runner=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "unifews_dist"])
    _check_ranks(tmp_path, proc)


@pytest.mark.slow
def test_cli_ddp_fork_two_ranks_identical_models(tmp_path):
    proc = _run(["fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path), "--trainer.devices", "2",
                 "--trainer.strategy", "ddp_fork", "--trainer.callbacks+=rank_check.RankCheck",
                 f"--trainer.callbacks.out={tmp_path / 'ranks.json'}"], tmp_path, timeout=400)
    _check_ranks(tmp_path, proc)
