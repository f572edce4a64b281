"""Each layer equals its PyG counterpart at zero thresholds, and follows the rule literally above."""
import pytest
import torch
from torch_geometric.nn import GATv2Conv, GCN2Conv, GCNConv, GINConv, SAGEConv

from close import assert_close, assert_same_forward_and_backward
from unifews_dist.nn import (LayerPlan, UnifewsGATv2Conv, UnifewsGCNConv, UnifewsGCNIIConv, UnifewsGINConv,
                             UnifewsSAGEConv)
from conftest import random_graph
from unifews_dist.nn.conv.base import UnifewsConv
from unifews_dist.nn.models.gnn import CONVS

# path-equivalence tests: float64, compared relative to the scale (close.py)
pytestmark = pytest.mark.usefixtures("float64")

N, F_IN, F_OUT = 30, 12, 8


def _pair(mine, ref, x, ei, call_mine, call_ref):
    assert_same_forward_and_backward(lambda x: call_mine(mine, x, ei), lambda x: call_ref(ref, x, ei), x)


def _layers():
    torch.manual_seed(0)
    gcn, pgcn = UnifewsGCNConv(F_IN, F_OUT), GCNConv(F_IN, F_OUT)
    pgcn.lin.weight.data.copy_(gcn.lin.weight)
    pgcn.bias.data.copy_(torch.randn(F_OUT))
    gcn.bias.data.copy_(pgcn.bias)
    sage, psage = UnifewsSAGEConv(F_IN, F_OUT), SAGEConv(F_IN, F_OUT)
    psage.lin_l.weight.data.copy_(sage.lin_l.weight)
    psage.lin_l.bias.data.copy_(sage.lin_l.bias)
    psage.lin_r.weight.data.copy_(sage.lin_r.weight)
    gat, pgat = UnifewsGATv2Conv(F_IN, F_OUT, heads=2), GATv2Conv(F_IN, F_OUT, heads=2)
    for a, b in ((pgat.lin_l, gat.lin_l), (pgat.lin_r, gat.lin_r)):
        a.weight.data.copy_(b.weight)
        a.bias.data.copy_(torch.randn_like(a.bias))
        b.bias.data.copy_(a.bias)
    pgat.att.data.copy_(gat.att)
    pgat.bias.data.copy_(torch.randn_like(pgat.bias))
    gat.bias.data.copy_(pgat.bias)
    gin = UnifewsGINConv(F_IN, F_OUT, eps=0.3)
    pgin = GINConv(gin.mlp, eps=0.3)
    gcn2 = UnifewsGCNIIConv(F_IN, alpha=0.2, theta=0.5, layer=2)
    pgcn2 = GCN2Conv(F_IN, alpha=0.2, theta=0.5, layer=2)
    pgcn2.weight1.data.copy_(gcn2.lin.weight.t())
    return {"gcn": (gcn, pgcn), "sage": (sage, psage), "gat": (gat, pgat), "gin": (gin, pgin), "gcnii": (gcn2, pgcn2)}


@pytest.mark.parametrize("name", ["gcn", "sage", "gat", "gin", "gcnii"])
def test_equals_pyg_at_zero_thresholds(name):
    mine, ref = _layers()[name]
    x = torch.randn(N, F_IN)
    ei = random_graph(N, 120)
    if name == "gcnii":
        x0 = torch.randn(N, F_IN)
        _pair(mine, ref, x, ei, lambda m, x, e: m(x, x0, e), lambda m, x, e: m(x, x0, e))
    else:
        _pair(mine, ref, x, ei, lambda m, x, e: m(x, e), lambda m, x, e: m(x, e))


@pytest.mark.parametrize("name", ["gcn", "gat"])
def test_a_graphs_own_self_loops_count_once(name):
    """PyG's GCNConv and GATv2Conv drop a graph's own self-loops and add one per node; here they
    stay as edges of weight 0 (no device read to drop them): the outputs and gradients are PyG's."""
    mine, ref = _layers()[name]
    x = torch.randn(N, F_IN)
    ei = torch.cat([random_graph(N, 120), torch.arange(0, N, 3).repeat(2, 1)], 1)  # some nodes' own loops
    _pair(mine, ref, x, ei, lambda m, x, e: m(x, e), lambda m, x, e: m(x, e))


@pytest.mark.parametrize("name", ["gcn", "sage", "gin"])
def test_bipartite_block_equals_square_graph_rows(name):
    """A sampled block (targets = prefix of sources) gives the same rows as the square graph."""
    mine, _ = _layers()[name]
    mine.eval()
    x = torch.randn(N, F_IN)
    ei = random_graph(N, 120)
    n_dst = 10
    ei_b = ei[:, ei[1] < n_dst]
    if name == "gcn":  # GCN normalises by the degree of the block: use the same edges on both sides
        full = mine(x, ei_b)[:n_dst]
    else:
        full = mine(x, ei)[:n_dst]
    block = mine((x, x[:n_dst]), ei_b)
    assert block.shape == (n_dst, F_OUT)
    assert_close(full, block)


def _brute_force_keep(messages, thr_a, locked):
    """Materialise every message and apply the rule literally."""
    norms = messages.reshape(messages.size(0), -1).norm(dim=-1)
    keep = norms >= thr_a * norms.mean()
    return keep | locked


@pytest.mark.parametrize("thr_a", [0.5, 1.0, 2.0])
def test_gcn_kept_edges_match_brute_force(thr_a):
    torch.manual_seed(1)
    conv = UnifewsGCNConv(F_IN, F_OUT, thr_a=thr_a)
    x, ei = torch.randn(N, F_IN), random_graph(N, 150, seed=3)
    ei_p, ew = conv.prepare_edges(ei, N, N)
    h = x @ conv.lin.weight.t()
    messages = ew.view(-1, 1) * h[ei_p[0]]
    expect = _brute_force_keep(messages, thr_a, ei_p[0] == ei_p[1])
    out, sel = conv.step(x, ei_p, ew, LayerPlan(return_kept=True))
    assert torch.equal(sel.kept, expect)
    assert int(sel.edges_kept) == int(expect.sum()) and sel.edges_in == ei_p.size(1)
    assert sel.edges_computed == int(expect.sum()) and sel.channels == sel.channels_computed == F_OUT
    ref = torch.zeros(N, F_OUT).index_add_(0, ei_p[1][expect], messages[expect]) + conv.bias
    assert_close(out, ref)


@pytest.mark.parametrize("thr_a", [0.5, 1.5])
def test_sage_and_gin_kept_edges_match_brute_force(thr_a):
    x, ei = torch.randn(N, F_IN), random_graph(N, 150, seed=4)
    sage = UnifewsSAGEConv(F_IN, F_OUT, thr_a=thr_a)
    _, ew = sage.prepare_edges(ei, N, N)
    expect = _brute_force_keep(ew.view(-1, 1) * x[ei[0]], thr_a, ei[0] == ei[1])
    _, keep = sage(x, ei, return_kept=True)
    assert torch.equal(keep, expect)
    # GIN propagates its first linear map's product (no bias): the messages are rows of x W_1^T
    gin = UnifewsGINConv(F_IN, F_OUT, thr_a=thr_a, eps=0.3)
    h = x @ gin.mlp[0].weight.t()
    expect = _brute_force_keep(h[ei[0]], thr_a, ei[0] == ei[1])
    out, keep = gin(x, ei, return_kept=True)
    assert torch.equal(keep, expect)
    agg = torch.zeros(N, F_OUT).index_add_(0, ei[1][expect], h[ei[0]][expect])
    assert_close(out, gin.mlp[2](torch.relu(agg + 1.3 * h + gin.mlp[0].bias)))


def test_gat_kept_edges_match_reference_rule():
    torch.manual_seed(2)
    conv = UnifewsGATv2Conv(F_IN, F_OUT, heads=3, thr_a=0.8)
    conv.eval()
    x, ei = torch.randn(N, F_IN), random_graph(N, 150, seed=5)
    ref = GATv2Conv(F_IN, F_OUT, heads=3)
    for a, b in ((ref.lin_l, conv.lin_l), (ref.lin_r, conv.lin_r)):
        a.weight.data.copy_(b.weight)
        a.bias.data.copy_(b.bias)
    ref.att.data.copy_(conv.att)
    _, (ei_full, alpha) = ref(x, ei, return_attention_weights=True)
    h = conv.lin_l(x).view(N, 3, F_OUT)
    msg_norm = h[ei_full[0]].reshape(ei_full.size(1), -1).norm(dim=-1)
    expect = (alpha.mean(-1) * msg_norm >= 0.8 * msg_norm.mean()) | (ei_full[0] == ei_full[1])
    _, keep = conv(x, ei, return_kept=True)
    assert torch.equal(keep, expect)
    assert 0 < keep.sum() < keep.numel()


@pytest.mark.parametrize("name", ["gcn", "sage", "gat", "gin", "gcnii"])
def test_huge_threshold_keeps_locked_edges_and_some_weights(name):
    mine, _ = _layers()[name]
    mine.thr_a = 1e6
    mine.set_thr_w(1e6)
    mine.train()
    x, ei = torch.randn(N, F_IN), random_graph(N, 120)
    ei = torch.cat([ei, torch.tensor([[0, 3], [0, 3]])], 1)  # two self-loops in the data
    args = (x, torch.randn(N, F_IN), ei) if name == "gcnii" else (x, ei)
    out, keep = mine(*args, return_kept=True)
    assert torch.isfinite(out).all()
    prepared, _ = mine.prepare_edges(ei, N, N)
    self_loops = prepared[0] == prepared[1]
    # only the locked self-loops survive: a conv whose node's own term is outside propagation
    # (SAGE's root weight, GIN's 1 + eps) does not lock them, its loops are ordinary messages
    assert mine.lock_self_loops == (name not in ("sage", "gin"))
    assert torch.equal(keep, self_loops & mine.lock_self_loops)
    for lin in mine.weight_layers():
        assert 0 < int(lin.weight_mask.sum()) <= lin.weight.size(1)


def test_bad_arguments_raise_value_error_naming_value():
    with pytest.raises(ValueError, match="thr_a.*-1"):
        UnifewsGCNConv(4, 4, thr_a=-1)
    with pytest.raises(ValueError, match="thr_w.*nan"):
        UnifewsSAGEConv(4, 4, thr_w=float("nan"))
    with pytest.raises(ValueError, match="shape \\[2, E\\]"):
        UnifewsGINConv(4, 4)(torch.randn(5, 4), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="refers to node 9"):
        UnifewsSAGEConv(4, 4)(torch.randn(5, 4), torch.tensor([[9], [0]]))
    with pytest.raises(ValueError, match="expects 4"):
        UnifewsSAGEConv(4, 4)(torch.randn(5, 3), torch.tensor([[1], [0]]))


def test_negative_user_edge_weights_are_scored_by_magnitude():
    """A single layer given its own weights scores ``|w_e|``: negative ones prune as positive ones
    (only a stack's prepared weights, non-negative by construction, skip the ``abs``)."""
    torch.manual_seed(0)
    conv = UnifewsSAGEConv(F_IN, 4, thr_a=1.0)
    x, ei = torch.randn(N, F_IN), random_graph(N, 120)
    w = torch.rand(ei.size(1)) + 0.1
    _, keep_pos = conv(x, ei, w, return_kept=True)
    _, keep_neg = conv(x, ei, -w, return_kept=True)
    assert torch.equal(keep_pos, keep_neg) and 0 < keep_pos.sum() < keep_pos.numel()


def test_a_conv_declares_facts_and_the_rest_is_derived():
    """A conv declares only what its code cannot show (self-loops, attention, source-side maps,
    the stack's outer maps); what it takes from a stack is read from its signatures."""
    assert {n: c.stack_options for n, c in CONVS.items() if c.stack_options} == {
        "gat": ("heads",), "gcnii": ("gcnii_alpha", "gcnii_theta")}
    assert [n for n, c in CONVS.items() if c.needs_x0] == ["gcnii"]
    assert sorted(n for n, c in CONVS.items() if c.adds_self_loops) == ["gat", "gcn", "gcnii"]
    assert [n for n, c in CONVS.items() if c.attention] == ["gat"]
    assert [n for n, c in CONVS.items() if c.scores_inputs] == ["sage"]  # its rule can run in the loader
    declared = {"adds_self_loops", "attention", "source_side_weights", "stack_in_out_linears"}
    for conv in CONVS.values():
        for c in conv.__mro__[:conv.__mro__.index(UnifewsConv)]:  # the conv and its bases up to UnifewsConv
            own = {k for k, v in vars(c).items() if not k.startswith("_") and not callable(v)
                   and not isinstance(v, (property, classmethod, staticmethod))}
            assert own - {"needs_x0", "stack_options", "scores_inputs"} <= declared, (c.__name__, own)


def test_the_rule_locks_self_loops_only_where_they_are_the_nodes_own_term():
    """GCN's self-loop is the node's own term, never pruned; SAGE's own term is outside
    propagation, so a self-loop in its graph is an ordinary message. Locks given are added."""
    src, dst = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 5])
    given = torch.tensor([False, True, False, False])
    gcn, sage = UnifewsGCNConv(F_IN, F_OUT, thr_a=1.0), UnifewsSAGEConv(F_IN, F_OUT, thr_a=1.0)
    assert gcn.edge_locks(src, dst).tolist() == [True, False, True, False]
    assert gcn.edge_locks(src, dst, given).tolist() == [True, True, True, False]
    assert sage.edge_locks(src, dst) is None and sage.edge_locks(src, dst, given) is given
