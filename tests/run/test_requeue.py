"""SlurmRequeue: the warning signal is acted on at a step every rank agrees on, even when it
reaches the ranks at different moments (here: one rank only); the requeue checkpoint resumes to
the weights of an uninterrupted run. torchrun, 2 ranks, gloo; ``scontrol`` is a stand-in that
records what it was asked."""
import csv
import os
import stat
import sys

import pytest
import torch

from cli_run import DEBUG, cli_env as _env, run_cli as _run, read_summary as _summary

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "unifews_dist"]
ARGS = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--wandb", "false"]


def _fake_scontrol(tmp_path, rc=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env = _env()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="4242")
    return env


def _train_steps(run):
    with open(run / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def _weights(path):
    sd = torch.load(path, weights_only=True)["state_dict"]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


@pytest.mark.slow
def test_signal_on_one_rank_checkpoints_all_and_requeues(tmp_path):
    env = _fake_scontrol(tmp_path)
    run = tmp_path / "run"
    signal_at = ["--trainer.callbacks+=killer.SignalAt", "--trainer.callbacks.rank=1", "--trainer.callbacks.epoch=1",
                 "--trainer.callbacks.batch=1"]
    proc = _run(["fit", "--config", DEBUG, "--run_dir", str(run), *ARGS, "--requeue.enabled", "true", *signal_at],
                tmp_path, timeout=180, runner=TORCHRUN, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hpc = sorted(run.glob("hpc_ckpt_*.ckpt"))
    # the signal reached rank 1 before the step of epoch 1, batch 1 ended: both ranks wrote at its end
    assert [p.name for p in hpc] == ["hpc_ckpt_6.ckpt"], list(run.iterdir())
    assert torch.load(hpc[0], weights_only=True)["global_step"] == 6
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # rank 0 only, once
    assert f"step 6 checkpointed to {hpc[0]}" in proc.stdout and not (run / "summary.json").exists()

    # the job again (as SLURM runs it after the requeue): resumes there, ends as an uninterrupted run
    again = _run(["fit", "--config", DEBUG, "--run_dir", str(run), *ARGS, "--requeue.enabled", "true"], tmp_path,
                 timeout=180, runner=TORCHRUN, env=env)
    s = _summary(again)
    assert f"Resuming from {hpc[0]}" in again.stderr + again.stdout and s["global_step"] == 8
    assert _train_steps(run) == list(range(8))  # every step's row once, the checkpointed step's too
    whole = tmp_path / "whole"
    _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(whole), *ARGS], tmp_path, timeout=180, runner=TORCHRUN))
    a, b = _weights(whole / "checkpoints" / "last.ckpt"), _weights(run / "checkpoints" / "last.ckpt")
    # the same batches, random draws and thread counts: the same weights, bit for bit
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("data", [[], ["--data.sample_less", "true", "--model.lock_target_edges", "eval"]],
                         ids=["", "sample-less"])
def test_requeued_run_resumes_to_the_uninterrupted_weights(tmp_path, data):
    """Mid-epoch (sample_less: the blocks depend on the epoch's threshold, which the checkpoint keeps)."""
    env = _fake_scontrol(tmp_path)
    run, whole = tmp_path / "run", tmp_path / "whole"
    one = ["fit", "--config", DEBUG, "--wandb", "false", "--requeue.enabled", "true", *data]
    proc = _run([*one, "--run_dir", str(run), "--trainer.callbacks+=killer.SignalAt", "--trainer.callbacks.batch=1"],
                tmp_path, env=env)
    assert proc.returncode == 0 and "step 6 checkpointed" in proc.stdout, proc.stderr[-3000:]
    assert _summary(_run([*one, "--run_dir", str(run)], tmp_path, env=env))["global_step"] == 8
    _summary(_run([*one, "--run_dir", str(whole)], tmp_path, env=env))
    a, b = _weights(whole / "checkpoints" / "last.ckpt"), _weights(run / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _train_steps(run) == _train_steps(whole) == list(range(8))


def test_failed_requeue_keeps_training(tmp_path):
    """``scontrol`` refusing (a job without --requeue): the checkpoint stays, training goes on."""
    env = _fake_scontrol(tmp_path, rc=1)
    run = tmp_path / "run"
    proc = _run(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false", "--requeue.enabled", "true",
                 "--trainer.callbacks+=killer.SignalAt", "--trainer.callbacks.rank=0"], tmp_path, env=env)
    s = _summary(proc)
    assert s["global_step"] == 8 and [p.name for p in run.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_7.ckpt"]
    assert "scontrol requeue 4242` failed" in proc.stderr

