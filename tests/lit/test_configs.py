"""Every shipped config parses, each per-model Planetoid config trains, the OGB configs run on a
tiny on-disk OGB dataset, and multi-label data trains with binary cross-entropy."""
import contextlib
import glob
import io
import os

import pytest
import torch

from cli_run import DEBUG, ROOT, run_cli as _run, read_summary as _summary

from ogb_tiny import write_tiny_ogb

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1", "--wandb", "false"]
ONE_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
           "--trainer.strategy", "auto", "--data.num_workers", "0", "--data.persistent_workers", "false",
           "--data.pin_memory", "false"]


def test_every_config_parses_to_its_declared_model_and_data(monkeypatch):
    from unifews_dist.cli import main
    monkeypatch.chdir(ROOT)
    assert len(CONFIGS) >= 12
    for path in CONFIGS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            main(["fit", "--config", path, "--print_config"])
        assert e.value.code in (0, None), path
        text = out.getvalue()
        assert "conv:" in text and "name:" in text and "num_neighbors:" in text, path


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "..", "shared", "data", "planetoid", "Cora", "raw")),
                    reason="../shared/data (real Cora, what the configs read) missing")
@pytest.mark.parametrize("model", ["gcn", "sage", "gat", "gin", "gcnii"])
def test_planetoid_model_config_trains_on_cora(model, tmp_path):
    cfg = os.path.join(ROOT, "configs", "planetoid", f"{model}.yaml")
    proc = _run(["fit", "--config", cfg, "--run_dir", str(tmp_path / "run"), *SHORT,
                 "--trainer.accelerator", "cpu"], cwd=ROOT)
    s = _summary(proc)
    assert "Cora" in proc.stdout + proc.stderr  # the run says where it read the data from
    assert 0 <= s["test_acc"] <= 1 and s["world_size"] == 1 and s["epochs"] == 1


@pytest.mark.parametrize("name", ["ogbn-arxiv", "ogbn-papers100m"])
def test_ogb_config_trains_on_tiny_on_disk_copy(name, tmp_path):
    write_tiny_ogb(tmp_path / "data", "ogbn-papers100M" if name == "ogbn-papers100m" else name, n=300, e=1500,
                   num_classes=172 if name == "ogbn-papers100m" else 40, binary=name == "ogbn-papers100m",
                   unlabelled=30 if name == "ogbn-papers100m" else 0)
    cfg = os.path.join(ROOT, "configs", f"{name}.yaml")
    proc = _run(["fit", "--config", cfg, "--run_dir", str(tmp_path / "run"), "--data.root", str(tmp_path / "data"),
                 "--data.batch_size", "32", "--data.eval_batch_size", "64", *SHORT, *ONE_CPU], cwd=ROOT)
    s = _summary(proc)
    assert 0 <= s["test_acc"] <= 1 and s["macs_sparse"] <= s["macs_dense"]


def test_multilabel_data_trains_with_bce(tmp_path):
    proc = _run(["fit", "--config", DEBUG, "--data.name", "synthetic-tiny-multilabel", "--run_dir",
                 str(tmp_path / "run"), "--wandb", "false", "--trainer.max_epochs", "3"], cwd=ROOT)
    s = _summary(proc)
    # 5 labels, ~36% positive: all-negative scores 0.64; learning the class label beats it
    assert s["test_acc"] > 0.7, s


def test_multilabel_loss_and_accuracy_are_per_class():
    from types import SimpleNamespace

    from unifews_dist.lit import UnifewsModule
    m = UnifewsModule(in_channels=4, out_channels=3, conv="sage", hidden_channels=8, norm="none", dropout=0.0,
                      multilabel=True)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.5]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    m.forward = lambda batch: logits
    m.log = lambda *a, **k: None
    loss = m._step(SimpleNamespace(y=y, batch_size=2), "train")
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
    assert float(m.accuracy["train_"].compute()) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match=r"multi-label targets must be \[nodes, 3\], got \(2,\)"):
        m._step(SimpleNamespace(y=torch.tensor([0, 1]), batch_size=2), "train")
