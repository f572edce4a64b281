"""Layer-wise full-graph inference: each layer over every node in batches of targets, pruned by
its rule over the whole graph, memory bounded by the batch."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unifews_dist.nn import LayerPlan, UnifewsGNN
from close import assert_close
from unifews_dist.sparsify.spmm import csr_adjacency
from conftest import random_graph

# path-equivalence tests: float64, compared relative to the scale (close.py)
pytestmark = pytest.mark.usefixtures("float64")

N, F_IN = 60, 12
CONVS = ["gcn", "sage", "gat", "gin", "gcnii"]


def _model(conv, thr_a=0.0, thr_w=0.0, lock="never"):
    torch.manual_seed(0)
    m = UnifewsGNN(
        conv,
        F_IN,
        16,
        4,
        num_layers=3,
        thr_a=thr_a,
        thr_w=thr_w,
        heads=2 if conv == "gat" else 1,
        norm="batch",
        lock_target_edges=lock,
        weight_backend="dense",
    )
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
    assert_close(out, whole)
    st = m.layer_stats
    assert [s.edges_kept for s in st] == kept_whole
    if thr > 0:
        assert kept_whole[-1] < kept_whole[0] and st[-1].edges_in < st[0].edges_in
        assert st[-1].edge_sparsity > st[0].edge_sparsity and st[0].macs_sparse < st[0].macs_dense


@pytest.mark.parametrize("conv", ["sage", "gcn", "gin"])
def test_locked_each_output_is_a_sampled_evaluation_of_the_node_alone(conv):
    """With seed locking, node v's output is a sampled evaluation of v alone: v's in-edges kept at
    every layer, v's own row (its input, its self-loop) its locked representation, its neighbours'
    rows their pruned ones. Reference for two layers, from the convs called directly: P = layer
    0 pruned over the whole graph, S = layer 0 with every edge locked; layer 1 reads S for a
    target's own row and P for its neighbours."""
    torch.manual_seed(0)
    m = UnifewsGNN(
        conv,
        F_IN,
        16,
        4,
        num_layers=2,
        thr_a=1.0,
        thr_w=0.5,
        norm="batch",
        lock_target_edges="eval",
        weight_backend="dense",
    )
    x, ei = torch.randn(N, F_IN), random_graph(N, 400)
    m.train()
    m(x, ei)
    m.eval()
    out = m.inference(x, ei, batch_size=8, lock_scope="each")
    pei, pew = type(m.convs[0]).prepare_edges(ei, N, N)
    all_locked = torch.ones(pei.size(1), dtype=torch.bool)
    with torch.no_grad():
        c0, c1 = m.convs
        between = lambda h: torch.relu(m.norms[0](h))  # noqa: E731
        pruned, sel = c0.step(x, pei, pew, LayerPlan(return_kept=True))
        keep = sel.kept
        pruned, locked = between(pruned), between(c0.step(x, pei, pew, LayerPlan(locked=all_locked))[0])
        src = torch.where(pei[0] == pei[1], pei[0], pei[0] + N)  # a self-loop reads the own row
        expect = c1.step(
            (torch.cat([locked, pruned]), locked), torch.stack([src, pei[1]]), pew, LayerPlan(locked=all_locked)
        )[0]
    assert not keep.all()  # layer 0 prunes the neighbours' representations
    assert_close(out, expect)
    st = m.layer_stats  # each layer: the outputs locked, and (layer 0) every node pruned
    assert st[1].edges_kept == st[1].edges_in and st[0].edges_kept < st[0].edges_in


@pytest.mark.parametrize("conv", CONVS)
def test_locked_outputs_are_one_sampled_batch_of_them(conv):
    """``lock_scope="outputs"`` (the default): the output nodes' in-edges are locked at every
    layer, all at once, as for the seeds of one batch. Reference: the forward over the whole
    graph, relabelled so that the outputs come first, with them as the batch's seeds (the mean
    over all of a layer's edges, locked ones included, in both)."""
    m, x, ei = _model(conv, thr_a=0.3 if conv == "gat" else 1.0, thr_w=0.5, lock="eval")
    nodes = torch.tensor([5, 0, 41, 17, 33, 8, 59, 21])
    perm = torch.cat([nodes, torch.tensor([v for v in range(N) if v not in set(nodes.tolist())])])
    new_id = torch.empty(N, dtype=torch.long)
    new_id[perm] = torch.arange(N)
    with torch.no_grad():
        expect = m(x[perm], new_id[ei], batch_size=nodes.numel())[: nodes.numel()]
        kept_whole = [int(s.edges_kept) for s in m.layer_stats]
    out = m.inference(x, ei, batch_size=7, output_nodes=nodes)
    assert_close(out, expect)
    st = m.layer_stats
    assert st[0].edges_kept == kept_whole[0] < st[0].edges_in  # the others' in-edges pruned
    assert st[-1].edges_kept == st[-1].edges_in  # the outputs': all kept
    if conv in ("sage", "gcn"):  # (outputs that vary with the edges kept)
        each = m.inference(x, ei, batch_size=7, output_nodes=nodes, lock_scope="each")
        assert not torch.allclose(each, out, atol=1e-4)  # some outputs are neighbours of each other


def test_output_nodes_are_rows_of_the_full_result():
    m, x, ei = _model("sage", thr_a=1.0, thr_w=1.0)
    full = m.inference(x, ei, batch_size=9)
    nodes = torch.tensor([5, 0, 41, 17])
    assert_close(m.inference(x, ei, batch_size=3, output_nodes=nodes), full[nodes])


def test_needs_evaluation_mode_and_a_positive_batch():
    m, x, ei = _model("sage")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        m.inference(x, ei, batch_size=0)
    m.train()
    with pytest.raises(ValueError, match="evaluation mode"):
        m.inference(x, ei)


@pytest.mark.parametrize("lock", ["never", "always"])
def test_dense_layerwise_equals_pyg_layers(lock):
    """Thresholds 0: PyG's SAGEConv layers over the whole graph, whatever the locking."""
    from torch_geometric.nn import SAGEConv

    torch.manual_seed(0)
    model = UnifewsGNN("sage", 16, 8, 3, num_layers=2, dropout=0.0, norm="none", lock_target_edges=lock).eval()
    ref = [SAGEConv(16, 8), SAGEConv(8, 3)]
    for r, m in zip(ref, model.convs):
        r.lin_l.weight.data.copy_(m.lin_l.weight)
        r.lin_l.bias.data.copy_(m.lin_l.bias)
        r.lin_r.weight.data.copy_(m.lin_r.weight)
    x, ei = torch.randn(30, 16), random_graph(30, 100)
    expect = ref[1](ref[0](x, ei).relu(), ei)
    assert_close(model.inference(x, ei, batch_size=4), expect)


@pytest.mark.parametrize("conv", ["gcn", "sage"])
def test_rule_before_the_gather_computes_the_same_on_fewer_rows(conv, monkeypatch):
    """A conv whose scores come from its sources gets the rule applied before a batch's source
    rows are gathered: the same outputs and kept edges, and a source whose every edge into the
    batch is pruned is not transformed (GCN's weight is on the source side) nor aggregated."""
    from unifews_dist.nn.conv.base import UnifewsConv

    m, x, ei = _model(conv, thr_a=1.0, thr_w=0.5)
    assert not m.convs[0].attention
    fast = m.inference(x, ei, batch_size=7)
    st_fast = m.layer_stats
    monkeypatch.setattr(UnifewsConv, "attention", True)  # what makes a conv's scores not its sources' alone
    slow = m.inference(x, ei, batch_size=7)
    st_slow = m.layer_stats
    assert_close(fast, slow)
    assert [s.edges_kept for s in st_fast] == [s.edges_kept for s in st_slow]
    fast_macs, slow_macs = [s.macs_sparse for s in st_fast], [s.macs_sparse for s in st_slow]
    if conv == "gcn":  # fewer source rows transformed, the same messages aggregated
        assert all(f <= s for f, s in zip(fast_macs, slow_macs)) and sum(fast_macs) < sum(slow_macs)
    else:  # SAGE transforms its targets' rows only, and by node id propagates only what lin_l reads
        assert all(f <= s for f, s in zip(fast_macs, slow_macs)) and sum(fast_macs) < sum(slow_macs)
        assert [s.macs_dense for s in st_fast] == [s.macs_dense for s in st_slow]


def test_edges_kept_before_the_gather_are_not_scored_again(monkeypatch):
    """The rule applied before the gather is the layer's rule: the conv is told so
    (``rule_applied``) and scores nothing again; a conv whose scores do not come from its
    sources (GATv2) refuses to be told so."""
    from unifews_dist.nn.conv.base import UnifewsConv

    m, x, ei = _model("sage", thr_a=1.0, thr_w=0.5)
    calls = []
    real = UnifewsConv.prune_edges
    monkeypatch.setattr(UnifewsConv, "prune_edges", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    m.inference(x, ei, batch_size=7)
    assert calls == []
    gat = UnifewsGNN("gat", F_IN, 16, 4, num_layers=1, thr_a=0.3).eval().convs[0]
    with pytest.raises(ValueError, match="rule_applied"):
        gat.step(x, ei, None, LayerPlan(prepared=False, rule_applied=True))


class _LargestEdgeIndex(TorchDispatchMode):
    """The most columns of any ``[2, k]`` int64 tensor an op made (an edge index)."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 2 and t.size(0) == 2:
                self.most = max(self.most, t.size(1))
        return out


def _outputs(rank, world, spread):
    # strided: every node, each rank every other one; first: overlapping runs in rank 0's share
    return torch.arange(N)[rank::world] if spread == "strided" else torch.arange(rank * 5, rank * 5 + 10)


def _split_worker(rank, world, port, conv, lock, scope, thr_a, spread, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.set_default_dtype(torch.float64)  # as the test's own process (pytestmark)
        m, x, ei = _model(conv, thr_a=thr_a, thr_w=0.5, lock=lock)
        ei = ei[:, torch.argsort(ei[1], stable=True)]  # in target order, as a prepared graph's CSC (not sorted again)
        mine = _outputs(rank, world, spread)
        Conv, prepared = type(m.convs[0]), []  # the edge counts the conv prepares (weights for)
        real = Conv.prepare_edges
        Conv.prepare_edges = staticmethod(lambda e, *a, **k: prepared.append(e.size(1)) or real(e, *a, **k))
        try:
            with _LargestEdgeIndex() as made:
                res = m.inference(x, ei, batch_size=7, output_nodes=mine, distributed=True, lock_scope=scope)
        finally:
            Conv.prepare_edges = staticmethod(real)
        out[rank] = (
            mine,
            res,
            [(s.edges_in, s.edges_kept, s.macs_sparse) for s in m.layer_stats],
            made.most,
            max(prepared),
        )
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    "conv, lock, scope, thr_a, spread",
    [
        ("sage", "never", "outputs", 1.0, "strided"),
        ("sage", "never", "outputs", 0.0, "first"),
        ("gcn", "eval", "outputs", 1.0, "strided"),
        ("sage", "eval", "each", 1.0, "strided"),
    ],
)
def test_ranks_split_layerwise_inference_and_agree_with_one_process(conv, lock, scope, thr_a, spread):
    """Under DDP each rank computes a share of every layer and all-gathers the rows: each rank's
    outputs equal one process's for its nodes, and the ranks' edge counts (and SAGE's MACs) sum
    to one process's for every rank's outputs at every layer (each rank did only its share: a
    rank doing all of it would double them; with ``each`` the locked outputs are each rank's
    own; ``first``: every output node in rank 0's share, rank 1 computes none of the last
    layer). No rank makes an edge index, or SAGE's per-edge weights, for more than its share's
    in-edges (SAGE; GCN's self-loops and weights are made for the whole graph first): each holds
    the edges of its share only."""
    import torch.multiprocessing as mp
    from conftest import free_port
    from unifews_dist.distributed import shares as _shares

    out = mp.Manager().dict()
    mp.spawn(_split_worker, args=(2, free_port(), conv, lock, scope, thr_a, spread, out), nprocs=2, join=True)
    m, x, ei = _model(conv, thr_a=thr_a, thr_w=0.5, lock=lock)
    ei = ei[:, torch.argsort(ei[1], stable=True)]
    union = torch.cat([_outputs(r, 2, spread) for r in (0, 1)]).unique()
    whole = m.inference(x, ei, batch_size=7, lock_scope=scope, output_nodes=union)
    one = [(s.edges_in, s.edges_kept, s.macs_sparse) for s in m.layer_stats]
    whole = torch.zeros(N, whole.size(1)).index_copy_(0, union, whole)
    for r in (0, 1):
        mine, res = out[r][:2]
        assert_close(res, whole[mine])
    if scope == "outputs":  # (GCN transforms each batch's distinct sources: its MACs follow the batches)
        summed = [tuple(a + b for a, b in zip(s0, s1)) for s0, s1 in zip(out[0][2], out[1][2])]
        k = 3 if conv == "sage" else 2
        assert [t[:k] for t in summed] == [t[:k] for t in one]
    if conv == "sage":
        share_edges = [int(((ei[1] >= lo) & (ei[1] < hi)).sum()) for lo, hi in _shares(N, 2)]
        assert max(out[r][3] for r in (0, 1)) <= max(share_edges) < ei.size(1), (out[0][3], out[1][3], share_edges)
        if scope == "outputs":  # SAGE's 1 / deg weights made for the share's edges only
            assert [out[r][4] for r in (0, 1)] == share_edges


@pytest.mark.parametrize("conv", ["sage", "gcn", "gin", "gcnii"])
def test_fused_aggregation_equals_messages_summed(conv):
    """``fused``: one sparse-dense product over the edges in any order, repeated ones included,
    gives the messages summed edge by edge (on the CPU the matrix keeps the edges as given, in
    target order: torch's CPU kernel sums a row's entries in any order)."""
    m, _, _ = _model(conv, thr_a=1.0, thr_w=0.5)
    c = m.convs[0]
    torch.manual_seed(1)
    x = torch.randn(N, c.weight_layers()[0].in_features)
    ei = torch.randint(0, N, (2, 300))
    ei = torch.cat([ei, ei[:, :40]], 1)[:, torch.randperm(340)]  # unsorted, 40 edges twice
    args = (x, x, ei) if c.needs_x0 else (x, ei)
    with torch.no_grad():
        expect, kept = c(*args, return_kept=True)
        out, sel = c.step(x, ei, None, LayerPlan(prepared=False, return_kept=True, fused=True),
                          x0=x if c.needs_x0 else None)
        kept_fused = sel.kept
    assert_close(out, expect)
    assert torch.equal(kept, kept_fused) and not kept.all()
    w = torch.rand(ei.size(1))
    dense = torch.zeros(N, N).index_put_((ei[1], ei[0]), w, accumulate=True)
    adj = csr_adjacency(ei, w, N, N, torch.get_default_dtype())  # CPU: in target order, columns as given
    assert adj.values().numel() == ei.size(1)
    assert_close(adj.to_dense(), dense)
    h = torch.randn(N, 5)
    assert_close(adj @ h, dense @ h)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_canonical_adjacency_is_a_valid_csr(device):
    """The canonical CSR (CUDA's default, for cuSPARSE; asked for on the CPU here): each row's
    columns sorted and distinct, repeated edges merged into one entry of the summed weights;
    torch's invariant check passes and the product equals the messages summed."""
    torch.manual_seed(1)
    ei = torch.randint(0, N, (2, 300))
    ei = torch.cat([ei, ei[:, :40]], 1)[:, torch.randperm(340)].to(device)
    w = torch.rand(ei.size(1), device=device)
    adj = csr_adjacency(ei, w, N, N, torch.get_default_dtype(), canonical=True)
    dense = torch.zeros(N, N, device=device).index_put_((ei[1], ei[0]), w, accumulate=True)
    assert_close(adj.to_dense(), dense)
    assert adj.values().numel() == torch.unique(ei[1] * N + ei[0]).numel()
    with torch.sparse.check_sparse_tensor_invariants(enable=True):
        torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(), adj.values(), adj.shape)
    h = torch.randn(N, 5, device=device)
    assert_close(adj @ h, dense @ h)


@pytest.mark.parametrize("conv", ["sage"])
@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_channels_no_weight_reads_are_not_propagated(conv, backend, monkeypatch):
    """A weight column pruned whole is an input channel the layer never reads: layer-wise
    inference propagates the other channels only (SAGE's ``lin_l``; GIN propagates its first
    map's product, every channel of which is read), with the
    same outputs and kept edges as propagating all, and exactly that many fewer multiply-adds."""
    if backend == "sparse":  # the CPU sparse kernel is float32 (the float64 fixture restores the default)
        torch.set_default_dtype(torch.float32)
    m, x, ei = _model(conv, thr_a=1.0, thr_w=1.0)
    for lin in m.weight_layers():
        lin.backend = backend
    reads = [c.aggregated_channels() for c in m.convs]
    widths = [c.weight_layers()[0].in_features for c in m.convs]
    assert all(r is not None for r in reads) and all(0 < r.numel() < w for r, w in zip(reads, widths)), reads
    fast = m.inference(x, ei, batch_size=7)
    st_fast = m.layer_stats
    monkeypatch.setattr(type(m.convs[0]), "aggregated_channels", lambda self: None)
    slow = m.inference(x, ei, batch_size=7)
    st_slow = m.layer_stats
    assert_close(fast, slow, rtol=1e-9 if backend == "dense" else 1e-5)
    assert [s.edges_kept for s in st_fast] == [s.edges_kept for s in st_slow]
    assert [s.macs_dense for s in st_fast] == [s.macs_dense for s in st_slow]
    for s_fast, s_slow, r, w in zip(st_fast, st_slow, reads, widths):  # per layer: the channels skipped
        assert s_slow.macs_sparse - s_fast.macs_sparse == s_fast.edges_kept * (w - r.numel())


@pytest.mark.parametrize("lock", ["never", "eval"])
def test_a_workspace_is_reused_and_never_returned(lock):
    """``workspace``: the hidden layers' outputs and propagated channels are written into the
    buffers the workspace keeps (the same memory on the next call), with the outputs of a call
    without one; the result returned is never a workspace buffer, so a later call leaves it as
    it was."""
    from unifews_dist.nn import InferenceWorkspace

    m, x, ei = _model("sage", thr_a=1.0, thr_w=1.0, lock=lock)
    ws = InferenceWorkspace()
    expect = m.inference(x, ei, batch_size=7)
    first = m.inference(x, ei, batch_size=7, workspace=ws)
    assert_close(first, expect)
    kept = {role: t.data_ptr() for role, t in ws.held().items()}
    # one channel buffer; the two hidden layers' outputs and kept edges in two alternating ones
    edges = {(k, i) for k in ("edges", "weights") for i in (0, 1)}
    assert {("sources",), ("output", 0), ("output", 1)} | (edges if lock == "never" else set()) <= set(kept)
    assert set(kept) <= {("sources",), ("output", 0), ("output", 1)} | edges
    assert ws.nbytes >= 2 * N * 16 * 4
    snapshot = first.clone()
    again = m.inference(x, ei, batch_size=7, workspace=ws)
    assert {role: t.data_ptr() for role, t in ws.held().items()} == kept  # the same memory again
    assert_close(again, expect)
    other = m.inference(x * 2, ei, batch_size=7, workspace=ws)  # (other kept counts: some buffers made anew)
    assert torch.equal(first, snapshot) and not torch.equal(other, first)
    assert_close(other, m.inference(x * 2, ei, batch_size=7))
    assert all(r.data_ptr() != t.data_ptr() for r in (first, again, other) for t in ws.held().values())
    ws.clear()
    assert ws.nbytes == 0


def test_layers_sharing_workspace_buffers_by_lifetime_compute_the_same():
    """Four layers: the third writes its outputs and kept edges into the first's buffers and every
    layer its channels into one; the outputs equal those of a call with fresh buffers."""
    from unifews_dist.nn import InferenceWorkspace

    torch.manual_seed(0)
    m = UnifewsGNN(
        "sage",
        F_IN,
        16,
        4,
        num_layers=4,
        thr_a=1.0,
        thr_w=1.0,
        norm="batch",
        lock_target_edges="never",
        weight_backend="dense",
    )
    x, ei = torch.randn(N, F_IN), random_graph(N, 400)
    m.train()
    m(x, ei)
    m.eval()
    fresh = m.inference(x, ei, batch_size=7, workspace=None)
    ws = InferenceWorkspace()
    for _ in range(2):
        assert_close(m.inference(x, ei, batch_size=7, workspace=ws), fresh)
    assert ("output", 0) in ws.held() and ("output", 2) not in ws.held()


@pytest.mark.parametrize("conv", ["sage", "gcn"])
def test_the_cuda_ordering_of_layerwise_inference_runs_on_the_cpu(conv):
    """``canonical`` (CUDA's default: edges sorted by target and source, each batch's sum in
    cuSPARSE's canonical CSR, repeated edges merged) asked for on the CPU gives the CPU path's
    outputs and statistics: the GPU's branch is exercised here."""
    from unifews_dist.nn.models.layerwise import InferenceOptions, layerwise_inference

    m, x, ei = _model(conv, thr_a=1.0, thr_w=0.5)
    ei = torch.cat([ei, ei[:, :25]], 1)[:, torch.randperm(ei.size(1) + 25)]  # unsorted, some edges twice
    cpu = layerwise_inference(m, x, ei, InferenceOptions(batch_size=7))
    st_cpu = [(s.edges_kept, s.edges_in) for s in m.layer_stats]
    gpu_path = layerwise_inference(m, x, ei, InferenceOptions(batch_size=7, canonical=True))
    assert_close(gpu_path, cpu)
    assert [(s.edges_kept, s.edges_in) for s in m.layer_stats] == st_cpu
