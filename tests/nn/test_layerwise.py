"""Layer-wise full-graph inference: each layer over every node in batches of targets, pruned by
its rule over the whole graph, memory bounded by the batch."""
import pytest
import torch

from unifews_dist.nn import UnifewsGNN
from conftest import random_graph

N, F_IN = 60, 12
CONVS = ["gcn", "sage", "gat", "gin", "gcnii"]


def _model(conv, thr_a=0.0, thr_w=0.0, lock="never"):
    torch.manual_seed(0)
    m = UnifewsGNN(conv, F_IN, 16, 4, num_layers=3, thr_a=thr_a, thr_w=thr_w, heads=2, norm="batch",
                   lock_target_edges=lock, weight_backend="dense")
    x, ei = torch.randn(N, F_IN), random_graph(N, 400)
    m.train()
    m(x, ei)  # weight masks from a training forward, BatchNorm statistics moved
    return m.eval(), x, ei


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("thr", [0.0, 1.0])
def test_layerwise_equals_the_whole_graph_forward(conv, thr):
    """In batches of 7 targets (a few of every node's sources in each), the outputs of the forward
    over the whole graph at once: the same edges pruned at each layer (the mean over all of the
    layer's edges, pruned edges gone from later layers), the same weight masks."""
    m, x, ei = _model(conv, thr_a=0.3 if conv == "gat" else thr, thr_w=thr)
    with torch.no_grad():
        whole = m(x, ei)
        kept_whole = [int(s.edges_kept) for s in m.layer_stats]
    out = m.inference(x, ei, batch_size=7)
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-4)
    assert [s["kept"] for s in m.inference_stats] == kept_whole
    if thr > 0:
        assert kept_whole[-1] < kept_whole[0] and m.inference_stats[-1]["edges"] < m.inference_stats[0]["edges"]


@pytest.mark.parametrize("conv", ["sage", "gcn"])
def test_last_layer_keeps_the_outputs_edges_when_seeds_are_locked(conv):
    """As in a sampled evaluation, where every edge of the last layer goes into a seed: with
    locking (``eval``) the last layer prunes nothing, the earlier ones prune by their rule."""
    m, x, ei = _model(conv, thr_a=1.0, lock="eval")
    out = m.inference(x, ei, batch_size=16)
    m.lock_target_edges = "never"
    m.convs[-1].thr_a = 0.0
    with torch.no_grad():
        expect = m(x, ei)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-4)
    st = m.inference_stats
    assert st[-1]["kept"] == st[-1]["edges"] and st[0]["kept"] < st[0]["edges"]


def test_output_nodes_are_rows_of_the_full_result():
    m, x, ei = _model("sage", thr_a=1.0, thr_w=1.0)
    full = m.inference(x, ei, batch_size=9)
    nodes = torch.tensor([5, 0, 41, 17])
    torch.testing.assert_close(m.inference(x, ei, batch_size=3, output_nodes=nodes), full[nodes])


def test_needs_evaluation_mode_and_a_positive_batch():
    m, x, ei = _model("sage")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        m.inference(x, ei, batch_size=0)
    m.train()
    with pytest.raises(ValueError, match="evaluation mode"):
        m.inference(x, ei)
