"""Issue #34: a run's history survives every command, and every mistake gets one line."""
import contextlib
import csv
import io
import json
import os
import re

import pytest
import torch

from cli_run import DEBUG, run_cli as _run, read_summary as _summary


def _main(args):
    """``unifews-dist ARGS`` in this process: (exit code, stdout, stderr)."""
    from unifews_dist.cli import main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as e:
            code = e.code or 0
    return code, out.getvalue(), err.getvalue()


def _training_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if any(k.startswith("train/") and v for k, v in r.items())]


def test_readme_commands_in_order_keep_the_training_history(tmp_path, monkeypatch):
    """fit, test, predict, a test with a mistyped checkpoint, predict of another node set,
    report: ``metrics.csv`` still holds every training row, each prediction is kept, the report
    draws accuracy beside a baseline run's."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    code, out, err = _main(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false"])
    assert code == 0, err
    rows = _training_rows(run)
    assert len(rows) >= 8  # 2 epochs x 4 steps, logged every step
    s = json.loads((run / "summary.json").read_text())
    ckpt = s["tested_checkpoint"] or str(run / "checkpoints" / "last.ckpt")

    code, out, err = _main(["test", "--ckpt_path", ckpt, "--wandb", "false"])
    assert code == 0, err
    assert _training_rows(run) == rows

    code, out, err = _main(["predict", "--ckpt_path", ckpt, "--wandb", "false"])
    assert code == 0, err
    first = run / "predictions-all.pt"
    assert out.strip().splitlines()[-1] == str(first) and _training_rows(run) == rows
    before = torch.load(first, weights_only=True)

    code, out, err = _main(["test", "--ckpt_path", str(run / "checkpoints" / "bset.ckpt"), "--wandb", "false"])
    assert code == 2 and _training_rows(run) == rows
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bset.ckpt' does not exist" in lines[0], lines

    for nodes, name in (("test", "predictions-test.pt"), ("all", "predictions-all-2.pt")):
        code, out, err = _main(["predict", "--ckpt_path", ckpt, "--data.predict_nodes", nodes, "--wandb", "false"])
        assert code == 0, err
        assert out.strip().splitlines()[-1] == str(run / name)
    after = torch.load(first, weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the earlier prediction is kept
    assert _training_rows(run) == rows

    dense = tmp_path / "dense"
    assert _main(["fit", "--config", DEBUG, "--run_dir", str(dense), "--wandb", "false", "--model.thr_a", "0",
                  "--model.thr_w", "0"])[0] == 0
    code, out, err = _main(["report", str(run), "--baseline", str(dense)])
    assert code == 0, err
    drawn = out.split()
    assert str(run / "report" / "accuracy.png") in drawn
    assert all(os.path.getsize(p) > 10_000 for p in drawn)
    assert _training_rows(run) == rows


def test_a_missing_checkpoint_is_said_as_such_and_makes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for sub in ("test", "predict", "validate"):
        code, out, err = _main([sub, "--ckpt_path", "runs/nope/checkpoints/missing.ckpt"])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (sub, err)
        assert "checkpoint 'runs/nope/checkpoints/missing.ckpt' does not exist" in lines[0]
        assert "download" not in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,said", [
    (["--model.heads", "4"], "heads=4 does not apply to conv 'sage' (only to gat)"),
    (["--model.gcnii_alpha", "0.3"], "gcnii_alpha=0.3 does not apply to conv 'sage' (only to gcnii)"),
    (["--model.conv", "gcn", "--model.gcnii_theta", "1.0"], "gcnii_theta=1.0 does not apply to conv 'gcn'"),
])
def test_an_option_of_another_conv_is_refused(tmp_path, args, said):
    run = tmp_path / "run"
    code, out, err = _main(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false", *args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and said in lines[0], err
    assert not run.exists()


def test_an_options_own_conv_takes_it(tmp_path):
    code, out, err = _main(["fit", "--config", DEBUG, "--run_dir", str(tmp_path / "run"), "--wandb", "false",
                            "--model.conv", "gat", "--model.heads", "2", "--trainer.max_epochs", "1",
                            "--trainer.limit_train_batches", "1"])
    assert code == 0, err


@pytest.mark.parametrize("given,steps", [
    (["--trainer.limit_train_batches", "1"], 2),      # one batch an epoch, 2 epochs
    (["--trainer.limit_train_batches", "2"], 4),
    (["--trainer.limit_train_batches", "1.0"], None),  # every batch
    (["--config", "{limit1}"], 2),                     # a YAML 1 is one batch too
])
def test_an_integer_batch_limit_is_that_many_batches(tmp_path, given, steps):
    """Lightning types limit_*_batches Union[float, int]: through LightningCLI the 1 a user
    typed became 1.0, 100% of the batches."""
    limit1 = tmp_path / "limit1.yaml"
    limit1.write_text("trainer:\n  limit_train_batches: 1\n  limit_val_batches: 1\n")
    given = [a.format(limit1=limit1) for a in given]
    run = tmp_path / "run"
    code, out, err = _main(["fit", "--config", DEBUG, "--trainer.limit_train_batches", "1.0", *given,
                            "--run_dir", str(run), "--wandb", "false"])
    assert code == 0, err
    s = json.loads((run / "summary.json").read_text())
    if steps is None:
        from unifews_dist.data import UnifewsDataModule
        n = UnifewsDataModule(name="synthetic-tiny", num_neighbors=[5, 5], batch_size=64).load().train_idx.numel()
        steps = 2 * -(-n // 64)
        assert steps > 4
    assert s["global_step"] == steps


def test_the_last_line_names_what_training_and_test_pruned(tmp_path):
    run = tmp_path / "run"
    proc = _run(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false",
                 "--model.lock_target_edges", "eval"], tmp_path)
    s = _summary(proc)
    line = proc.stdout.strip().splitlines()[-2]
    t = s["last_train_epoch"]
    assert s["test_seed_edges_kept"] is True
    assert f"training: edges pruned {t['edge_sparsity']:.1%}, weights pruned {t['weight_sparsity']:.1%}" in line
    assert f"test (seed in-edges kept): edges pruned {s['edge_sparsity']:.1%}" in line, line
    assert t["edge_sparsity"] > s["edge_sparsity"]  # the seeds' in-edges are kept at test only


def test_help_lists_every_subcommand_and_explains_the_methods_options():
    code, out, _ = _main(["--help"])
    assert code == 0
    assert re.search(r"usage: unifews-dist .*\{fit,validate,test,predict,prepare,report,sweep-table\}", out)
    code, out, _ = _main(["fit", "--help"])
    assert code == 0
    for key, words in (("thr_a", "edge threshold"), ("thr_w", "weight threshold"), ("conv", "layer type"),
                       ("heads", "attention heads"), ("lock_target_edges", "seed nodes")):
        block = out[out.index(f"\n  --model.{key} "):]
        block = block[:block.index("\n  --", 1)]
        assert words in " ".join(block.split()), (key, block)


@pytest.mark.slow
def test_two_devices_without_a_launcher_train_in_one_run_directory(tmp_path):
    """``fit --trainer.devices 2`` on CPU, strategy left to Lightning (it starts the second rank
    by running the command again): both ranks find the run directory the first one chose."""
    proc = _run(["fit", "--config", DEBUG, "--trainer.devices", "2", "--wandb", "false"], tmp_path)
    s = _summary(proc)
    assert s["world_size"] == 2
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_a_checkpoint_moved_out_of_its_run_asks_for_the_config(tmp_path, monkeypatch):
    """Without the run's config.yaml beside it, a checkpoint does not say which data it was trained
    on: one line asking for --config, nothing made, nothing downloaded; with --config it is tested."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert _main(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false"])[0] == 0
    moved = tmp_path / "moved.ckpt"
    os.replace(run / "checkpoints" / "last.ckpt", moved)
    before = sorted(os.listdir(tmp_path))
    for sub in ("test", "predict", "validate"):
        code, out, err = _main([sub, "--ckpt_path", str(moved)])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (sub, err)
        assert "is not in a run directory" in lines[0] and "--config RUN_DIR/config.yaml" in lines[0]
        assert "download" not in lines[0]
    assert sorted(os.listdir(tmp_path)) == before
    code, out, err = _main(["test", "--ckpt_path", str(moved), "--config", str(run / "config.yaml"),
                            "--run_dir", str(tmp_path / "tested"), "--wandb", "false"])
    assert code == 0, err


@pytest.mark.parametrize("key", ["max_epochs", "max_steps"])
def test_a_fit_that_trains_nothing_is_refused(tmp_path, key):
    run = tmp_path / "run"
    code, out, err = _main(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false",
                            f"--trainer.{key}", "0"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"trainer.{key}=0 trains nothing" in lines[0], err
    assert not run.exists()


def test_a_test_of_a_checkpoint_logs_at_the_runs_last_step(tmp_path, monkeypatch):
    """Its trainer starts at step 0, but its row joins the run's history where fit's test row
    sits (the run's last step and epoch): metrics.csv's steps never go back."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert _main(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false"])[0] == 0
    with open(run / "metrics.csv", newline="") as f:
        before = list(csv.DictReader(f))
    fit_test = [r for r in before if r.get("test/acc")][-1]
    assert _main(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--wandb", "false"])[0] == 0
    with open(run / "metrics.csv", newline="") as f:
        after = list(csv.DictReader(f))
    new = after[len(before):]
    assert new and all(r["step"] == fit_test["step"] for r in new), new
    assert [r["epoch"] for r in new if r.get("test/acc")] == [fit_test["epoch"]]
    steps = [float(r["step"]) for r in after]
    assert steps == sorted(steps)
