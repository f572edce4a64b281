"""The pure functions of unifews_dist/nn/selection.py, each against a brute-force reading of its
docstring: which edges a layer aggregates, which target rows it computes, how they are renumbered."""
import pytest
import torch

from unifews_dist.nn.selection import (compact, hop_sums, hops_with_loops, in_degree_ptr, in_edges_of, rows_read,
                                       select_edges, take_rows)


def test_hop_sums_are_running_sums_and_need_a_count_per_layer():
    assert hop_sums(None, 2) is None
    assert hop_sums([3, torch.tensor(4), 5], 2) == [3, 7, 12]
    with pytest.raises(ValueError, match="2 layers need per-hop counts for 2 hops"):
        hop_sums([3], 2)


def test_take_rows_and_compact():
    x = torch.arange(12.0).view(6, 2)
    assert take_rows(None, x) is x
    assert torch.equal(take_rows(torch.tensor([4, 1]), x), x[[4, 1]])
    ei, w = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]), torch.tensor([0.1, 0.2, 0.3, 0.4])
    keep = torch.tensor([True, False, True, False])
    ei2, w2, none = compact(keep, ei, w, None)
    assert torch.equal(ei2, ei[:, [0, 2]]) and torch.equal(w2, w[[0, 2]]) and none is None
    assert compact(None, ei, w)[0] is ei


def _block(seed=0, num_src=40, num_dst=25, num_edges=150):
    """A random block: every target has an in-edge (as in a sampled block), sources anywhere."""
    g = torch.Generator().manual_seed(seed)
    dst = torch.cat([torch.arange(num_dst), torch.randint(0, num_dst, (num_edges - num_dst,), generator=g)])
    src = torch.randint(0, num_src, (num_edges,), generator=g)
    keep = torch.rand(num_edges, generator=g) < 0.4
    return torch.stack([src, dst]), keep


def _brute_rows(ei, keep, num_dst, num_next):
    """The rows the next layer reads: its targets and the sources of the kept edges into them."""
    read = torch.zeros(max(int(ei.max()) + 1, num_dst), dtype=torch.bool)
    read[:num_next] = True
    into = keep & (ei[1] < num_next)
    read[ei[0][into]] = True
    return read


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_read_marks_the_next_targets_and_their_kept_sources(seed):
    ei, keep = _block(seed)
    num_next = 10
    read, pos = rows_read(keep, ei[0], ei[1], 40, 25, num_next, exact=True)
    expect = _brute_rows(ei, keep, 25, num_next)
    assert torch.equal(read[:40], expect[:40])
    assert torch.equal(pos[:25][expect[:25]], torch.arange(int(expect[:25].sum())))  # positions among rows read
    assert int(pos[25]) == int(read[:25].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_select_edges_keeps_the_rule_and_skips_rows_no_layer_reads(seed):
    ei, keep = _block(seed)
    w = torch.rand(ei.size(1))
    num_next = 10
    sel = select_edges(keep.clone(), num_next, 40, 25, ei, w)
    read = _brute_rows(ei, keep, 25, num_next)
    rows = read[:25].nonzero().view(-1)
    aggregated = keep & read[ei[1]]  # kept by the rule, into a row computed
    assert torch.equal(sel.rows, rows)
    assert int(sel.edges_kept) == int(keep.sum()) and sel.edges_computed == int(aggregated.sum())
    pos = torch.full((25,), -1)
    pos[rows] = torch.arange(rows.numel())
    assert torch.equal(sel.edge_index, torch.stack([ei[0][aggregated], pos[ei[1][aggregated]]]))
    assert torch.equal(sel.edge_weight, w[aggregated])


def test_select_edges_without_a_next_layer_keeps_every_row():
    ei, keep = _block(3)
    sel = select_edges(keep, None, 40, 25, ei)
    assert sel.rows is None and torch.equal(sel.edge_index, ei[:, keep]) and sel.edges_kept == int(keep.sum())
    everything = select_edges(None, 10, 40, 25, ei)
    assert everything.rows is None and everything.edge_index is ei and everything.edges_kept == ei.size(1)


@pytest.mark.parametrize("seed", [0, 1])
def test_select_edges_with_bounds_equals_the_masked_path(seed):
    """Hop-ordered edges (those into the next targets first) with their bounds: one device read,
    the same edges, rows and counts as without bounds, and the kept edges' bounds for later layers."""
    ei, keep = _block(seed)
    num_next = 10
    order = torch.argsort((ei[1] >= num_next).long(), stable=True)  # edges into the next targets first
    ei, keep = ei[:, order], keep[order]
    head = int((ei[1] < num_next).sum())
    a = select_edges(keep.clone(), num_next, 40, 25, ei, bounds=[ei.size(1), head])
    b = select_edges(keep.clone(), num_next, 40, 25, ei)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.edge_index, b.edge_index)
    assert a.edges_kept == int(b.edges_kept)
    assert a.bounds == [int((keep & (ei[1] < num_next)).sum())]
    assert torch.equal(a.renumbered[:, :a.bounds[0]], b.renumbered[:, :a.bounds[0]])


def test_in_degree_ptr_and_in_edges_of():
    ei = torch.tensor([[0, 1, 2, 3, 4, 0], [2, 2, 0, 1, 2, 1]])
    assert torch.equal(in_degree_ptr(ei, 4), torch.tensor([0, 1, 3, 6, 6]))
    w = torch.arange(6.0)
    sub, sw = in_edges_of(ei, w, torch.tensor([2, 1]), 5)  # targets 2 then 1, renumbered 0 and 1
    assert torch.equal(sub, torch.tensor([[0, 1, 4, 3, 0], [0, 0, 0, 1, 1]])) and torch.equal(sw, w[[0, 1, 4, 3, 5]])


def test_hops_with_loops_makes_every_layers_edges_a_prefix():
    # 2 layers: hop 0 has 2 nodes and 3 edges into them, hop 1 adds 3 nodes and 4 edges
    cum_n, cum_e, num_edges = [2, 5], [3, 7], 7
    order, counts = hops_with_loops(cum_n, cum_e, num_edges, 2, "cpu")
    assert order.tolist() == [0, 1, 2, 7, 8, 3, 4, 5, 6, 9, 10, 11]
    assert counts == [7 + 5, 3 + 2]  # layer 0: every edge and loop; layer 1: hop 0's
