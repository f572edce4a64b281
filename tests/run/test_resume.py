"""Nothing lost: a run killed hard (SIGKILL after its first checkpoint, mid-epoch) and started
again ends with the same weights and the same metrics history as an uninterrupted run, with
dropout on, on one process and on two ranks; a finished run started again changes nothing."""
import csv
from collections import Counter

import pytest
import torch

from cli_run import DEBUG, run_cli as _run, read_summary as _summary

# dropout 0.5 (debug config) and enough batches that the kill lands mid-epoch after a checkpoint
ARGS = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "6", "--wandb", "false"]
TWO_RANKS = ["--trainer.devices", "2", "--trainer.strategy", "ddp_fork"]


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _train_losses(run):
    return [(int(r["step"]), float(r["train/loss_step"])) for r in _rows(run) if r.get("train/loss_step")]


def _weights(run):
    sd = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, ranks):
    extra = ARGS + (TWO_RANKS if ranks == 2 else [])
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    s_whole = _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(whole), *extra], tmp_path))
    proc = _run(["fit", "--config", DEBUG, "--run_dir", str(killed), *extra,
                 "--trainer.callbacks+=killer.KillAt"], tmp_path)
    assert proc.returncode != 0 and (killed / "checkpoints" / "last.ckpt").is_file()
    logged = _train_losses(killed)
    assert logged and max(s for s, _ in logged) >= 6  # rows past the epoch-0 checkpoint were written
    s_killed = _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(killed), *extra], tmp_path))

    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # every training step logged exactly once, with the uninterrupted run's values
    assert _train_losses(killed) == _train_losses(whole)
    steps = [s for s, _ in _train_losses(killed)]
    assert steps == sorted(set(steps)) and len(steps) == 3 * 6
    assert s_killed["global_step"] == s_whole["global_step"] == 18


def test_finished_run_started_again_changes_nothing(tmp_path):
    run = tmp_path / "run"
    proc = _run(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false"], tmp_path)
    _summary(proc)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = _run(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "is finished" in again.stdout and again.stdout.strip().splitlines()[-1] == str(run / "summary.json")
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_summary_figures_belong_to_the_tested_checkpoint(tmp_path):
    """Accuracy, sparsity and MACs at the top of summary.json are the tested (best) checkpoint's,
    on the test batches; the last training epoch's figures are kept apart."""
    run = tmp_path / "run"
    s = _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false",
                       "--trainer.max_epochs", "3"], tmp_path))
    ckpt = torch.load(s["tested_checkpoint"], weights_only=True)
    masks = [v for k, v in ckpt["state_dict"].items() if k.endswith("weight_mask")]
    expect = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert s["weight_sparsity"] == pytest.approx(expect, abs=1e-6)
    assert set(s["last_train_epoch"]) >= {"edge_sparsity", "weight_sparsity", "macs_dense", "macs_sparse"}
    assert 0 < s["edge_sparsity"] < 1 and s["macs_sparse"] < s["macs_dense"]


def test_what_a_run_writes_stays_in_its_run_directory(tmp_path):
    """PyG's generated propagate modules and W&B's staging go to RUN_DIR/tmp, not the system's
    temporary folder, and are removed when the command ends; W&B's own logs go to RUN_DIR/wandb,
    not ~/.cache/wandb."""
    from cli_run import cli_env as _env
    import subprocess
    import sys
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = dict(_env(), TMPDIR=str(system_tmp), HOME=str(home))
    env.pop("WANDB_CACHE_DIR", None)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "unifews_dist", "fit", "--config", DEBUG, "--run_dir", str(run),
                           "--trainer.max_epochs", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p for p in system_tmp.rglob("*") if p.is_file()] == []
    assert [p for p in home.rglob("*") if p.is_file() and "wandb" in str(p)] == []  # W&B's logs: in the run
    assert not [p for p in (run / "tmp").rglob("*") if p.is_file()]  # the command's temporaries: gone
    assert list((run / "wandb").rglob("*debug*.log"))


def _wandb_rows(run):
    """Every W&B history row of every attempt: (global step, metric names, train loss)."""
    from wandb_reader import history, offline_runs
    skip = {"_step", "_runtime", "_timestamp", "trainer/global_step"}
    return [(r["trainer/global_step"], frozenset(set(r) - skip), r.get("train/loss_step"))
            for p in offline_runs(str(run / "wandb")) for r in history(p)]


@pytest.mark.slow
@pytest.mark.parametrize("written", ["nothing", "everything"])
def test_killed_run_wandb_history_holds_every_row_once(tmp_path, written):
    """Killed after its first checkpoint and resumed, a run's W&B history (both attempts' offline
    files) holds the uninterrupted run's rows, each once, with its losses. ``nothing``: W&B wrote
    none of the killed attempt's rows (60 s flush interval): the resumed run logs the rows before
    the checkpoint from metrics.csv. ``everything``: W&B wrote them all, also the rows after the
    checkpoint (the kill waits 1.5 s): the resumed run does not log those again."""
    base = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "6"]
    wb = ["--wandb.flush_interval_s", "60" if written == "nothing" else "0.05"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(whole), *base], tmp_path))
    proc = _run(["fit", "--config", DEBUG, "--run_dir", str(killed), *base, *wb, "--trainer.callbacks+=killer.KillAt",
                 "--trainer.callbacks.delay", "0" if written == "nothing" else "1.5"], tmp_path)
    assert proc.returncode != 0 and (killed / "checkpoints" / "last.ckpt").is_file()
    first = _wandb_rows(killed)
    if written == "nothing":
        assert first == []
    else:  # rows past the epoch-0 checkpoint (step 6) were written
        assert max(s for s, _, loss in first if loss is not None) >= 7
    _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(killed), *base, *wb], tmp_path))
    got, want = _wandb_rows(killed), _wandb_rows(whole)
    assert Counter(got) == Counter(want)  # every row once: none lost, none twice
    assert len([1 for _, _, loss in got if loss is not None]) == 3 * 6
