import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from wandb_reader import history, offline_runs, run_info

from cli_run import DEBUG, ROOT, cli_env as _env, read_summary as _summary, run_cli as _run  # noqa: F401


def test_debug_fit_writes_run_dir_and_report(tmp_path):
    run = tmp_path / "run"
    s = _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(run)], tmp_path))
    assert s["world_size"] == 1 and s["epochs"] == 2
    assert 0 <= s["test_acc"] <= 1 and 0 < s["edge_sparsity"] < 1 and 0 < s["weight_sparsity"] < 1
    assert len(s["edge_sparsity_per_layer"]) == 2 and s["macs_sparse"] < s["macs_dense"]
    assert s["train_seeds_per_s"] > 0
    for name in ("summary.json", "config.yaml", "metrics.csv", "wandb_id", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    runs = offline_runs(str(run / "wandb"))
    assert len(runs) == 1 and run_info(runs[0])["id"] == (run / "wandb_id").read_text().strip()
    info = run_info(runs[0])
    assert info["metrics"].get("*") == "trainer/global_step"  # charts step on the global step
    assert info["config"]["model"]["thr_w"] == 0.5 and info["config"]["data"]["name"] == "synthetic-tiny"

    proc = subprocess.run([sys.executable, "-m", "unifews_dist", "report", str(run)], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    pngs = proc.stdout.split()
    assert {os.path.basename(p) for p in pngs} == {"accuracy.png", "edge_sparsity.png", "weight_sparsity.png",
                                                    "throughput.png", "step_time.png"}
    import matplotlib.image
    for p in pngs:
        img = matplotlib.image.imread(p)
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img[..., :3].std()) > 0.01  # not blank
    bad = subprocess.run([sys.executable, "-m", "unifews_dist", "report", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=60, env=_env())
    assert bad.returncode == 2 and "has no metrics.csv" in bad.stderr


def test_wandb_false_logs_csv_only(tmp_path):
    run = tmp_path / "run"
    _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false", "--trainer.max_epochs", "1"],
                  tmp_path))
    assert (run / "metrics.csv").is_file() and not (run / "wandb").exists() and not (run / "wandb_id").exists()


def test_restart_resumes_checkpoint_and_wandb_run(tmp_path):
    """A job started again with the same run directory continues: steps, schedule, W&B run."""
    run = tmp_path / "run"
    sched = ["--trainer.callbacks+=unifews_dist.callbacks.SparsitySchedule", "--trainer.callbacks.thr_w=0.8",
             "--trainer.callbacks.kind=linear", "--trainer.callbacks.interval=step", "--trainer.callbacks.ramp=8"]
    first = _run(["fit", "--config", DEBUG, "--run_dir", str(run), "--trainer.max_epochs", "1", *sched], tmp_path)
    _summary(first)
    second = _run(["fit", "--config", DEBUG, "--run_dir", str(run), "--trainer.max_epochs", "3", *sched], tmp_path)
    _summary(second)
    assert "Resuming from" in second.stdout + second.stderr
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 3 * 4 and ckpt["epoch"] == 2
    assert ckpt["callbacks"]["SparsitySchedule"]["current"]["thr_w"] == pytest.approx(0.8)
    runs = offline_runs(str(run / "wandb"))
    assert len(runs) == 2 and len({run_info(p)["id"] for p in runs}) == 1  # wandb sync merges them: one run
    steps = sorted(r["trainer/global_step"] for p in runs for r in history(p) if "schedule/thr_w" in r)
    assert steps == list(range(12))  # no step trained twice, none skipped
    thr = {r["trainer/global_step"]: r["schedule/thr_w"] for p in runs for r in history(p) if "schedule/thr_w" in r}
    assert [thr[k] for k in range(12)] == pytest.approx([0.1 * min(k, 8) for k in range(12)])


def test_checkpoint_from_another_model_exit_2(tmp_path):
    run = tmp_path / "run"
    _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(run), "--trainer.max_epochs", "1", "--wandb", "false"],
                  tmp_path))
    proc = _run(["fit", "--config", DEBUG, "--run_dir", str(tmp_path / "other"), "--model.hidden_channels", "16",
                 "--ckpt_path", str(run / "checkpoints" / "last.ckpt")], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("unifews-dist: error:")]
    assert len(err) == 1 and "is from another model: hidden_channels=32 in the checkpoint but 16 now" in err[0]
    assert "Traceback" not in proc.stderr


BAD_INPUT = [
    (["--model.thr_a", "-1"], "thr_a must be a finite number >= 0, got -1"),
    (["--model.thr_w", "abc"], "thr_w"),
    (["--model.no_such_key", "1"], "no_such_key"),
    (["--data.name", "imagenet"], "unknown dataset 'imagenet'; known datasets:"),
    (["--data.name", "cora", "--data.root", "/nonexistent/empty"], "nonexistent"),
    (["--model.num_layers", "3"], "data.num_neighbors has 2 hops but model.num_layers is 3"),
    (["--trainer.accelerator", "gpu", "--trainer.devices", "4"], "devices"),
    (["--model.conv", "gcm"], "gcm"),
    (["--data.random_split", "[0.8, 0.3]"], "random_split needs [train, val] fractions > 0 with sum < 1"),
    (["--ckpt_path", "/nonexistent/last.ckpt"], "/nonexistent/last.ckpt"),
    (["--requeue.check_every_n_steps", "0"], "requeue.check_every_n_steps must be an integer >= 1, got 0"),
    (["--trainer.callbacks+=unifews_dist.callbacks.SparsitySchedule", "--trainer.callbacks.kind=exp",
      "--trainer.callbacks.thr_a=1"], "Literal['constant', 'linear', 'cosine', 'cubic', 'table']. Got value: exp"),
]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """Every BAD_INPUT case as its own ``unifews-dist fit`` process, all started at once: the
    interpreter starts (most of each case's time) overlap."""
    tmps = [tmp_path_factory.mktemp("bad_input") for _ in BAD_INPUT]  # each its own (default) run directory
    procs = [subprocess.Popen([sys.executable, "-m", "unifews_dist", "fit", "--config", DEBUG,
                               "--trainer.default_root_dir", str(tmp), *args], cwd=tmp, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tmp, (args, _) in zip(tmps, BAD_INPUT)]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        results.append({"code": p.returncode, "stderr": err})
    return results


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[p for _, p in BAD_INPUT])
def test_bad_input_one_line_exit_2(bad_input_results, case):
    res, pattern = bad_input_results[case], BAD_INPUT[case][1]
    assert res["code"] == 2, res
    err = [line for line in res["stderr"].strip().splitlines() if line.startswith("unifews-dist: error:")]
    assert len(err) == 1 and pattern in err[0], res["stderr"][-2000:]
    assert "Traceback" not in res["stderr"]


def _check_ranks(tmp_path, proc):
    s = _summary(proc)
    assert s["world_size"] == 2
    with open(tmp_path / "ranks.json") as f:
        r = json.load(f)
    assert r["world"] == 2 and len(set(r["steps"])) == 1 and r["steps"][0] > 0  # same optimizer steps
    assert r["param_diff"] == 0.0 and r["mask_diff"] == 0.0 and r["mask_density"] < 1.0  # identical, pruned
    # the masks each rank computed and used, compared at every step
    assert r["steps_checked"] == r["steps"][0] and r["step_mask_diff"] == 0.0
    summaries = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f == "summary.json"]
    assert len(summaries) == 1
    return r


@pytest.mark.slow
def test_torchrun_two_ranks_identical_models(tmp_path):
    talking = {k: v for k, v in _env().items() if k != "WANDB_SILENT"}  # the summary path stays the last line
    proc = _run(["fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path), "--trainer.devices", "2",
                 "--trainer.strategy", "ddp", "--trainer.callbacks+=rank_check.RankCheck",
                 f"--trainer.callbacks.out={tmp_path / 'ranks.json'}"], tmp_path, timeout=400,
                runner=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "unifews_dist"], env=talking)
    _check_ranks(tmp_path, proc)
    # exactly one W&B run for the job; its history has every throughput and per-layer sparsity key
    runs = glob.glob(str(tmp_path / "**" / "offline-run-*" / "run-*.wandb"), recursive=True)
    assert len(runs) == 1, runs
    rows = history(runs[0])
    keys = {k for r in rows for k in r}
    want = {"throughput/seeds_per_s", "throughput/edges_per_s", "throughput/kept_edges_per_s", "time/data_s",
            "time/transfer_s", "time/forward_s", "time/backward_s", "sparsity/edge/all", "macs/reduction"}
    want |= {f"sparsity/{kind}/layer{i}" for kind in ("edge", "weight") for i in range(2)}
    assert want <= keys, want - keys
    values = [r[k] for r in rows for k in want if k in r]
    assert len(values) >= 8 * len(want) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@pytest.mark.slow
def test_cli_ddp_fork_two_ranks_identical_models(tmp_path):
    """TargetSparsity moves the thresholds from rank-local batches: they must stay identical."""
    proc = _run(["fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path), "--trainer.devices", "2",
                 "--trainer.strategy", "ddp_fork", "--trainer.callbacks+=unifews_dist.callbacks.TargetSparsity",
                 "--trainer.callbacks.edge_sparsity=0.8", "--trainer.callbacks+=rank_check.RankCheck",
                 f"--trainer.callbacks.out={tmp_path / 'ranks.json'}"], tmp_path, timeout=400)
    r = _check_ranks(tmp_path, proc)
    assert r["thr_diff"] == 0.0 and r["thr"][:2] != [1.0, 1.0]  # moved by the controller, the same everywhere
    s = _summary(proc)  # the launching process reports what the workers measured
    assert s["world_size"] == 2 and s["global_step"] == 8 and s["epochs"] == 2
    assert 0.5 < s["edge_sparsity_per_layer"][0] < 1 and s["train_seeds_per_s"] > 0 and s["macs_sparse"] > 0


def test_test_uses_checkpoint_thresholds_unless_typed(tmp_path):
    """The checkpoint holds the thresholds it was trained at; --model.thr_* evaluates at others."""
    run = tmp_path / "run"
    _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(run), "--trainer.max_epochs", "1", "--wandb", "false"],
                  tmp_path))
    ckpt = str(run / "checkpoints" / "last.ckpt")
    common = ["test", "--config", DEBUG, "--wandb", "false", "--ckpt_path", ckpt,
              "--trainer.callbacks+=rank_check.RankCheck"]
    out = {}
    for name, extra in (("stored", ["--model.hidden_channels", "32"]), ("typed", ["--model.thr_a", "3.0"])):
        proc = _run(
            common
            + [
                f"--trainer.callbacks.out={tmp_path / name}.json",
                "--trainer.callbacks.stage=test",
                "--run_dir",
                str(tmp_path / name),
            ]
            + extra,
            tmp_path,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(tmp_path / f"{name}.json") as f:
            out[name] = json.load(f)
    assert out["stored"]["thr"][:2] == [1.0, 1.0]  # debug.yaml's thr_a, from the checkpoint
    assert out["typed"]["thr"][:2] == [3.0, 3.0]
