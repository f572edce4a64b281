"""How a command starts, talks and ends: one last line naming what it wrote, one line for a bad
value or a set-up error (said once under a launcher), Ctrl-C with a resume hint, no library
advice, no temporaries left, and README's and docs' Python blocks running as written."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys

import pytest

from cli_run import DEBUG, ROOT, cli_env as _env, read_summary as _summary

SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1"]
CORA = os.path.join(ROOT, "..", "shared", "data", "planetoid", "Cora", "raw")


def _cli(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "unifews_dist", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=_ctrl_c_reaches_it)


def _ctrl_c_reaches_it():
    """In the child, before it starts: SIGINT's default disposition, as at a terminal. A test
    runner started in the background (``cmd &`` in a script, some CI runners) ignores SIGINT, and
    its children inherit that: Python then installs no Ctrl-C handler and a Ctrl-C test sees none."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_summary_path_is_the_last_stdout_line_with_wandb_talking(tmp_path):
    env = _env()
    env.pop("WANDB_SILENT", None)  # W&B prints its closing lines when its run ends
    proc = _cli(["fit", "--config", DEBUG, "--run_dir", str(tmp_path / "run"), *SHORT], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "run" / "summary.json")


def test_test_with_only_a_checkpoint_reports_into_its_run(tmp_path):
    run = tmp_path / "run"
    _summary(_cli(["fit", "--config", DEBUG, "--run_dir", str(run), *SHORT, "--wandb", "false"], ROOT))
    config = (run / "config.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _cli(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")], elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(run / "summary.json") and "edges pruned" in lines[-2] and "weights pruned" in lines[-2]
    s = json.loads((run / "summary.json").read_text())
    t = s["tests"][-1]
    assert t["checkpoint"] == str(run / "checkpoints" / "last.ckpt") and 0 <= t["test_acc"] <= 1
    assert 0 < t["weight_sparsity"] < 1 and t["macs_sparse"] < t["macs_dense"]
    assert (run / "config.yaml").read_text() == config  # the run's config is not overwritten
    assert not list(elsewhere.iterdir())  # no new run directory


def test_help_names_every_command(capsys):
    from unifews_dist.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "report RUN_DIR" in out and "sweep-table" in out
    assert "{fit,validate,test,predict,prepare,report,sweep-table}" in out
    assert "predict --ckpt_path F" in out


@pytest.mark.skipif(not os.path.isdir(CORA), reason="real Cora not on disk")
def test_the_documented_dense_baseline_prunes_nothing(tmp_path, monkeypatch):
    """README: --model.thr_a 0 --model.thr_w 0 is the dense baseline, from the command line or a
    config file alike (the schedule ramps to the model's thresholds)."""
    from unifews_dist.cli import main
    monkeypatch.chdir(ROOT)
    zero = tmp_path / "zero.yaml"
    zero.write_text("model:\n  thr_a: 0.0\n  thr_w: 0.0\n")
    quick = os.path.join(ROOT, "configs", "quickstart.yaml")
    for i, extra in enumerate((["--model.thr_a", "0", "--model.thr_w", "0"], ["--config", str(zero)])):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["fit", "--config", quick, *extra, "--run_dir", str(tmp_path / f"run{i}"), "--wandb", "false",
                  "--trainer.max_epochs", "12", "--trainer.enable_progress_bar", "false"])
        s = json.loads((tmp_path / f"run{i}" / "summary.json").read_text())
        assert s["edge_sparsity"] == 0 and s["weight_sparsity"] == 0, s
        assert s["last_train_epoch"]["edge_sparsity"] == 0 and s["last_train_epoch"]["weight_sparsity"] == 0


def test_thresholds_set_in_a_config_file_count_like_typed_ones(tmp_path):
    """A test of a checkpoint runs at the checkpoint's thresholds unless the user set others, on
    the command line or in a config file of theirs alike (not the run's own config.yaml)."""
    run = tmp_path / "run"
    _summary(_cli(["fit", "--config", DEBUG, "--run_dir", str(run), *SHORT, "--wandb", "false",
                   "--model.thr_a", "0.7"], ROOT))
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  thr_a: 3.0\n")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = {}
    for name, extra in (("own", []), ("file", ["--config", str(mine)]), ("typed", ["--model.thr_a", "2.0"])):
        proc = _cli(
            [
                "test",
                "--ckpt_path",
                ckpt,
                *extra,
                "--wandb",
                "false",
                "--trainer.callbacks+=rank_check.RankCheck",
                f"--trainer.callbacks.out={tmp_path / name}.json",
                "--trainer.callbacks.stage=test",
            ],
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())["thr"][:2]
    assert out == {"own": [0.7, 0.7], "file": [3.0, 3.0], "typed": [2.0, 2.0]}


@pytest.mark.parametrize(
    "args,said",
    [
        (["--data.batch_size", "0"], "data.batch_size must be >= 1, got 0"),
        (["--model.optimizer", "sgd"], r"model.optimizer.*'adam', 'adamw'.*sgd"),
    ],
)
def test_a_bad_value_is_one_line_exit_2_and_leaves_no_run_directory(tmp_path, capsys, args, said):
    from unifews_dist.cli import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    import re

    assert len(err) == 1 and re.search(said, err[0]), err
    assert not run.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,said,launcher",
    [
        (["--model.thr_a", "-1"], "thr_a must be a finite number >= 0, got -1", "torchrun"),  # found while parsing
        (
            ["--data.name", "cora", "--data.root", "{tmp}/no/root"],
            "could not be downloaded",
            "torchrun",
        ),  # loading data
        (["--model.thr_a", "-1"], "thr_a must be a finite number >= 0, got -1", "fork"),  # ranks forked by the launcher
    ],
)
def test_a_setup_error_under_torchrun_is_said_once_and_leaves_nothing(tmp_path, args, said, launcher):
    """Every rank fails alike; the one line is said by rank 0 only (the others wait for it
    before they exit, or torchrun would stop rank 0 first); the run and data folders the ranks
    made are removed. Forked ranks know their rank before the Trainer exists too."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    run = (
        ["-m", "unifews_dist.launch", "--standalone", "--nproc_per_node=2"]
        if launcher == "fork"
        else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "unifews_dist"]
    )
    proc = subprocess.run(
        [
            sys.executable,
            *run,
            "fit",
            "--config",
            DEBUG,
            "--run_dir",
            str(tmp_path / "run"),
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            *args,
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if "unifews-dist: error:" in line]
    assert proc.returncode != 0 and len(lines) == 1 and said in lines[0], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr  # the rank that ended first ended with the bad-input code
    left = [os.path.join(d, f) for d, ds, fs in os.walk(tmp_path) for f in fs + ds]
    assert not left, (left, proc.stderr[-3000:])


def test_ranks_on_a_node_take_a_dataset_folder_one_at_a_time(tmp_path):
    """dataset_lock: every rank reads the dataset while the config is resolved, before
    Lightning's prepare_data; a second process waits while one downloads or processes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    log = tmp_path / "log"
    procs = [ctx.Process(target=_hold_lock, args=(str(tmp_path / "Cora"), str(log), name)) for name in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    events = log.read_text().split()
    assert sorted(events) == ["a+", "a-", "b+", "b-"] and events[0][0] == events[1][0], events  # never interleaved


def _hold_lock(folder, log, name):
    import time
    from unifews_dist.data.storage import dataset_lock

    with dataset_lock(folder):
        with open(log, "a") as f:
            f.write(f"{name}+\n")
        time.sleep(0.5)
        with open(log, "a") as f:
            f.write(f"{name}-\n")


@pytest.mark.slow
def test_a_setup_error_in_ranks_lightning_started_is_said_once(tmp_path):
    """Item 7's command shape: ``--trainer.devices 3 --trainer.strategy ddp`` from a plain
    process (Lightning starts the other ranks); an error every rank meets after the launch."""
    proc = _cli(
        [
            "fit",
            "--config",
            DEBUG,
            "--run_dir",
            str(tmp_path / "run"),
            "--trainer.devices",
            "3",
            "--trainer.strategy",
            "ddp",
            "--data.random_split",
            "[0.001, 0.1]",
        ],
        tmp_path,
    )
    lines = [line for line in proc.stderr.splitlines() if "unifews-dist: error:" in line]
    assert proc.returncode == 2 and len(lines) == 1 and "fewer than the 3 ranks" in lines[0], proc.stderr[-3000:]
    assert os.listdir(tmp_path) == []


def _immutable(path, on):
    """A folder even root cannot write into (chattr +i), or False where the file system says no."""
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["under_a_file", "read_only"])
def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path, capsys, kind):
    """Issue 'Nothing lost' item 8: was a traceback (rc 1), with W&B writing to /tmp/wandb."""
    from unifews_dist.cli import main

    if kind == "under_a_file":
        (tmp_path / "file").write_text("x")
        run = tmp_path / "file" / "run"
    else:
        run = tmp_path / "run"
        run.mkdir()
        if not _immutable(run, True):
            pytest.skip("chattr +i is not supported here")
    try:
        with pytest.raises(SystemExit) as e:
            main(["fit", "--config", DEBUG, "--run_dir", str(run), *SHORT])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert f"run directory '{run}' cannot be written" in err[0], err
        if kind == "read_only":
            assert os.listdir(run) == []
    finally:
        if kind == "read_only":
            _immutable(run, False)


def _python_block(path, heading):
    import re
    text = open(os.path.join(ROOT, path)).read()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{path}#{heading}", "exec"), {})
    return out.getvalue().splitlines()


def test_readme_and_docs_python_blocks_run_as_written():
    """README's Python block and docs/method.md's "Layers" block, run as a user pastes them."""
    import re
    lines = _python_block("README.md", "## Using it")
    assert len(lines) == 1 and re.fullmatch(r"\['\d+%', '\d+%'\]", lines[0]), lines
    lines = _python_block(os.path.join("docs", "method.md"), "## Layers")
    assert re.fullmatch(r"\d+ of \d+ edges aggregated", lines[0]), lines
    assert len(lines) == 4 and lines[2].startswith("0 edges") and lines[3].startswith("1 edges")


def _err_lines(proc):
    return [line for line in proc.stderr.strip().splitlines() if line.strip()]


def test_ctrl_c_in_training_says_how_to_resume_and_the_same_command_does(tmp_path):
    run = tmp_path / "run"
    args = ["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false"]
    proc = _cli([*args, "--trainer.callbacks+=killer.InterruptAt", "--trainer.callbacks.epoch=1"], tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = _err_lines(proc)[-1]
    assert last == (f"unifews-dist: interrupted; {run} holds checkpoint last.ckpt: the same command with "
                    f"--run_dir {run} resumes from it"), proc.stderr[-2000:]
    again = _cli(args, tmp_path)
    assert "Resuming from" in again.stdout + again.stderr
    assert _summary(again)["epochs"] == 2


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """SIGINT while torch and Lightning are imported: one line, no traceback, nothing made."""
    import time
    proc = subprocess.Popen([sys.executable, "-m", "unifews_dist", "fit", "--config", DEBUG, "--run_dir",
                             str(tmp_path / "run")], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_reaches_it)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, err[-2000:]
    assert "interrupted" in lines[0] and "nothing to resume" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not os.path.isdir(CORA), reason="real Cora not on disk")
def test_quickstart_test_and_predict_of_its_checkpoint_warn_nothing(tmp_path):
    run = tmp_path / "run"
    fit = _cli(["fit", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"), "--run_dir", str(run),
                "--wandb", "false", *SHORT], tmp_path)
    _summary(fit)
    for sub in ("test", "predict"):
        proc = _cli([sub, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--wandb", "false"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "differs" not in proc.stdout + proc.stderr, (sub, proc.stderr[-2000:])


def test_predictions_path_is_the_last_stdout_line_with_wandb_talking(tmp_path):
    env = _env()
    env.pop("WANDB_SILENT", None)  # W&B prints its closing lines when its run ends
    run = tmp_path / "run"
    _summary(_cli(["fit", "--config", DEBUG, "--run_dir", str(run), *SHORT], tmp_path, env))
    proc = _cli(["predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(run / "predictions-all.pt"), proc.stdout[-2000:]


def test_a_run_prints_no_library_advice_and_leaves_no_temporaries(tmp_path):
    """No srun hint (SLURM installed, no job), litlogger tip or W&B 'anonymous' warning; the
    generated modules of each command go with it, and a killed command's are removed by the next."""
    import shutil
    import socket
    env = _env()
    env.pop("WANDB_SILENT", None)
    if shutil.which("srun") is None:  # Lightning's hint needs srun on the PATH: give it one
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
        (fake / "srun").chmod(0o755)
        env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    run = tmp_path / "run"
    stale = run / "tmp" / f"{socket.gethostname()}-999999999"  # a pid no process has
    stale.mkdir(parents=True)
    (stale / "module.py").write_text("")
    fit = _cli(["fit", "--config", DEBUG, "--run_dir", str(run), *SHORT], tmp_path, env)
    _summary(fit)
    test = _cli(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")], tmp_path, env)
    assert test.returncode == 0, test.stderr[-2000:]
    for proc in (fit, test):
        said = proc.stdout + proc.stderr
        for advice in ("srun", "litlogger", "anonymous", "LeafSpec", "multiple `ModelCheckpoint`"):
            assert advice not in said, (advice, said[-3000:])
    assert not list((run / "tmp").iterdir())
