"""RUN_DIR/metrics.csv keeps a run's history across restarts, and a run's loggers are the CSV
file and, unless turned off, a W&B run whose id lives in the run directory."""
import csv
import os

from unifews_dist.loggers import RunCSVLogger, RunWandbLogger
from unifews_dist.loggers.run import run_loggers
from unifews_dist.run.start import RunStart


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def test_each_row_is_written_when_logged_and_new_keys_widen_the_file(tmp_path):
    log = RunCSVLogger(str(tmp_path))
    log.log_metrics({"train/loss": 1.5}, step=0)
    assert _rows(tmp_path) == [{"train/loss": "1.5", "step": "0"}]  # on disk at once, no flush step
    log.log_metrics({"train/loss": 1.25, "val/acc": 0.5}, step=10)
    assert _rows(tmp_path) == [{"train/loss": "1.5", "step": "0"},
                               {"train/loss": "1.25", "val/acc": "0.5", "step": "10"}]
    assert log.rows()[1] == {"train/loss": 1.25, "val/acc": 0.5, "step": 10}  # ints stay ints


def test_a_resumed_fit_keeps_the_rows_before_its_step_and_a_new_fit_none(tmp_path):
    log = RunCSVLogger(str(tmp_path))
    for s in (0, 10, 20, 30):
        log.log_metrics({"train/loss": float(s)}, step=s)
    RunCSVLogger(str(tmp_path), keep_before=20)  # resumed at logging step 20: 20 and 30 come again
    assert [r["step"] for r in _rows(tmp_path)] == ["0", "10"]
    RunCSVLogger(str(tmp_path), keep_before=0)  # a new fit in the same directory
    assert not os.path.exists(tmp_path / "metrics.csv")


def test_an_evaluation_adds_rows_at_the_runs_last_step_and_drops_none(tmp_path):
    log = RunCSVLogger(str(tmp_path))
    log.log_metrics({"train/loss": 1.0, "epoch": 3}, step=40)
    test = RunCSVLogger(str(tmp_path), keep_before=None)  # test / validate / predict of a checkpoint
    test.log_metrics({"test/acc": 0.8, "epoch": 0}, step=0)
    assert _rows(tmp_path)[-1] == {"test/acc": "0.8", "epoch": "3", "step": "40"}
    assert len(_rows(tmp_path)) == 2


def test_run_loggers_are_the_csv_file_and_the_runs_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_CACHE_DIR", raising=False)
    start = RunStart(run_dir=str(tmp_path / "run"), made=True)
    only_csv = run_loggers(start, "fit", False)
    assert [type(lg) for lg in only_csv] == [RunCSVLogger]
    both = run_loggers(start, "fit", {"project": "p", "tags": ["a"]})
    assert [type(lg) for lg in both] == [RunCSVLogger, RunWandbLogger]
    again = run_loggers(start, "test", {"project": "p"})  # the same run directory: the same W&B run
    assert both[1].version == again[1].version and len(both[1].version) == 8
    assert os.environ["WANDB_CACHE_DIR"].startswith(str(tmp_path / "run"))  # W&B's cache stays with the run
