"""Edge selection and row trimming between the rule and the aggregation: pure functions of tensors.

A layer's rule gives a bool mask of the edges it keeps; these functions turn it into the edges a
layer aggregates and the target rows it computes (a row no later layer reads is skipped), and say
what was selected as a :class:`Selection`, which the layer returns. :class:`LayerPlan` is what a
stack (or layer-wise inference) tells a layer beyond PyG's ``(x, edge_index, edge_weight)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .constants import slot_ids

Count = Union[int, Tensor]


@dataclass
class LayerPlan:
    """What a stack tells one layer about one sampled block (or layer-wise inference batch).

    Args:
        prepared: the edges and weights come from the conv's ``prepare_edges`` /
            ``prepare_block`` with no user weights: they are not checked or prepared again, and
            the weights are taken as non-negative.
        locked: ``[E]`` bool, edges never pruned (the seeds' in-edges), or with ``bounds`` an
            int: the first ``locked`` edges.
        num_next: the next layer's targets are rows ``0 .. num_next - 1``: only the rows it reads
            (those and the sources of the kept edges into them) are computed.
        valid: ``[E]`` bool, the edges given that are this layer's (the rest are ignored: a stack
            hands on the previous layer's edges without compacting them).
        bounds: host counts, ``bounds[k]`` of the edges given are those into the targets of the
            ``k``-th layer from this one, each a prefix (a sampler's hop-ordered block).
        score_mean: the rule's mean, taken elsewhere: over more edges than these (layer-wise
            inference), or over these, from rows not all given (a loader that applied the first
            layer's rule before gathering: the rows it left out are zeros here).
        rule_applied: the edges given are those the rule keeps (layer-wise inference applied it
            from every node's norm): not scored again.
        fused: with no gradient, aggregate by one sparse-dense product (no per-edge messages).
        canonical: that product's matrix in cuSPARSE's canonical CSR (default: on CUDA; see
            :func:`~unifews_dist.sparsify.spmm.csr_adjacency`).
        source_channels: the sources' rows hold only these channels (the conv's
            ``aggregated_channels``): only they are propagated.
        return_kept: the :class:`Selection` carries the rule's bool mask of the edges given.
    """

    prepared: bool = True
    locked: Union[None, Tensor, int] = None
    num_next: Optional[int] = None
    valid: Optional[Tensor] = None
    bounds: Optional[Sequence[int]] = None
    score_mean: Optional[Tensor] = None
    rule_applied: bool = False
    fused: bool = False
    canonical: Optional[bool] = None
    source_channels: Optional[Tensor] = None
    return_kept: bool = False


class Selection(NamedTuple):
    """What a layer aggregated.

    ``rows``: the target rows computed (``None``: all); ``edge_index``: the kept edges, targets
    renumbered to positions in ``rows``; ``renumbered``: the same edges with both ends
    renumbered (valid where the source is a row computed: every edge into the next layer's
    targets); ``edge_weight``: their prepared weights, which the next layer takes;
    ``message_weight``: what their messages are weighed by (the prepared weights, or the conv's
    own: GATv2's attention); ``bounds``: with the layer's ``bounds``, the same for the kept edges
    and the later layers. Counts (host ints, or device tensors read only when logged): ``edges_in`` reached the
    layer, ``edges_kept`` the rule kept; the layer then fills ``channels`` (of a message unpruned),
    ``channels_computed`` (of a message propagated) and, when asked, ``kept`` (the rule's mask).
    """

    rows: Optional[Tensor]
    renumbered: Optional[Tensor]
    edge_index: Tensor
    edge_weight: Optional[Tensor]
    message_weight: Optional[Tensor]
    bounds: Optional[List[int]]
    edges_kept: Count
    edges_in: Count = 0
    channels: int = 0
    channels_computed: int = 0
    kept: Optional[Tensor] = None

    @property
    def edges_computed(self) -> int:
        return self.edge_index.size(1)


def hop_sums(counts: Optional[Sequence[int]], num_layers: int) -> Optional[List[int]]:
    """Running sums of per-hop counts (host numbers), or ``None`` when no counts are given."""
    if counts is None:
        return None
    if len(counts) < num_layers:
        raise ValueError(f"{num_layers} layers need per-hop counts for {num_layers} hops, got {list(counts)}")
    return list(accumulate(int(c) for c in counts))


def take_rows(rows: Optional[Tensor], x: Tensor) -> Tensor:
    """``x``'s rows ``rows`` (``None``: all)."""
    return x if rows is None else x.index_select(0, rows)


def compact(keep: Optional[Tensor], edge_index: Tensor, *per_edge: Optional[Tensor]):
    """Only the edges ``keep`` marks (and their per-edge tensors); ``keep=None``: all."""
    if keep is None:
        return (edge_index, *per_edge)
    idx = keep.nonzero().view(-1)
    return (edge_index.index_select(1, idx), *(None if t is None else t.index_select(0, idx) for t in per_edge))


def rows_read(keep: Tensor, src: Tensor, dst: Optional[Tensor], num_src: int, num_dst: int, num_next: int,
              exact: bool) -> Tuple[Tensor, Tensor]:
    """``(read, pos)``: ``read[j]`` whether the next layer reads row ``j`` (the next targets and the
    sources of the kept edges into them: they are among this layer's targets, as in any sampled
    block), and ``pos[j]`` the position of row ``j`` among the rows read (for ``j < num_dst``;
    with ``exact``, ``pos[num_dst]`` is the number of rows read). ``dst=None``: every edge given
    goes into the next targets (the prefix of a block that holds them). ``exact``: the next layer
    reads only edges from rows read; otherwise an unread row's position is kept in range (the
    previous row read's), as edges left for a validity mask are still gathered."""
    assert num_next >= 1, num_next  # row 0 is read: the spare slot of edges not into the next targets
    size = max(num_src, num_dst)
    # slot 0 before the rows (this buffer's cumsum is read's exclusive cumsum, the positions),
    # then the next targets set: one op on a cached constant, no zeros and fill
    buf = slot_ids(size + 1, src.device) <= num_next
    read = buf[1:]
    into_next = keep if dst is None else keep & (dst < num_next)
    # an edge not into the next targets marks row 0, which is read anyway (a next target)
    read.index_fill_(0, src * into_next, True)
    return read, (buf.cumsum(0) if exact else read.cumsum(0) - 1)


def select_edges(keep: Optional[Tensor], num_next: Optional[int], num_src: int, num_dst: int,
                 edge_index: Tensor, edge_weight: Optional[Tensor] = None, message_weight: Optional[Tensor] = None,
                 bounds: Optional[Sequence[int]] = None) -> Selection:
    """The kept edges into the target rows computed, targets renumbered to positions in ``rows``,
    with their weights (``message_weight``: the messages' own, when they are not ``edge_weight``).

    With ``num_next``, the rows computed are ``0 .. num_next - 1`` and the sources of the kept
    edges into them; the rest are read by no later layer. Rows can only be skipped when an edge
    was pruned (in a sampled block every node has an edge to the hop before it). Targets of edges
    that are not kept may lie anywhere below ``max(num_src, num_dst)``. With ``bounds`` (see
    :class:`LayerPlan`) the edges keep their order, the counts come in one device read
    (:func:`_select_counted`), and the selection holds the kept edges' bounds.
    """
    per_edge = (edge_weight, message_weight)
    nxt = None if bounds is None else list(bounds[1:])
    if keep is not None and bounds is not None and edge_index.size(1) and any(b != bounds[0] for b in nxt):
        return _select_counted(keep, num_next, num_src, num_dst, edge_index, per_edge, list(bounds))
    rows = pos = None
    kept: Count = edge_index.size(1)
    if keep is not None and num_next is not None and num_next < num_dst:
        src, dst = edge_index
        kept = keep.sum()  # by the rule; fewer are aggregated
        read, pos = rows_read(keep, src, dst, num_src, num_dst, num_next, exact=False)
        keep = keep & read.index_select(0, dst)
        rows = read[:num_dst].nonzero().view(-1)
    idx = None if keep is None else keep.nonzero().view(-1)
    if idx is not None:
        if rows is None:
            kept = idx.numel()
        edge_index = edge_index.index_select(1, idx)
        per_edge = tuple(None if t is None else t.index_select(0, idx) for t in per_edge)
    if nxt is not None and idx is not None:  # (only here when every edge is every later layer's)
        nxt = [edge_index.size(1)] * len(nxt)
    return _selected(rows, pos, edge_index, per_edge, nxt, kept)


def _select_counted(keep: Tensor, num_next: Optional[int], num_src: int, num_dst: int, edge_index: Tensor,
                    per_edge: tuple, bounds: List[int]) -> Selection:
    """:func:`select_edges` given the edges' bounds: every count the layer needs (kept edges by the
    rule and into each later layer's targets, rows read next) comes in one transfer, and the kept
    edges and rows are then found without a device read (``nonzero_static``). ``keep`` is the
    rule's fresh mask; it is narrowed in place to the edges aggregated."""
    src, dst = edge_index
    head = bounds[1]  # the edges into the next layer's targets: the first ``head``
    csum = keep.cumsum(0)  # before narrowing: the edges into later targets are all aggregated
    ends = [b for b in bounds[1:] if b > 0]
    parts = [csum[b - 1] for b in ends] + [csum[-1]]
    read = pos = None
    if num_next is not None and num_next < num_dst:
        read, pos = rows_read(keep[:head], src[:head], None, num_src, num_dst, num_next, exact=True)
        tail = keep[head:]
        tail &= read.index_select(0, dst[head:])
        parts += [tail.sum(), pos[num_dst]]  # (pos: read's exclusive cumsum)
    counts = torch.stack(parts).tolist()  # the layer's one device read
    at = dict(zip(ends, counts))
    nxt = [at.get(b, 0) for b in bounds[1:]]
    kept = counts[len(ends)]  # by the rule; fewer are aggregated when rows are skipped
    aggregated = kept if read is None else nxt[0] + counts[-2]
    idx = torch.nonzero_static(keep, size=aggregated).view(-1)
    edge_index = edge_index.index_select(1, idx)
    per_edge = tuple(None if t is None else t.index_select(0, idx) for t in per_edge)
    rows = None
    if read is not None:
        rows = torch.nonzero_static(read[:num_dst], size=counts[-1]).view(-1)
    return _selected(rows, pos, edge_index, per_edge, nxt, kept)


def _selected(rows, pos, edge_index, per_edge, bounds, kept) -> Selection:
    renumbered = None
    if pos is not None:  # both ends in one gather: the targets for this layer, both for the next
        renumbered = pos.index_select(0, edge_index.reshape(-1)).view(2, -1)
        edge_index = torch.stack([edge_index[0], renumbered[1]])
    weight, message = per_edge
    return Selection(rows, renumbered, edge_index, weight, weight if message is None else message, bounds, kept)


def in_degree_ptr(edge_index: Tensor, num_targets: int) -> Tensor:
    """CSR row pointers of the edges by target: ``ptr[v + 1] - ptr[v]`` is ``v``'s in-degree."""
    counts = torch.bincount(edge_index[1], minlength=num_targets)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def in_edges_of(ei: Tensor, ew: Optional[Tensor], targets: Tensor, n: int):
    """The edges into ``targets``, targets renumbered to positions in ``targets`` and sorted by them."""
    pos = torch.full((n,), -1, dtype=torch.long, device=ei.device)
    pos[targets] = torch.arange(targets.numel(), device=ei.device)
    t = pos[ei[1]]
    idx = (t >= 0).nonzero().view(-1)
    idx = idx[torch.argsort(t[idx], stable=True)]
    return torch.stack([ei[0, idx], t[idx]]), None if ew is None else ew[idx]


def hops_with_loops(cum_n: List[int], cum_e: List[int], num_edges: int, num_layers: int,
                    device) -> Tuple[Tensor, List[int]]:
    """A sampled block's order with a self-loop per node added: positions into ``[edges, loops]``
    (the block's ``num_edges`` edges, then one loop per node) listing hop by hop that hop's edges
    and then the loops of that hop's nodes, and each layer's edge count: every layer's edges (its
    targets' in-edges and self-loops) are then a prefix, found without reading the device."""
    parts, e0, n0 = [], 0, 0
    for h in range(num_layers):  # hop h: its edges (into hop-h nodes), then those nodes' loops
        parts += [torch.arange(e0, cum_e[h], device=device),
                  torch.arange(num_edges + n0, num_edges + cum_n[h], device=device)]
        e0, n0 = cum_e[h], cum_n[h]
    counts = [cum_e[num_layers - 1 - i] + cum_n[num_layers - 1 - i] for i in range(num_layers)]
    return torch.cat(parts), counts
