"""``unifews-dist compare``: a config against its dense run, on the same split and seed, seed by seed."""
import json
import os

import yaml

from cli_run import DEBUG, run_cli


def test_compare_trains_pairs_on_the_same_split_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "cmp"
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.limit_test_batches", "1"]
    args = ["compare", "--config", DEBUG, "--seeds", "2", "--out", str(out), *short]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out / "table.md")
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["seed"] for r in rows] == [0, 1]
    for seed in (0, 1):
        cfg = {k: yaml.safe_load((out / f"seed{seed}-{k}" / "config.yaml").read_text()) for k in ("dense", "unifews")}
        for c in cfg.values():  # the same seed and split for both
            assert c["seed_everything"] == seed and c["data"]["seed"] == seed and c["trainer"]["max_epochs"] == 1
        assert cfg["dense"]["model"]["thr_a"] == 0 and cfg["dense"]["model"]["thr_w"] == 0
        assert cfg["unifews"]["model"]["thr_a"] == 1.0
        s = {k: json.loads((out / f"seed{seed}-{k}" / "summary.json").read_text()) for k in ("dense", "unifews")}
        r = rows[seed]
        assert r["dense_test_acc"] == s["dense"]["test_acc"] and r["unifews_test_acc"] == s["unifews"]["test_acc"]
        assert r["diff"] == s["unifews"]["test_acc"] - s["dense"]["test_acc"]
        assert r["train_edge_sparsity"] == s["unifews"]["last_train_epoch"]["edge_sparsity"] > 0
        assert s["dense"]["last_train_epoch"]["edge_sparsity"] == 0
    table = (out / "table.md").read_text()
    assert table.count("\n") == 5 and "mean ± std" in table  # header, rule, 2 seeds, mean
    # run again: every run is finished, nothing trains, the same table
    stamps = {p: os.path.getmtime(p) for p in out.glob("*/summary.json")}
    again = run_cli(args, tmp_path)
    assert again.returncode == 0 and "+ " not in again.stdout
    assert {p: os.path.getmtime(p) for p in out.glob("*/summary.json")} == stamps
    assert (out / "table.md").read_text() == table
    # a variant against the same dense runs
    other = tmp_path / "variant"
    proc = run_cli(["compare", "--config", DEBUG, "--seeds", "2", "--out", str(other), "--baseline", str(out),
                    *short, "--model.thr_a", "2.0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(other.glob("*-dense")) and proc.stdout.count("+ ") == 2
    v = json.loads((other / "compare.json").read_text())["rows"]
    assert [r["dense_test_acc"] for r in v] == [r["dense_test_acc"] for r in rows]


def test_compare_refuses_bad_input_in_one_line(tmp_path):
    for args, said in ((["--config", "nope.yaml"], "config nope.yaml does not exist"),
                       (["--config", DEBUG, "--seeds", "0"], "--seeds must be >= 1, got 0"),
                       (["--config", DEBUG, "--baseline", str(tmp_path)], "has no finished dense run of seed 0")):
        proc = run_cli(["compare", *args, "--out", str(tmp_path / "o")], tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and said in lines[0], proc.stderr
