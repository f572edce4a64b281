"""The SLURM job scripts against a real one-node SLURM cluster on localhost (CPU, gloo)."""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

import slurm_cluster
from wandb_reader import history, offline_runs, run_info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests", "helpers")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm():
    missing = slurm_cluster.available()
    if missing:
        pytest.skip(f"SLURM is {missing} (apt-get install slurm-wlm munge)")
    root = tempfile.mkdtemp(prefix="unifews-slurm-")
    cluster = slurm_cluster.LocalSlurm(root, cpus=4).start()
    cluster.env.update(PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""), WANDB_MODE="offline",
                       WANDB_SILENT="true", PYTHON=sys.executable, CONFIG="configs/debug.yaml")
    yield cluster
    cluster.stop()


def _log(path):
    return open(path).read() if os.path.exists(path) else "(no log)"


def _sbatch(slurm, tmp_path, script, *args, env=None, sbatch_args=()):
    slurm.env.update(env or {})
    try:
        return slurm.sbatch(
            "--output",
            str(tmp_path / "%x-%j.out"),
            *sbatch_args,
            os.path.join("launch", "slurm", script),
            *args,
            cwd=ROOT,
        )
    finally:
        for k in env or {}:
            slurm.env.pop(k, None)


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("launcher", ["fork", "srun"])
def test_train_two_tasks_completes(slurm, tmp_path, launcher):
    """Two ranks on one node: by default one launcher forks both (they find its imports frozen,
    gc.freeze), with LAUNCHER=srun each is its own srun task (a fresh interpreter); both train
    identical models to the same end."""
    run, out = tmp_path / "run", tmp_path / "ranks.json"
    job = _sbatch(
        slurm,
        tmp_path,
        "train.sbatch",
        "--trainer.devices",
        "2",
        "--trainer.callbacks+=rank_check.RankCheck",
        f"--trainer.callbacks.out={out}",
        env={"RUN_DIR": str(run), "LAUNCHER": launcher},
        sbatch_args=("--ntasks-per-node=2", "--cpus-per-task=1"),
    )
    state = slurm.wait(job, timeout=300)
    log = _log(tmp_path / f"unifews-{job}.out")
    assert state == "COMPLETED", log[-3000:] + slurm.logs()
    s = _summary(run)
    assert s["world_size"] == 2 and s["global_step"] == 8 and 0 < s["weight_sparsity"] < 1
    assert len(list(run.glob("**/summary.json"))) == 1 and len(offline_runs(str(run / "wandb"))) == 1
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["steps"] == [8.0, 8.0] and r["param_diff"] == 0.0 and r["mask_diff"] == 0.0
    if launcher == "fork":
        assert len(r["frozen"]) == 2 and min(r["frozen"]) > 10000, r["frozen"]  # forked after the imports
    else:
        assert r["frozen"] == [0.0, 0.0], r["frozen"]


def test_mismatched_tasks_fail_with_a_clear_error(slurm, tmp_path):
    job = _sbatch(
        slurm,
        tmp_path,
        "train.sbatch",
        env={"RUN_DIR": str(tmp_path / "run")},
        sbatch_args=("--ntasks-per-node=2", "--cpus-per-task=1"),
    )
    assert slurm.wait(job, timeout=120) == "FAILED"
    log = _log(tmp_path / f"unifews-{job}.out")
    assert "trainer.num_nodes=1 x trainer.devices=1 processes, but this job has 1 node(s) x 2 task(s)" in log
    assert not (tmp_path / "run").exists()  # nothing started


def test_requeue_resumes_with_the_same_steps_and_wandb_run(slurm, tmp_path):
    """scontrol requeue mid-training: the job runs again, resumes from last.ckpt, and ends
    with the step count of an uninterrupted run (6 epochs x 4 batches) in the same W&B run."""
    run = tmp_path / "run"
    job = _start_slow_job(slurm, tmp_path, run)
    time.sleep(3)  # > wandb.flush_interval_s: what W&B got before the kill is on disk
    out = slurm.run("scontrol", "requeue", job)
    assert out.returncode == 0, out.stderr
    _release_requeued(slurm, job)
    state = slurm.wait(job, timeout=400, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    log = _log(tmp_path / f"unifews-{job}.out")
    assert state == "COMPLETED", log[-4000:]
    assert "(restart 1)" in log and "Resuming from" in log and slurm.job(job).get("Restarts") == "1"
    s = _summary(run)
    assert s["global_step"] == 24 and s["world_size"] == 2
    runs = offline_runs(str(run / "wandb"))
    run_id = (run / "wandb_id").read_text().strip()
    assert len(runs) == 2 and all(p.endswith(f"run-{run_id}.wandb") for p in runs)  # one W&B run, continued
    assert run_info(runs[-1])["id"] == run_id
    first, second = (
        [r["trainer/global_step"] for r in history(p) if "throughput/seeds_per_s" in r] for p in sorted(runs)
    )
    assert second and max(second) == 23
    # every step's row once in the run's history: the resumed run logs what W&B had not written
    # of the rows before its checkpoint and skips the rows the killed attempt's file holds
    assert sorted(first + second) == list(range(24)), (first, second)


def _start_slow_job(slurm, tmp_path, run, seconds="0.4"):
    job = _sbatch(
        slurm,
        tmp_path,
        "train.sbatch",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "6",
        "--trainer.callbacks+=rank_check.SlowSteps",
        f"--trainer.callbacks.seconds={seconds}",
        env={"RUN_DIR": str(run)},
        sbatch_args=("--ntasks-per-node=2", "--cpus-per-task=1"),
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline:
        assert slurm.job(job).get("JobState") in ("PENDING", "RUNNING"), _log(tmp_path / f"unifews-{job}.out")
        time.sleep(0.5)
    assert last.exists(), _log(tmp_path / f"unifews-{job}.out")
    return job


def _release_requeued(slurm, job):
    """slurmctld holds a requeued job back for 2 minutes (BeginTime); let it start now. Not in
    the second it was killed: slurmd then refused to start it ("Job N already killed, do not
    launch batch job"; the job ended FAILED) when released 0.65 s after the kill."""
    for _ in range(120):
        if slurm.job(job).get("JobState") == "PENDING":
            break
        time.sleep(0.5)
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")


def test_sigusr1_checkpoints_requeues_and_resumes(slurm, tmp_path):
    """The signal #SBATCH --signal=SIGUSR1@90 sends before the time limit, sent now: every rank
    saves hpc_ckpt_<step>.ckpt in the run directory at the same step (SlurmRequeue) and rank 0
    requeues the job; the requeued job resumes from that checkpoint and ends with the
    uninterrupted step count. (Lightning's own handler, which checkpoints inside the signal
    handler, hung this test about one run in three.)"""
    run = tmp_path / "run"
    job = _start_slow_job(slurm, tmp_path, run)
    out = slurm.run("scancel", "--signal=USR1", job)  # to every task of the job's steps, as SLURM does
    assert out.returncode == 0, out.stderr
    _release_requeued(slurm, job)
    state = slurm.wait(job, timeout=400, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    log = _log(tmp_path / f"unifews-{job}.out")
    assert state == "COMPLETED", log[-4000:] + slurm.logs()
    assert "(restart 1)" in log and slurm.job(job).get("Restarts") == "1", log[-4000:]
    hpc = list(run.glob("hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1, log[-4000:]
    assert f"Resuming from {hpc[0]}" in log or f"Restoring states from the checkpoint path at {hpc[0]}" in log, log[
        -4000:
    ]
    import torch

    at_signal = torch.load(hpc[0], map_location="cpu", weights_only=False)["global_step"]
    assert 0 < at_signal < 24
    s = _summary(run)
    assert s["global_step"] == 24 and s["world_size"] == 2
    assert len({p.rsplit("run-", 1)[1] for p in offline_runs(str(run / "wandb"))}) == 1  # one W&B run


def test_sweep_array_gathers_one_table(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    job = _sbatch(
        slurm,
        tmp_path,
        "sweep.sbatch",
        env={"THR_A": "0 1.0", "THR_W": "0.5", "SWEEP_DIR": str(sweep)},
        sbatch_args=("--array=0-1", "--output", str(tmp_path / "%x-%A_%a.out")),
    )
    state = slurm.wait(job, timeout=400)
    assert state == "COMPLETED", "\n".join(_log(p) for p in tmp_path.glob("*.out"))[-4000:]
    proc = subprocess.run(
        [sys.executable, "-m", "unifews_dist", "sweep-table", str(sweep)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    lines = (sweep / "table.csv").read_text().strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("run,thr_a,thr_w,test_acc")
    rows = [line.split(",") for line in lines[1:]]
    assert [(float(r[1]), float(r[2])) for r in rows] == [(0.0, 0.5), (1.0, 0.5)]
    assert float(rows[0][5]) == 0.0 and float(rows[1][5]) > 0  # edge sparsity follows thr_a
