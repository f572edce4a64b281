"""A pure-PyTorch neighbor sampler with per-hop counts, and no device read but two per hop.

Why our own: pyg-lib (PyG's fast sampler) is not on PyPI and cannot be installed everywhere;
torch-sparse's sampler returns no per-hop counts, so layers cannot be trimmed to the nodes
they need; and PyG has no pure-PyTorch sampler. This one is a :class:`BaseSampler`, so PyG's
:class:`NodeLoader` uses it unchanged, and it runs on CPU or CUDA tensors (GPU-resident graph).
On CUDA every host read of a device tensor stalls the host: each hop reads exactly two sizes
(the edges drawn and the nodes new to the batch); all else has fixed shapes.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput
from torch_geometric.sampler.utils import to_csc

# Nodes with degree up to this many times the fanout take the k smallest of random keys over
# all their neighbours; above it, 2k + _EXTRA_DRAWS draws with replacement, of whose distinct
# values k are taken at random (fewer than k distinct among them: below 1e-15 per node).
_PERM_FACTOR = 4
_EXTRA_DRAWS = 16
_NOT_SLOT = 2.0  # a key above every random key in [0, 1)
_NO_CLAIM = torch.iinfo(torch.int32).max
# The per-node scratch (degree, node -> id in the batch, node -> first edge that reached it) is
# int32: 12 bytes per node of the graph, kept by every rank (papers100M: 1.3 GB). A degree, a
# batch's node count and its edge count all stay below 2**31.


def sample_slots(colptr: Tensor, deg: Tensor, nodes: Tensor, k: int, generator: Optional[torch.Generator] = None,
                 max_degree: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Uniformly sample up to ``k`` distinct in-neighbours of each node, without replacement, in
    fixed-shape slots: ``(pos, valid)``, both ``[len(nodes), k]``: positions in the CSC ``row``
    array, and which slots hold a neighbour (``min(degree, k)`` per node).

    A node of degree ``d <= 4k`` takes the ``k`` smallest of ``d`` random keys. A larger one draws
    ``2k + 16`` neighbours with replacement: the set of distinct values drawn is a uniformly
    random subset given its size, and ``k`` of them are taken by random keys, so the sample is
    a uniform ``k``-subset. ``max_degree`` (the graph's, known on the host) skips the second
    path when no node needs it. Nothing here reads the device.
    """
    n, dev = nodes.numel(), nodes.device
    d = deg.index_select(0, nodes).unsqueeze(1)
    start = colptr.index_select(0, nodes).unsqueeze(1)
    w = _PERM_FACTOR * k
    keys = torch.rand(n, w, generator=generator, device=dev)
    keys.masked_fill_(torch.arange(w, device=dev) >= d, _NOT_SLOT)  # slots past the degree never win
    vals, off = keys.topk(k, dim=1, largest=False, sorted=False)
    valid = vals < _NOT_SLOT
    if max_degree is None or max_degree > w:
        m = 2 * k + _EXTRA_DRAWS
        draws = (torch.rand(n, m, generator=generator, device=dev, dtype=torch.float64) * d).long()
        srt = draws.sort(dim=1).values
        repeat = torch.zeros_like(srt, dtype=torch.bool)
        repeat[:, 1:] = srt[:, 1:] == srt[:, :-1]  # a value drawn before
        keys = torch.rand(n, m, generator=generator, device=dev).masked_fill_(repeat, _NOT_SLOT)
        vals, pick = keys.topk(k, dim=1, largest=False, sorted=False)
        big = d > w
        off = torch.where(big, srt.gather(1, pick), off)
        valid = torch.where(big, vals < _NOT_SLOT, valid)
    return start + off, valid


def _expand_ranges(start: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """(segment id, position) for ``count[i]`` consecutive positions from ``start[i]`` (one read:
    the total)."""
    total = int(count.sum())
    seg = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count, output_size=total)
    offsets = torch.cumsum(count, 0) - count
    pos = torch.arange(total, device=count.device) - offsets[seg] + start[seg]
    return seg, pos


def _expanded(src_ids: Tensor, keep: Tensor, first: int, count: int) -> Tensor:
    """Batch ids of the hop's new nodes (``first .. first + count - 1``) that are the source of a
    kept edge (``src_ids``: the hop's sources' batch ids); one read: how many."""
    hit = torch.zeros(count + 1, dtype=torch.bool, device=keep.device)
    local = (src_ids.long() - first + 1).clamp_(min=0)  # 0: a node seen before this hop
    hit.index_fill_(0, local[keep], True)
    return hit[1:].nonzero().view(-1) + first


class TorchNeighborSampler(BaseSampler):
    """Uniform neighbor sampling in pure PyTorch, with per-hop node and edge counts.

    Args:
        data: a homogeneous graph (``edge_index`` on CPU or CUDA), or a ``(FeatureStore,
            GraphStore)`` pair whose graph store holds it as CSC (``row`` int32 or int64).
        num_neighbors: fanout per hop (``-1`` = all neighbours).
        seed: base seed; a batch's sample depends only on this seed and its seed nodes, so it
            is reproducible in any DataLoader worker.
        share_memory: keep the CSC graph in shared memory (one copy for forked workers and
            local ranks started by fork).

    ``expand_rule`` (default ``None``: every node is expanded): a callable a data module sets to
    sample less (:class:`~unifews_dist.data.loaders.SampleLess`). Called after every hop but the
    last as ``expand_rule(hop, src, dst, num_dst, partial)`` with the hop's edges (``src``: the
    neighbours' node ids, ``dst``: positions of their targets among the hop's ``num_dst``
    targets) and what it returned for the hops before (``None`` first), it returns ``(keep,
    partial)``: a bool mask of the edges it would keep. The hop's new nodes that are the source of
    no kept edge are not expanded: the next hop draws no neighbours for them.
    """

    def __init__(self, data: Data, num_neighbors: Sequence[int], seed: int = 0, share_memory: bool = False):
        if not num_neighbors:
            raise ValueError("num_neighbors must list one fanout per hop, got an empty list")
        for k in num_neighbors:
            if int(k) != k or (k < 0 and k != -1) or k == 0:
                raise ValueError(f"each fanout must be a positive integer or -1 (all), got {list(num_neighbors)}")
        self.num_neighbors: List[int] = [int(k) for k in num_neighbors]
        self.seed = int(seed)
        if isinstance(data, Data):
            self.num_nodes = data.num_nodes
            device = data.edge_index.device
            self.colptr, self.row, self.perm = to_csc(data, device=device, share_memory=share_memory)
        else:  # (FeatureStore, GraphStore): the CSC as stored (a prepared graph's mapped arrays), no copy
            self.row, self.colptr, self.perm = data[1].csc()
            self.num_nodes = self.colptr.numel() - 1
        deg = self.colptr[1:] - self.colptr[:-1]
        self.max_degree = int(deg.max()) if deg.numel() else 0  # once, at construction
        if self.max_degree >= _NO_CLAIM:
            raise ValueError(f"a node has {self.max_degree} in-edges: the sampler counts them in int32 (< 2**31)")
        self.deg = deg.to(torch.int32)
        self._assoc: Optional[Tensor] = None  # node -> id in the batch (-1: not in it)
        self._claim: Optional[Tensor] = None  # node -> first edge that reached it (scratch)
        self.expand_rule = None

    def sample_from_edges(self, index, neg_sampling=None):
        raise NotImplementedError("TorchNeighborSampler samples from seed nodes only (node-level tasks); "
                                  "for link prediction use PyG's NeighborSampler with pyg-lib")

    @property
    def edge_permutation(self) -> Optional[Tensor]:
        return self.perm

    def _generator(self, seeds: Tensor, input_id: Optional[Tensor], device) -> torch.Generator:
        """Seeded from the batch's seed nodes, read on the host (where the loader made them)."""
        first = int(input_id[0]) if input_id is not None and input_id.numel() else 0
        h = (self.seed * 1_000_003 + int(seeds[0]) * 7919 + int(seeds[-1]) * 104_729
             + seeds.numel() * 31 + first) % (2**63 - 1)
        g = torch.Generator(device=device)
        g.manual_seed(h)
        return g

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> SamplerOutput:
        if index.node.numel() == 0:
            raise ValueError("cannot sample from an empty set of seed nodes")
        if index.node.device.type == "cpu" and torch.unique(index.node).numel() != index.node.numel():
            raise ValueError("seed nodes of a batch must be distinct")
        dev = self.colptr.device
        g = self._generator(index.node, index.input_id, dev)
        seeds = index.node.to(dev).long()
        if self._assoc is None or self._assoc.device != dev:
            self._assoc = torch.full((self.num_nodes,), -1, dtype=torch.int32, device=dev)
            self._claim = torch.full((self.num_nodes,), _NO_CLAIM, dtype=torch.int32, device=dev)
        assoc, claim = self._assoc, self._claim
        n = seeds.numel()
        assoc[seeds] = torch.arange(n, device=dev, dtype=torch.int32)
        # frontier nodes have ids first_id .. first_id + len - 1, or frontier_ids when some were not expanded
        frontier, first_id, frontier_ids, partial = seeds, 0, None, None
        nodes, rows, cols, edges, n_nodes, n_edges = [seeds], [], [], [], [n], []
        try:
            for hop, k in enumerate(self.num_neighbors):
                num_targets = frontier.numel()
                if k < 0:
                    seg, pos = _expand_ranges(self.colptr[frontier], self.deg[frontier])
                else:
                    slot_pos, valid = sample_slots(self.colptr, self.deg, frontier, k, g, self.max_degree)
                    e = valid.view(-1).nonzero().view(-1)  # read 1: the edges drawn
                    seg, pos = e // k, slot_pos.view(-1).index_select(0, e)
                nbr = self.row.index_select(0, pos)
                if nbr.dtype != torch.long:  # an int32 CSC (a prepared graph)
                    nbr = nbr.long()
                if nbr.numel() >= _NO_CLAIM:  # (a shape: no device read)
                    raise ValueError(f"one hop of a batch drew {nbr.numel()} edges, more than the sampler's int32 "
                                     f"edge ids hold (2**31 - 1): use a smaller batch_size or fanout")
                # nodes new to the batch, each once, numbered in order of their first edge
                edge_id = torch.arange(nbr.numel(), device=dev, dtype=torch.int32)
                claim.scatter_reduce_(0, nbr, edge_id.masked_fill(assoc.index_select(0, nbr) >= 0, _NO_CLAIM), "amin")
                new = nbr.index_select(0, (claim.index_select(0, nbr) == edge_id).nonzero().view(-1))  # read 2
                claim.index_fill_(0, new, _NO_CLAIM)
                assoc[new] = torch.arange(n, n + new.numel(), device=dev, dtype=torch.int32)
                rows.append(assoc.index_select(0, nbr))
                cols.append(frontier_ids.index_select(0, seg) if frontier_ids is not None else
                            seg + first_id if first_id else seg)
                edges.append(pos)
                n_nodes.append(new.numel())
                n_edges.append(pos.numel())
                nodes.append(new)
                frontier, first_id, frontier_ids = new, n, None
                if self.expand_rule is not None and hop < len(self.num_neighbors) - 1:
                    keep, partial = self.expand_rule(hop, nbr, seg, num_targets, partial)
                    frontier_ids = _expanded(rows[-1], keep, n, new.numel())
                    frontier = new.index_select(0, frontier_ids - n)
                n += new.numel()
        finally:
            node = torch.cat(nodes)
            assoc.index_fill_(0, node, -1)  # reset only what this batch touched
        return SamplerOutput(node=node, row=torch.cat(rows).long(), col=torch.cat(cols), edge=torch.cat(edges),
                             batch=None, num_sampled_nodes=n_nodes, num_sampled_edges=n_edges,
                             metadata=(index.input_id, index.time))
