"""Full-graph (layer-wise) evaluation and ``predict`` through the CLI, and OGB's evaluator."""
import json
import os

import pytest
import torch

from close import assert_close
from cli_run import DEBUG, ROOT, run_cli as _run, read_summary as _summary
from unifews_dist.data import UnifewsDataModule
from unifews_dist.lit import UnifewsModule

FIT = ["--wandb", "false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    run = tmp / "run"
    _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(run), *FIT], tmp))
    return tmp, run, run / "checkpoints" / "last.ckpt"


def _expected(ckpt, nodes=None):
    """The checkpoint's model run layer-wise in this process, on the debug config's data."""
    module = UnifewsModule.load_from_checkpoint(str(ckpt), weights_only=True).eval()
    dm = UnifewsDataModule(name="synthetic-tiny", num_neighbors=[5, 5], batch_size=64)
    ds = dm.load()
    return module.model.inference(ds.data.x, ds.edge_index(), batch_size=64, output_nodes=nodes), dm


def test_predict_writes_every_nodes_layerwise_outputs(trained):
    tmp, run, ckpt = trained
    proc = _run(["predict", "--ckpt_path", str(ckpt)], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = proc.stdout.strip().splitlines()[-1]
    assert path == str(run / "predictions-all.pt")
    p = torch.load(path, weights_only=True)
    logits, dm = _expected(ckpt)
    n = dm.load().data.num_nodes
    assert torch.equal(p["node"], torch.arange(n)) and p["logits"].shape == (n, 5)
    assert_close(p["logits"], logits, rtol=1e-5)  # float32, two rank layouts: relative to the scale
    assert torch.equal(p["pred"], p["logits"].argmax(-1))


def test_predict_a_split_on_two_ranks_equals_one_process(trained):
    tmp, run, ckpt = trained
    every = run / "predictions-all.pt"
    one = torch.load(every, weights_only=True) if every.exists() else None
    proc = _run(["predict", "--ckpt_path", str(ckpt), "--data.predict_nodes", "test", "--trainer.devices", "2",
                 "--trainer.strategy", "ddp_fork"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = torch.load(run / "predictions-test.pt", weights_only=True)
    test_nodes = UnifewsDataModule(name="synthetic-tiny").load().test_idx
    logits, _ = _expected(ckpt, test_nodes)
    assert torch.equal(p["node"], test_nodes)  # in the split's order, gathered from both ranks
    assert_close(p["logits"], logits, rtol=1e-5)  # float32, two rank layouts: relative to the scale
    if one is not None:  # (every node predicted: every node's in-edges locked, so not these)
        assert not torch.allclose(p["logits"], one["logits"][test_nodes], atol=1e-4)


def test_lock_scope_reaches_the_inference(trained):
    """``model.lock_scope``: the module's whole-graph forward locks as it says."""
    from torch_geometric.data import Data
    _, _, ckpt = trained
    ds = UnifewsDataModule(name="synthetic-tiny").load()
    nodes = ds.test_idx
    batch = Data(x=ds.data.x, edge_index=ds.edge_index(), nodes=nodes, layerwise=True, infer_batch_size=64)
    out = {}
    for scope in ("outputs", "each"):
        module = UnifewsModule.load_from_checkpoint(str(ckpt), weights_only=True, lock_scope=scope).eval()
        assert module.model.lock_target_edges != "never"
        out[scope] = module(batch)
        expect = module.model.inference(ds.data.x, ds.edge_index(), batch_size=64, output_nodes=nodes,
                                        lock_scope=scope)
        assert_close(out[scope], expect, rtol=1e-5)
    assert not torch.allclose(out["outputs"], out["each"], atol=1e-4)


def test_layerwise_test_scores_the_predictions(trained):
    """``--data.eval_mode layerwise``: the test accuracy is that of the layer-wise predictions of
    every test node, and the summary says which mode produced it."""
    tmp, run, ckpt = trained
    proc = _run(["test", "--ckpt_path", str(ckpt), "--data.eval_mode", "layerwise"], tmp)
    s = _summary(proc)["tests"][-1]
    assert s["eval_mode"] == "layerwise"
    test_nodes = UnifewsDataModule(name="synthetic-tiny").load().test_idx
    logits, dm = _expected(ckpt, test_nodes)
    y = dm.load().data.y[test_nodes]
    assert s["test_acc"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()), abs=1e-6)
    assert 0 < s["edge_sparsity"] < 1 and s["macs_sparse"] < s["macs_dense"]
    sampled = _summary(_run(["test", "--ckpt_path", str(ckpt)], tmp))["tests"][-1]
    assert sampled["eval_mode"] == "sampled"


@pytest.mark.parametrize("args, message", [
    (["predict", "--config", DEBUG, "--wandb", "false"], "predict needs a trained model: --ckpt_path"),
    (["fit", "--config", DEBUG, "--data.predict_nodes", "some"], "predict_nodes must be one of all, train, val, test"),
    (["fit", "--config", DEBUG, "--data.eval_mode", "whole"], "eval_mode"),
])
def test_bad_inference_input_is_one_line_exit_2(tmp_path, args, message):
    proc = _run(args + ["--run_dir", str(tmp_path / "run")], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("unifews-dist: error:")]
    assert len(err) == 1 and message in err[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_predict_nodes_file_of_bad_ids(trained, tmp_path):
    _, _, ckpt = trained
    torch.save(torch.tensor([3, 5, 999999]), tmp_path / "ids.pt")
    proc = _run(["predict", "--ckpt_path", str(ckpt), "--data.predict_nodes", str(tmp_path / "ids.pt")], tmp_path)
    assert proc.returncode == 2
    assert "1 node ids outside 0..1999, the first 999999" in proc.stderr


@pytest.mark.parametrize("mode", ["sampled", "layerwise"])
def test_ogb_datasets_report_the_official_evaluator(tmp_path, mode):
    """An OGB dataset's test also reports ogb's own Evaluator figure (``test_ogb_acc``), over all
    of the split's nodes gathered from every rank; for single-label accuracy it equals ours."""
    pytest.importorskip("ogb")
    from ogb_tiny import write_tiny_ogb
    write_tiny_ogb(tmp_path / "data", n=200, e=1200, num_classes=5)
    run = tmp_path / "run"
    s = _summary(_run(["fit", "--config", DEBUG, "--run_dir", str(run), "--wandb", "false", "--data.name", "ogbn-arxiv",
                       "--data.root", str(tmp_path / "data"), "--data.batch_size", "16",
                       "--data.eval_mode", mode, "--trainer.devices", "2", "--trainer.strategy", "ddp_fork",
                       "--trainer.limit_test_batches", "1.0"], tmp_path))
    assert s["eval_mode"] == mode
    assert s["test_ogb_acc"] == pytest.approx(s["test_acc"], abs=1e-6)
    rows = json.load(open(run / "summary.json"))
    assert "test_ogb_acc" in rows


CORA = os.path.join(ROOT, "..", "shared", "data", "planetoid", "Cora", "raw")


@pytest.mark.skipif(not os.path.isdir(CORA), reason="real Cora not on disk")
def test_quickstart_shows_the_method_and_layerwise_agrees(tmp_path, monkeypatch):
    """Issue #37: the quick start prunes >= 90% of the edges and >= 90% of the weight entries in
    training, at <= 0.10x the dense MACs, and its test accuracy is within 1 point of
    the dense run of the same config (README's dense command). Issue #22 item 5: tested
    layer-wise (the test nodes' in-edges locked together, the rule's mean over the whole graph),
    it scores within 1 point of its sampled test."""
    import contextlib
    import io
    from unifews_dist.cli import main
    monkeypatch.chdir(ROOT)
    quick = os.path.join(ROOT, "configs", "quickstart.yaml")
    run, dense_run = tmp_path / "run", tmp_path / "dense"
    with contextlib.redirect_stdout(io.StringIO()):
        main(["fit", "--config", quick, "--run_dir", str(run), "--wandb", "false", "--trainer.enable_progress_bar",
              "false"])
        main(["fit", "--config", quick, "--model.thr_a", "0", "--model.thr_w", "0", "--run_dir", str(dense_run),
              "--wandb", "false", "--trainer.enable_progress_bar", "false"])
        s = json.loads((run / "summary.json").read_text())
        main(["test", "--ckpt_path", s["tested_checkpoint"], "--data.eval_mode", "layerwise",
              "--trainer.enable_progress_bar", "false"])
    dense = json.loads((dense_run / "summary.json").read_text())
    trained = s["last_train_epoch"]
    assert trained["edge_sparsity"] >= 0.90 and trained["weight_sparsity"] >= 0.90, trained
    assert trained["macs_sparse"] <= 0.10 * trained["macs_dense"], trained
    assert s["weight_sparsity"] >= 0.90 and s["test_seed_edges_kept"]  # the tested checkpoint is the sparse one
    assert dense["edge_sparsity"] == 0 and dense["weight_sparsity"] == 0
    # one seed: Cora's test accuracy moves ~1 point from seed to seed, so this is a smoke alarm;
    # the claim (3 seeds, within 1 point) is measured by `unifews-dist compare` (BENCHMARKS.md)
    assert s["test_acc"] >= dense["test_acc"] - 0.015, (s["test_acc"], dense["test_acc"])
    lw = json.loads((run / "summary.json").read_text())["tests"][-1]
    assert s["eval_mode"] == "sampled" and lw["eval_mode"] == "layerwise"
    assert lw["edge_sparsity"] > 0.2 and lw["weight_sparsity"] >= 0.90
    assert abs(lw["test_acc"] - s["test_acc"]) <= 0.01, (s["test_acc"], lw["test_acc"])


def test_one_name_per_option_python_and_command_line():
    """The model option and the inference argument it reaches have one name."""
    import inspect
    from unifews_dist.nn import UnifewsGNN
    assert "lock_scope" in inspect.signature(UnifewsModule.__init__).parameters
    assert "lock_scope" in inspect.signature(UnifewsGNN.inference).parameters
