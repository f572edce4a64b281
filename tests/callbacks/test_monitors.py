import csv
import math

import pytest
from pytorch_lightning.loggers import CSVLogger

from unifews_dist.callbacks import SparsityMonitor, ThroughputMonitor, sparsity_metrics

from cb_helpers import make, trainer


def test_sparsity_metrics_from_counts():
    layers = [dict(edges_dense=100, edges_kept=40, weight_numel=50, weight_nnz=10, macs_dense=1000, macs_sparse=250),
              dict(edges_dense=60, edges_kept=12, weight_numel=50, weight_nnz=25, macs_dense=500, macs_sparse=250)]
    m = sparsity_metrics(layers)
    assert m["sparsity/edge/layer0"] == pytest.approx(0.6) and m["sparsity/edge/layer1"] == pytest.approx(0.8)
    assert m["sparsity/weight/layer0"] == pytest.approx(0.8) and m["sparsity/weight/layer1"] == pytest.approx(0.5)
    assert m["sparsity/edge/all"] == pytest.approx(1 - 52 / 160) and m["sparsity/weight/all"] == pytest.approx(0.65)
    assert m["macs/reduction"] == pytest.approx(3.0)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_monitors_log_every_step(tmp_path):
    model, dm = make(thr_a=1.0, thr_w=0.5, lock_target_edges="eval")
    sm, tm = SparsityMonitor(), ThroughputMonitor()
    logger = CSVLogger(str(tmp_path), name="", version="")
    trainer(tmp_path, [sm, tm], max_epochs=2, limit_train_batches=5, logger=logger, log_every_n_steps=1).fit(model, dm)
    rows = [r for r in _rows(tmp_path / "metrics.csv") if r.get("sparsity/edge/layer0")]
    assert len(rows) == 10
    for r in rows:
        vals = {k: float(v) for k, v in r.items() if v not in ("", None)}
        for k in ("sparsity/edge/layer0", "sparsity/edge/layer1", "sparsity/weight/layer0", "sparsity/weight/layer1"):
            assert 0 < vals[k] < 1, (k, vals[k])
        assert vals["sparsity/edge/layer1"] >= vals["sparsity/edge/layer0"]  # progressive
        assert vals["macs/reduction"] > 1 and vals["macs/sparse"] < vals["macs/dense"]
        for k in ("throughput/seeds_per_s", "throughput/edges_per_s", "throughput/kept_edges_per_s"):
            assert math.isfinite(vals[k]) and vals[k] > 0
        assert vals["throughput/kept_edges_per_s"] < 2 * vals["throughput/edges_per_s"]
        parts = sum(vals[f"time/{p}_s"] for p in ("data", "transfer", "forward", "backward"))
        assert vals["time/forward_s"] > 0 and vals["time/backward_s"] > 0 and vals["time/data_s"] > 0
        assert vals["time/transfer_s"] > 0  # timed between the data module's transfer hooks
        assert parts <= vals["time/step_s"] * 1.001 and parts >= 0.5 * vals["time/step_s"]
        seeds_per_step = vals["throughput/seeds_per_s"] * vals["time/step_s"]
        assert 1 <= seeds_per_step <= 64 * 1.001
        # the data side: the block's nodes and the feature rows gathered for it (those a layer reads)
        assert 64 < vals["data/rows_gathered"] <= vals["data/nodes_sampled"] == int(vals["data/nodes_sampled"])
    # epoch totals feed summary.json
    assert len(sm.epoch_layers) == 2 and sm.epoch_layers[0]["edges_dense"] > 0
    assert tm.epoch_totals["seeds"] == 5 * 64 and tm.epoch_totals["seconds"] > 0
    epoch_rows = [r for r in _rows(tmp_path / "metrics.csv") if r.get("sparsity/edge/all_epoch")]
    assert len(epoch_rows) == 2
    assert tm.epoch_totals["batches"] == 5 and tm.epoch_totals["rows_gathered"] > 5 * 64
    data_rows = [r for r in _rows(tmp_path / "metrics.csv") if r.get("data/rows_gathered_epoch")]
    last = [float(r["data/rows_gathered"]) for r in rows[5:]]  # the second epoch's batches
    assert sum(last) < 0.9 * sum(float(r["data/nodes_sampled"]) for r in rows[5:])  # pruned before the gather
    assert len(data_rows) == 2 and float(data_rows[1]["data/rows_gathered_epoch"]) == pytest.approx(sum(last) / 5)
    # the data module's transfer listener is let go after fit, and nothing of Lightning's was replaced
    assert dm.transfer_listener is None and "batch_to_device" not in vars(model.trainer.strategy)


@pytest.mark.parametrize("cls", [SparsityMonitor, ThroughputMonitor])
def test_bad_log_every(cls):
    with pytest.raises(ValueError, match="log_every_n_steps must be >= 1"):
        cls(log_every_n_steps=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_step_clock_times_with_events_on_every_device(device):
    """The clock's one path (events recorded at the marks, read after the last): CUDA events on a
    GPU, host events elsewhere; both measure the time between two marks."""
    import time

    import torch

    from unifews_dist.callbacks.throughput_monitor import HostEvent, _Clock

    clock = _Clock(torch.device(device))
    assert clock.event is (torch.cuda.Event if device == "cuda" else HostEvent)
    clock.mark("a")
    time.sleep(0.05)
    if device == "cuda":
        torch.cuda._sleep(10_000_000)  # (device work between the marks)
    clock.mark("b")
    assert 0.04 < clock.seconds("a", "b") < 5.0
    assert clock.seconds("a", "missing") == 0.0
