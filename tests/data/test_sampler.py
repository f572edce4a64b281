import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader
from torch_geometric.sampler import NodeSamplerInput

from unifews_dist.data.sampler import TorchNeighborSampler
from conftest import random_graph


def _graph(n=200, e=3000, seed=0):
    ei = random_graph(n, e, seed)
    return Data(edge_index=ei, num_nodes=n)


def _sample(sampler, seeds):
    return sampler.sample_from_nodes(NodeSamplerInput(input_id=torch.arange(len(seeds)), node=seeds))


@pytest.mark.parametrize("fanout", [[3, 2], [5, 5, 5], [-1, 4], [50, 1]])
def test_sampled_edges_exist_are_distinct_and_respect_fanout(fanout):
    data = _graph()
    s = TorchNeighborSampler(data, fanout)
    seeds = torch.randperm(200)[:17]
    out = _sample(s, seeds)
    edges = set(map(tuple, data.edge_index.t().tolist()))
    src_g, dst_g = out.node[out.row], out.node[out.col]
    assert all((a, b) in edges for a, b in zip(src_g.tolist(), dst_g.tolist()))
    assert torch.equal(data.edge_index[:, s.perm[out.edge]], torch.stack([src_g, dst_g]))
    assert out.node.unique().numel() == out.node.numel()
    assert torch.equal(out.node[:17], seeds)
    # per-hop counts add up, and each hop's targets are the previous hop's nodes
    assert sum(out.num_sampled_nodes) == out.node.numel() and len(out.num_sampled_nodes) == len(fanout) + 1
    assert sum(out.num_sampled_edges) == out.row.numel()
    cum_n = torch.tensor(out.num_sampled_nodes).cumsum(0)
    start = 0
    deg = torch.bincount(data.edge_index[1], minlength=200)
    for h, (k, ne) in enumerate(zip(fanout, out.num_sampled_edges)):
        col, row, edge = out.col[start:start + ne], out.row[start:start + ne], out.edge[start:start + ne]
        lo = 0 if h == 0 else int(cum_n[h - 1])
        assert (col >= lo).all() and (col < cum_n[h]).all() and (row < cum_n[h + 1]).all()
        for t in col.unique().tolist():
            picked = edge[col == t]
            assert picked.unique().numel() == picked.numel()  # no neighbour drawn twice
            d = int(deg[out.node[t]])
            assert picked.numel() == (d if k < 0 else min(d, k))  # fanout, or all of a small degree
        start += ne


def test_same_seed_same_sample_and_different_seed_differs():
    data = _graph()
    seeds = torch.arange(0, 40)
    a = _sample(TorchNeighborSampler(data, [4, 3], seed=1), seeds)
    b = _sample(TorchNeighborSampler(data, [4, 3], seed=1), seeds)
    c = _sample(TorchNeighborSampler(data, [4, 3], seed=2), seeds)
    assert torch.equal(a.node, b.node) and torch.equal(a.edge, b.edge)
    assert not torch.equal(a.edge, c.edge)


@pytest.mark.parametrize("k", [3, 30])  # the permutation path and the redraw path
def test_uniform_on_a_star(k):
    """Chi-square: every leaf of a star is drawn equally often."""
    leaves = 100
    ei = torch.stack([torch.arange(1, leaves + 1), torch.zeros(leaves, dtype=torch.long)])
    s = TorchNeighborSampler(Data(edge_index=ei, num_nodes=leaves + 1), [k])
    counts = torch.zeros(leaves + 1)
    trials = 3000
    for t in range(trials):
        out = s.sample_from_nodes(NodeSamplerInput(input_id=torch.tensor([t]), node=torch.tensor([0])))
        counts.index_add_(0, out.node[out.row], torch.ones(out.row.numel()))
    obs = counts[1:]
    exp = trials * k / leaves
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert obs.sum() == trials * k
    assert chi2 < 148.2  # 99.9th percentile of chi-square with 99 degrees of freedom


def test_plugs_into_pyg_node_loader_and_fills_per_hop_counts():
    data = _graph()
    data.x = torch.randn(200, 3)
    loader = NodeLoader(data, TorchNeighborSampler(data, [3, 2]), input_nodes=torch.arange(50), batch_size=16)
    batches = list(loader)
    assert len(batches) == 4
    b = batches[0]
    assert b.batch_size == 16 and len(b.num_sampled_nodes) == 3
    assert torch.equal(b.x, data.x[b.n_id])


def test_bad_arguments():
    data = _graph()
    with pytest.raises(ValueError, match="positive integer or -1"):
        TorchNeighborSampler(data, [3, 0])
    with pytest.raises(ValueError, match="one fanout per hop"):
        TorchNeighborSampler(data, [])
    with pytest.raises(ValueError, match="distinct"):
        _sample(TorchNeighborSampler(data, [2]), torch.tensor([1, 1]))


@pytest.mark.gpu
def test_cuda_sampling_matches_cpu_rules():
    data = _graph()
    s = TorchNeighborSampler(Data(edge_index=data.edge_index.cuda(), num_nodes=200), [4, 3])
    out = _sample(s, torch.arange(10, device="cuda"))
    assert out.node.is_cuda and out.node.unique().numel() == out.node.numel()
    edges = set(map(tuple, data.edge_index.t().tolist()))
    src, dst = out.node[out.row].cpu().tolist(), out.node[out.col].cpu().tolist()
    assert all((a, b) in edges for a, b in zip(src, dst))


@pytest.mark.parametrize("fanout", [[5, 3, 2], [-1, 4]])
def test_reads_the_device_twice_per_hop(fanout):
    """On CUDA each host read of a device tensor stalls the host: a hop reads the number of
    edges drawn and of nodes new to the batch, nothing else (the seed nodes are host tensors)."""
    from op_counter import OpCounter

    s = TorchNeighborSampler(_graph(), fanout)
    index = NodeSamplerInput(input_id=torch.arange(17), node=torch.randperm(200)[:17])
    with OpCounter() as c:
        c.host(index.node, index.input_id)
        out = s.sample_from_nodes(index)
    assert len(out.num_sampled_nodes) == len(fanout) + 1
    assert c.counts()["syncs"] == 2 * len(fanout), dict(c.sync_ops)


def test_per_node_scratch_is_12_bytes_and_outputs_int64():
    """Every rank keeps the sampler's per-node scratch (degree, batch ids, claims) for the whole
    graph: int32, 12 bytes per node (papers100M: 1.3 GB a rank, not 2.7). What it returns is
    int64, as PyG's loaders expect."""
    data = _graph()
    s = TorchNeighborSampler(data, [5, 3])
    out = _sample(s, torch.arange(30))
    scratch = (s.deg, s._assoc, s._claim)
    assert sum(t.numel() * t.element_size() for t in scratch) == 12 * data.num_nodes
    assert all(t.dtype == torch.long for t in (out.node, out.row, out.col, out.edge))
    assert bool((s._assoc == -1).all()) and bool((s._claim == torch.iinfo(torch.int32).max).all())  # reset


class _KeepEvery:
    """An expand rule keeping the hop's edges whose source id is divisible by ``m`` (0: none)."""

    def __init__(self, m):
        self.m, self.calls = m, []

    def __call__(self, hop, src, dst, num_dst, partial):
        self.calls.append((hop, src.numel(), num_dst, partial))
        keep = (src % self.m == 0) if self.m else torch.zeros_like(src, dtype=torch.bool)
        return keep, (partial or 0) + 1


def test_sampling_less_expands_only_the_sources_of_kept_edges():
    """#40 item 2: after each hop but the last, a new node is expanded only if the rule keeps one
    of its edges; every edge drawn is still a graph edge into a node that was expanded."""
    n = 400
    ei = random_graph(n, 6000, seed=4)
    adj = set(map(tuple, ei.t().tolist()))
    seeds = NodeSamplerInput(None, torch.arange(20))
    full = TorchNeighborSampler(Data(edge_index=ei, num_nodes=n), [6, 5, 4], seed=1)
    less = TorchNeighborSampler(Data(edge_index=ei, num_nodes=n), [6, 5, 4], seed=1)
    assert full.expand_rule is None
    a = full.sample_from_nodes(seeds)
    less.expand_rule = _KeepEvery(1)  # keeps every edge: the full sample, draw for draw
    b = less.sample_from_nodes(seeds)
    assert torch.equal(a.node, b.node) and torch.equal(a.row, b.row) and torch.equal(a.col, b.col)
    less.expand_rule = rule = _KeepEvery(3)
    c = less.sample_from_nodes(seeds)
    assert [h for h, *_ in rule.calls] == [0, 1] and rule.calls[1][3] == 1  # not after the last hop
    assert sum(c.num_sampled_nodes) < sum(a.num_sampled_nodes)
    ends = [0]
    for k in c.num_sampled_edges:
        ends.append(ends[-1] + k)
    first = [0]
    for k in c.num_sampled_nodes:
        first.append(first[-1] + k)
    for hop in (1, 2):  # hop h+1 draws in-edges of the hop-h new nodes that are a kept edge's source
        kept_src = {int(c.row[i]) for i in range(ends[hop - 1], ends[hop]) if int(c.node[c.row[i]]) % 3 == 0}
        expanded = set(range(first[hop], first[hop + 1])) & kept_src
        targets = set(c.col[ends[hop]:ends[hop + 1]].tolist())
        with_in_edges = {t for t in expanded if int(full.deg[c.node[t]]) > 0}
        assert targets == with_in_edges and len(expanded) < first[hop + 1] - first[hop]
    assert all((int(c.node[r]), int(c.node[t])) in adj for r, t in zip(c.row.tolist(), c.col.tolist()))
    less.expand_rule = _KeepEvery(0)  # keeps nothing: only the first hop is drawn
    d = less.sample_from_nodes(seeds)
    assert d.num_sampled_edges[1:] == [0, 0] and d.num_sampled_nodes[2:] == [0, 0]
