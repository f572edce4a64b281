import pytest
import torch
from torch_geometric.nn import SAGEConv

from close import assert_close
from unifews_dist.nn import UnifewsGNN
from conftest import random_graph

# path-equivalence tests: float64, compared relative to the scale (close.py)
pytestmark = pytest.mark.usefixtures("float64")


def _block(seed=0):
    """A 2-hop sampled-like block: nodes 0..3 seeds, 4..11 hop 1, 12..29 hop 2."""
    g = torch.Generator().manual_seed(seed)
    hop1 = torch.stack([torch.randint(4, 12, (16,), generator=g), torch.randint(0, 4, (16,), generator=g)])
    hop2 = torch.stack([torch.randint(12, 30, (40,), generator=g), torch.randint(4, 12, (40,), generator=g)])
    ei = torch.unique(torch.cat([hop1, hop2], 1), dim=1)
    order = torch.argsort(ei[1] >= 4, stable=True)  # hop-1 edges first, as a sampler emits them
    return ei[:, order], [4, 8, 18]


@pytest.mark.parametrize("conv", ["gcn", "sage", "gat", "gin", "gcnii"])
def test_kept_edges_never_increase_with_depth(conv):
    torch.manual_seed(0)
    thr_a = 0.08 if conv == "gat" else 0.7  # attention ~ 1/degree: GAT thresholds live in [0, 1)
    model = UnifewsGNN(
        conv,
        16,
        16,
        3,
        num_layers=3,
        thr_a=thr_a,
        thr_w=0.5,
        heads=2 if conv == "gat" else 1,
        lock_target_edges="never",
    )
    x, ei = torch.randn(40, 16), random_graph(40, 300)
    out = model(x, ei)
    assert out.shape == (40, 3)
    kept = [s.edges_kept for s in model.layer_stats]
    assert kept == sorted(kept, reverse=True) and kept[-1] < kept[0], kept
    for a, b in zip(model.layer_stats, model.layer_stats[1:]):
        assert b.edges_in == a.edges_kept  # a pruned edge never comes back
        assert b.edge_sparsity >= a.edge_sparsity - 1e-9
    assert all(s.macs_sparse < s.macs_dense for s in model.layer_stats)


def test_trimmed_stack_equals_untrimmed_on_seeds():
    """Per-hop trimming changes the work, not the seed outputs (SAGE: no degree of sources)."""
    torch.manual_seed(0)
    model = UnifewsGNN("sage", 16, 16, 3, num_layers=2, dropout=0.0, norm="none").eval()
    ei, hops = _block()
    x = torch.randn(30, 16)
    full = model(x, ei)[:4]
    trimmed = model(x, ei, num_sampled_nodes=hops, batch_size=4)
    assert trimmed.shape == (4, 3)
    assert_close(full, trimmed)
    assert model.layer_stats[1].edges_dense == int((ei[1] < 4).sum())


def test_dense_stack_equals_pyg_layers():
    torch.manual_seed(0)
    model = UnifewsGNN("sage", 16, 8, 3, num_layers=2, dropout=0.0, norm="none").eval()
    ref = [SAGEConv(16, 8), SAGEConv(8, 3)]
    for r, m in zip(ref, model.convs):
        r.lin_l.weight.data.copy_(m.lin_l.weight)
        r.lin_l.bias.data.copy_(m.lin_l.bias)
        r.lin_r.weight.data.copy_(m.lin_r.weight)
    x, ei = torch.randn(30, 16), random_graph(30, 100)
    expect = ref[1](ref[0](x, ei).relu(), ei)
    assert_close(model(x, ei), expect)


def test_target_edges_locked_at_last_layer():
    model = UnifewsGNN("sage", 16, 16, 3, num_layers=2, thr_a=50.0)
    ei, hops = _block()
    model(torch.randn(30, 16), ei, num_sampled_nodes=hops, batch_size=4)
    first, last = model.layer_stats
    into_seeds = int((ei[1] < 4).sum())
    assert first.edges_kept == into_seeds and last.edges_kept == last.edges_in == into_seeds > 0
    model.lock_target_edges = "eval"
    model.train()
    model(torch.randn(30, 16), ei, num_sampled_nodes=hops, batch_size=4)
    assert model.layer_stats[-1].edges_kept == 0
    model.eval()
    model(torch.randn(30, 16), ei, num_sampled_nodes=hops, batch_size=4)
    assert model.layer_stats[-1].edges_kept == model.layer_stats[-1].edges_in


def test_thresholds_per_layer_and_bad_values():
    model = UnifewsGNN("gcn", 8, 8, 2, num_layers=2, thr_a=[0.1, 0.2], thr_w=0.3)
    assert model.thr_a == [0.1, 0.2] and model.thr_w == [0.3, 0.3]
    model.set_thresholds(thr_a=0.5, thr_w=[0.0, 1.0])
    assert model.thr_a == [0.5, 0.5] and model.thr_w == [0.0, 1.0]
    with pytest.raises(ValueError, match="list of 2"):
        model.set_thresholds(thr_a=[1.0])
    with pytest.raises(ValueError, match="unknown conv 'gcm'"):
        UnifewsGNN("gcm", 8, 8, 2)
    with pytest.raises(ValueError, match="norm must be one of"):
        UnifewsGNN("gcn", 8, 8, 2, norm="group")
    with pytest.raises(ValueError, match="per-hop node counts for 3 hops"):
        UnifewsGNN("gcn", 8, 8, 2)(torch.randn(5, 8), torch.tensor([[1], [0]]), num_sampled_nodes=[1, 4])


def test_thresholds_are_checkpointed_state():
    """A schedule moves the thresholds; a checkpoint must give back the model as it was."""
    a = UnifewsGNN("gcn", 8, 16, 3, num_layers=2, thr_a=0.5, thr_w=0.2)
    a.set_thresholds(thr_a=[1.0, 2.0], thr_w=[0.3, 0.4])
    b = UnifewsGNN("gcn", 8, 16, 3, num_layers=2)
    b.load_state_dict(a.state_dict())
    assert b.thr_a == [1.0, 2.0] and b.thr_w == [0.3, 0.4]


def _block3(seed=0):
    """A 3-hop sampled-like block: 8 seeds, 32 hop-1, 160 hop-2, 400 hop-3 nodes; each edge
    points into hop k from a node of hop <= k + 1, and, as in a sampler's output, every node of
    hop k + 1 is the source of an edge into hop k."""
    g = torch.Generator().manual_seed(seed)
    ends = [8, 40, 200, 600]
    parts = []
    for k, (lo, hi) in enumerate(zip([0] + ends[:2], ends[:3])):
        n = (hi - lo) * 6
        parts.append(
            torch.stack([torch.randint(0, ends[k + 1], (n,), generator=g), torch.randint(lo, hi, (n,), generator=g)])
        )
        sampled = torch.arange(hi, ends[k + 1])
        parts.append(torch.stack([sampled, torch.randint(lo, hi, (sampled.numel(),), generator=g)]))
    return torch.cat(parts, 1), [8, 32, 160, 400]


@pytest.mark.parametrize("conv", ["gcn", "sage", "gat", "gin", "gcnii"])
def test_rows_no_later_layer_reads_are_skipped_without_changing_the_result(conv):
    """A node whose every out-edge was pruned is not computed at the layer before; the seeds'
    outputs and every gradient equal those of the stack that computes all rows."""
    ei, hops = _block3()
    x = torch.randn(600, 16)
    thr_a = 0.3 if conv == "gat" else 1.2

    def run(skip):
        torch.manual_seed(0)
        model = UnifewsGNN(
            conv,
            16,
            16,
            3,
            num_layers=3,
            dropout=0.0,
            norm="layer",
            thr_a=thr_a,
            heads=2 if conv == "gat" else 1,
            lock_target_edges="never",
        )
        model.skip_unread_rows = skip
        out = model(x, ei, num_sampled_nodes=hops, batch_size=8)
        out.square().sum().backward()
        return out, {n: p.grad for n, p in model.named_parameters()}, model.layer_stats

    out_all, grads_all, stats_all = run(skip=False)
    out, grads, stats = run(skip=True)
    assert out.shape == (8, 3)
    assert_close(out, out_all)
    for name, g in grads_all.items():
        if g is None:
            assert grads[name] is None
        else:
            assert_close(grads[name], g, name=name)
    # the same pruning, fewer MACs: rows and kept edges into unread rows were skipped
    assert [s.edges_kept for s in stats] == [s.edges_kept for s in stats_all]
    assert [s.macs_dense for s in stats] == [s.macs_dense for s in stats_all]
    assert all(s.macs_sparse <= a.macs_sparse for s, a in zip(stats, stats_all))
    assert stats[0].macs_sparse < stats_all[0].macs_sparse


@pytest.mark.gpu
@pytest.mark.parametrize("conv", ["gcn", "sage", "gat", "gin", "gcnii"])
def test_cuda_stack_prunes_and_computes_as_on_cpu(conv):
    """The same block and weights on CUDA: the same kept edges, outputs and gradients as on CPU."""
    ei, hops = _block3()
    x = torch.randn(600, 16)
    torch.manual_seed(0)
    model = UnifewsGNN(
        conv,
        16,
        16,
        3,
        num_layers=3,
        dropout=0.0,
        norm="layer",
        heads=2 if conv == "gat" else 1,
        thr_a=0.3 if conv == "gat" else 1.2,
        thr_w=0.5,
    )
    runs = []
    for dev in ("cpu", "cuda"):
        model.to(dev).zero_grad()
        out = model(x.to(dev), ei.to(dev), num_sampled_nodes=hops, batch_size=8)
        out.square().sum().backward()
        runs.append(
            (
                out.cpu(),
                {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None},
                [(s.edges_kept, s.weight_nnz, s.macs_sparse) for s in model.layer_stats],
            )
        )
    (o_cpu, g_cpu, s_cpu), (o_gpu, g_gpu, s_gpu) = runs
    assert s_cpu == s_gpu and s_cpu[-1][0] < s_cpu[0][0]
    assert_close(o_gpu, o_cpu)
    assert g_cpu.keys() == g_gpu.keys()  # (clones: moving the model moves its .grad tensors in place)
    for name in g_cpu:
        assert_close(g_gpu[name], g_cpu[name], name=name)


def test_dense_stack_skips_nothing():
    torch.manual_seed(0)
    ei, hops = _block3()
    model = UnifewsGNN("sage", 16, 16, 3, num_layers=3, norm="none")
    model(torch.randn(600, 16), ei, num_sampled_nodes=hops, batch_size=8)
    for s in model.layer_stats:
        assert s.macs_sparse == s.macs_dense
