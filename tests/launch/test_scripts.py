"""launch/torchrun.sh end to end, and the SLURM scripts' checks and --dry-run without SLURM."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bash(script, *args, env=None, timeout=300):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    e.update(PYTHON=sys.executable, WANDB_MODE="offline", WANDB_SILENT="true", **(env or {}))
    return subprocess.run(["bash", script, *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_two_processes_completes_debug(tmp_path):
    """launch/torchrun.sh's default launcher forks both ranks from one process that imported
    everything (they find its objects frozen), and they train identical models."""
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
    proc = _bash("launch/torchrun.sh", "--wandb", "false", "--trainer.callbacks+=rank_check.RankCheck",
                 f"--trainer.callbacks.out={tmp_path / 'ranks.json'}",
                 env={"NGPU": "2", "CONFIG": "configs/debug.yaml", "RUN_DIR": str(tmp_path / "run"),
                      "MASTER_PORT": "0", "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(proc.stdout.strip().splitlines()[-1]) as f:
        s = json.load(f)
    assert s["world_size"] == 2 and s["global_step"] == 8
    with open(tmp_path / "ranks.json") as f:
        r = json.load(f)
    assert r["param_diff"] == 0.0 and r["mask_diff"] == 0.0 and r["steps"] == [8.0, 8.0]
    assert len(r["frozen"]) == 2 and min(r["frozen"]) > 10000, r["frozen"]  # forked after the imports
    # torchrun's OMP_NUM_THREADS (1 for several ranks, unless set) reaches torch in a forked rank too
    assert r["threads"] == [float(os.environ.get("OMP_NUM_THREADS", 1))] * 2, r["threads"]


@pytest.mark.slow
def test_torchrun_two_nodes_on_localhost(tmp_path):
    """Multi-node at small scale: launch/torchrun.sh started twice (NODE_RANK 0 and 1, one rank
    each) meets through torchrun's c10d rendezvous; the forked ranks train identical models."""
    from conftest import free_port

    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
    env = {"NGPU": "1", "NNODES": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": str(free_port()),
           "CONFIG": "configs/debug.yaml", "RUN_DIR": str(tmp_path / "run"),
           "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")}
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    e.update(PYTHON=sys.executable, WANDB_MODE="offline", WANDB_SILENT="true", **env)
    args = ["--wandb", "false", "--trainer.callbacks+=rank_check.RankCheck",
            f"--trainer.callbacks.out={tmp_path / 'ranks.json'}"]
    nodes = [subprocess.Popen(["bash", "launch/torchrun.sh", *args], cwd=ROOT, env=dict(e, NODE_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    with open(tmp_path / "ranks.json") as f:
        r = json.load(f)
    assert r["world"] == 2 and r["param_diff"] == 0.0 and r["mask_diff"] == 0.0 and r["steps"] == [8.0, 8.0]
    assert min(r["frozen"]) > 10000  # both forked
    with open(outs[0][0].strip().splitlines()[-1]) as f:
        assert json.load(f)["world_size"] == 2


@pytest.mark.parametrize("argv,said", [
    (["--standalone", "--nproc_per_node=2", "-m", "unifews_dist", "fit"], "-m is set by this launcher"),
    (["--nproc_per_node", "2", "--start-method", "spawn", "fit"], "--start-method is set by this launcher"),
    (["--nproc_per_node", "2", "--", "--config"], "no subcommand given"),
])
def test_fork_launcher_refuses_what_it_sets(argv, said):
    proc = subprocess.run([sys.executable, "-m", "unifews_dist.launch", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("unifews_dist.launch: error: ")
    assert said in lines[0], proc.stderr


def test_torchrun_dry_run_multi_node():
    proc = _bash("launch/torchrun.sh", "--model.thr_a", "2",
                 env={"DRY_RUN": "1", "NGPU": "4", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node0",
                      "CONFIG": "configs/debug.yaml", "ACCELERATOR": "gpu"})
    assert proc.returncode == 0, proc.stderr
    cmd = proc.stdout
    for part in (
        "--nnodes=2",
        "--node_rank=1",
        "--rdzv_endpoint=node0:29500",
        "--nproc_per_node=4",
        "--trainer.devices 4",
        "--trainer.num_nodes 2",
        "--run_dir runs/torchrun-debug-2x4",
        "--model.thr_a 2",
    ):
        assert part in cmd, cmd
    assert cmd.split()[1:3] == ["-m", "unifews_dist.launch"] and " fit --config " in cmd  # the default: forked
    plain = _bash("launch/torchrun.sh", env={"DRY_RUN": "1", "LAUNCHER": "torchrun", "CONFIG": "configs/debug.yaml"})
    assert plain.returncode == 0 and " -m torch.distributed.run " in plain.stdout
    assert " -m unifews_dist fit --config " in plain.stdout, plain.stdout


@pytest.mark.parametrize(
    "env,pattern",
    [
        ({"NGPU": "two"}, "NGPU must be a whole number, got 'two'"),
        ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK < NNODES"),
        ({"CONFIG": "configs/nope.yaml"}, "CONFIG=configs/nope.yaml does not exist"),
        ({"LAUNCHER": "srun"}, "LAUNCHER must be fork or torchrun, got 'srun'"),
    ],
)
def test_torchrun_bad_input(env, pattern):
    proc = _bash("launch/torchrun.sh", env=dict(env, DRY_RUN="1"))
    assert proc.returncode == 2 and pattern in proc.stderr, proc.stderr


def test_multinode_dry_run_prints_every_node():
    """Default: one fork launcher per node, its rendezvous on the job's first node."""
    proc = _bash(
        "launch/slurm/multinode.sbatch",
        "--dry-run",
        env={
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NTASKS": "8",
            "SLURM_NTASKS_PER_NODE": "4",
            "SLURM_JOB_ID": "77",
            "SLURM_JOB_NAME": "unifews-2x4",
            "MASTER_PORT": "29400",
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    nodes = [line for line in proc.stdout.splitlines() if line.startswith("node ")]
    assert len(nodes) == 2 and nodes[1].startswith("node 1 (ranks 4-7, forked)")
    assert all("-m unifews_dist.launch --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d" in n for n in nodes)
    assert all(
        ":29400 --rdzv_id 77 fit --config configs/ogbn-products.yaml --run_dir runs/unifews-2x4-77" in n for n in nodes
    )


def test_multinode_dry_run_prints_every_task_with_srun():
    proc = _bash(
        "launch/slurm/multinode.sbatch",
        "--dry-run",
        env={
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NTASKS": "8",
            "SLURM_NTASKS_PER_NODE": "4",
            "SLURM_JOB_ID": "77",
            "SLURM_JOB_NAME": "unifews-2x4",
            "LAUNCHER": "srun",
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tasks = [line for line in proc.stdout.splitlines() if line.startswith("task ")]
    assert len(tasks) == 8 and tasks[7].startswith("task 7 (node 1, local rank 3)")
    assert all(
        "-m unifews_dist fit --config configs/ogbn-products.yaml --run_dir runs/unifews-2x4-77" in t for t in tasks
    )


def test_train_sbatch_refuses_an_unknown_launcher():
    proc = _bash("launch/slurm/train.sbatch", "--dry-run", env={"LAUNCHER": "torchrun"})
    assert proc.returncode == 2 and proc.stderr.strip() == "train.sbatch: LAUNCHER must be fork or srun, got 'torchrun'"


def test_train_sbatch_refuses_a_shape_the_config_does_not_have():
    proc = _bash(
        "launch/slurm/train.sbatch",
        "--dry-run",
        env={"CONFIG": "configs/debug.yaml", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "2"},
    )
    assert proc.returncode == 2
    assert "trainer.num_nodes=1 x trainer.devices=1 processes, but this job has 1 node(s) x 2 task(s)" in proc.stderr


def test_sweep_index_outside_the_grid():
    proc = _bash(
        "launch/slurm/sweep.sbatch", "--dry-run", env={"SLURM_ARRAY_TASK_ID": "4", "THR_A": "0 1", "THR_W": "0.5 1"}
    )
    assert proc.returncode == 2 and "array index 4 but the grid has 2 x 2 = 4 pairs: use --array=0-3" in proc.stderr


def test_sweep_dry_run_maps_index_to_pair():
    proc = _bash(
        "launch/slurm/sweep.sbatch",
        "--dry-run",
        env={
            "SLURM_ARRAY_TASK_ID": "3",
            "SLURM_ARRAY_JOB_ID": "9",
            "THR_A": "0 1",
            "THR_W": "0.5 1",
            "CONFIG": "configs/debug.yaml",
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--model.thr_a 1 --model.thr_w 1" in proc.stdout and "runs/sweep-9/thr_a=1_thr_w=1" in proc.stdout


def test_sweep_table_from_run_dirs(tmp_path):
    from unifews_dist.commands.sweep import main

    for a, w, acc in ((1.0, 0.5, 0.7), (0.0, 0.5, 0.8)):
        run = tmp_path / f"thr_a={a}_thr_w={w}"
        run.mkdir()
        (run / "config.yaml").write_text(f"model:\n  thr_a: {a}\n  thr_w: {w}\n")
        (run / "summary.json").write_text(
            json.dumps(
                {
                    "test_acc": acc,
                    "val_acc": acc,
                    "edge_sparsity": a / 2,
                    "weight_sparsity": 0.5,
                    "macs_dense": 100,
                    "macs_sparse": 25,
                    "train_seeds_per_s": 10.0,
                    "global_step": 8,
                    "world_size": 1,
                }
            )
        )
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("model: {thr_a: 2.0}\n")
    assert main([str(tmp_path)]) == 0
    lines = (tmp_path / "table.csv").read_text().strip().splitlines()
    assert [line.split(",")[1:4] for line in lines[1:]] == [["0.0", "0.5", "0.8"], ["1.0", "0.5", "0.7"]]
    assert lines[1].split(",")[7] == "4.0"  # MACs reduction dense / sparse
    assert "unfinished: unfinished" in (tmp_path / "table.md").read_text()
    assert main([str(tmp_path / "none")]) == 2
