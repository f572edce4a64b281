"""Host work of the stack's forward, counted exactly (op_counter.py): on a GPU every op is a
kernel launch and every sync stalls the host, so these counts are the step time there."""
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.sampler import NodeSamplerInput

from close import assert_close, assert_grads_close
from op_counter import OpCounter
from unifews_dist.data.sampler import TorchNeighborSampler
from unifews_dist.nn import UnifewsGNN
from conftest import random_graph

LAYERS = 3


def _block(seed=0):
    """A 3-hop sampled block, as the loader hands it to the model."""
    n = 400
    data = Data(edge_index=random_graph(n, 6000, seed), num_nodes=n)
    out = TorchNeighborSampler(data, [8, 6, 4], seed=seed).sample_from_nodes(
        NodeSamplerInput(input_id=torch.arange(32), node=torch.randperm(n)[:32]))
    x = torch.randn(out.node.numel(), 16)
    return x, torch.stack([out.row, out.col]), out.num_sampled_nodes, out.num_sampled_edges


def _syncs_by_op(model, x, ei, hops, edges):
    with OpCounter() as c:
        model(x, ei, num_sampled_nodes=hops, batch_size=32, num_sampled_edges=edges)
    return {name.split(":")[-1]: n for name, n in c.sync_ops.items()}


def _count(model, x, ei, hops, edges):
    with OpCounter() as c:
        out = model(x, ei, num_sampled_nodes=hops, batch_size=32, num_sampled_edges=edges)
    return out, c.counts()


@pytest.mark.parametrize("conv", ["sage", "gin", "gcn", "gcnii", "gat"])
def test_dense_forward_reads_nothing_from_the_device(conv):
    torch.manual_seed(0)
    model = UnifewsGNN(conv, 16, 32, 5, num_layers=LAYERS, weight_backend="dense")
    x, ei, hops, edges = _block()
    out, c = _count(model, x, ei, hops, edges)
    assert out.shape == (32, 5)
    assert c["syncs"] == 0, c
    # the figures the monitors log are still there, on the device, for one read later
    assert [s.edges_kept for s in model.layer_stats] == [s.edges_dense for s in model.layer_stats]
    # the graph's sampled edges, for every conv alike: the self-loops GCN, GCNII and GATv2 add (a
    # node's own term, never pruned) are not counted as edges (they are in the MACs)
    assert model.layer_stats[0].edges_dense == sum(edges)
    loops = sum(hops[:LAYERS]) if conv in ("gcn", "gcnii", "gat") else 0  # a self-loop per target
    assert model.layer_stats[0].own_loops == loops
    assert all(s.macs_sparse == s.macs_dense for s in model.layer_stats)  # loops computed: in both MACs


@pytest.mark.parametrize("conv", ["sage", "gin", "gcn", "gcnii", "gat"])
@pytest.mark.parametrize("thr_a, lock", [(0.0, "never"), (1.0, "never"), (1.0, "always"), (1.5, "always")])
def test_hop_ordered_block_computes_what_the_masked_one_does(conv, thr_a, lock, float64):
    """Given the sampler's per-hop edge counts, each layer takes its edges as a prefix, the
    seeds' edges are locked as a prefix and the counts come in one read per layer (GCN's
    self-loops follow each hop's edges for this); without them, layers find their edges with
    masks. The seeds' outputs, every gradient and the edge counts are the same (GATv2's
    attention, normalised over each layer's edges, too). In float64, relative to the scale: the
    two paths sum in different orders, and the hidden convs' bias gradients behind batch norm
    are analytically zero (rounding noise that an absolute tolerance failed on another CPU)."""
    x, ei, hops, edges = _block()
    x = x.double()
    thr_a = thr_a * 0.3 if conv == "gat" else thr_a  # attention ~ 1 / degree: GATv2's thresholds live in [0, 1)

    def run(counts):
        torch.manual_seed(0)
        model = UnifewsGNN(conv, 16, 32, 5, num_layers=LAYERS, thr_a=thr_a, dropout=0.0, weight_backend="dense",
                           lock_target_edges=lock)
        out = model(x, ei, num_sampled_nodes=hops, batch_size=32, num_sampled_edges=counts)
        out.square().sum().backward()
        kept = [int(s.edges_kept) for s in model.layer_stats]
        return out, {n: p.grad for n, p in model.named_parameters()}, kept, [s.macs_sparse for s in model.layer_stats]

    out_p, grads_p, kept_p, macs_p = run(edges)
    out_m, grads_m, kept_m, macs_m = run(None)
    assert out_p.dtype == torch.float64
    assert_close(out_p, out_m, name="output")
    assert_grads_close(grads_p, grads_m)
    assert kept_p == kept_m and macs_p == macs_m
    assert thr_a == 0 or kept_p[-1] < kept_p[0]


def test_sparse_forward_reads_the_device_once_per_layer():
    torch.manual_seed(0)
    model = UnifewsGNN("sage", 16, 32, 5, num_layers=LAYERS, thr_a=1.0, thr_w=1.0, weight_backend="dense",
                       lock_target_edges="eval")
    x, ei, hops, edges = _block()
    model(x, ei, num_sampled_nodes=hops, batch_size=32, num_sampled_edges=edges)  # masks made
    for lin in model.weight_layers():
        lin.mask_mode = "keep"
    out, c = _count(model, x, ei, hops, edges)
    stats = model.layer_stats
    assert stats[-1].edge_sparsity > 0.3 and stats[0].weight_sparsity > 0.3  # it did prune
    # each layer's counts in one read (kept edges and rows then found by nonzero_static);
    # the last layer has no rows to find: one nonzero
    assert c["syncs"] <= LAYERS, c
    assert _syncs_by_op(model, x, ei, hops, edges) == {"tolist": LAYERS - 1, "nonzero": 1}
    with OpCounter() as c2:
        F.cross_entropy(out, torch.zeros(32, dtype=torch.long)).backward()
    assert c2.counts()["syncs"] == 0


def test_statistics_pack_into_one_tensor_without_a_read():
    torch.manual_seed(0)
    model = UnifewsGNN("sage", 16, 32, 5, num_layers=LAYERS, thr_a=1.0, thr_w=1.0, weight_backend="dense")
    x, ei, hops, edges = _block()
    model(x, ei, num_sampled_nodes=hops, batch_size=32, num_sampled_edges=edges)
    with OpCounter() as c:
        t = model.stats_tensor()
    assert c.counts()["syncs"] == 0 and c.counts()["ops"] <= 6
    from unifews_dist.nn.stats import FIELDS
    expect = [float(getattr(s, f)) for s in model.layer_stats for f in FIELDS]
    assert t.tolist() == expect
