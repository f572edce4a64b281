"""A pure-PyTorch neighbor sampler with per-hop counts.

Why our own: pyg-lib (PyG's fast sampler) is not on PyPI and cannot be installed everywhere;
torch-sparse's sampler returns no per-hop counts, so layers cannot be trimmed to the nodes
they need; and PyG has no pure-PyTorch sampler. This one is a :class:`BaseSampler`, so PyG's
:class:`NodeLoader` uses it unchanged, and it runs on CPU or CUDA tensors (GPU-resident graph).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput
from torch_geometric.sampler.utils import to_csc

# Nodes with degree up to this many times the fanout draw a random permutation of all their
# neighbours (cost ~ degree); above it, draws with replacement and redraws duplicates
# (collision chance per draw <= 1/_PERM_FACTOR).
_PERM_FACTOR = 4


def _expand_ranges(start: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """(segment id, position) for ``count[i]`` consecutive positions from ``start[i]``."""
    seg = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
    offsets = torch.cumsum(count, 0) - count
    pos = torch.arange(seg.numel(), device=count.device) - offsets[seg] + start[seg]
    return seg, pos


def sample_neighbors(colptr: Tensor, deg: Tensor, nodes: Tensor, k: int,
                     generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Uniformly sample up to ``k`` distinct in-neighbours of each node, without replacement.

    Returns ``(segment, position)``: for each sampled edge, the index into ``nodes`` of its
    target and its position in the CSC ``row`` array. ``k < 0`` takes every neighbour.
    """
    d = deg[nodes]
    start = colptr[nodes]
    dev = nodes.device
    if k < 0:
        return _expand_ranges(start, d)
    take_all = d <= k
    small = ~take_all & (d <= _PERM_FACTOR * k)
    big = d > _PERM_FACTOR * k
    segs, poss = [], []
    idx = take_all.nonzero().view(-1)
    if idx.numel():
        s, p = _expand_ranges(start[idx], d[idx])
        segs.append(idx[s]); poss.append(p)
    idx = small.nonzero().view(-1)
    if idx.numel():  # random keys over all neighbours, keep the k smallest per node
        s, p = _expand_ranges(start[idx], d[idx])
        key = torch.rand(s.numel(), generator=generator, device=dev, dtype=torch.float64) + s
        order = torch.argsort(key)
        s, p = s[order], p[order]
        first = torch.cumsum(d[idx], 0) - d[idx]
        rank = torch.arange(s.numel(), device=dev) - first[s]
        sel = rank < k
        segs.append(idx[s[sel]]); poss.append(p[sel])
    idx = big.nonzero().view(-1)
    if idx.numel():  # with replacement, then redraw duplicates until none are left
        dd = d[idx].unsqueeze(1)
        off = (torch.rand(idx.numel(), k, generator=generator, device=dev, dtype=torch.float64) * dd).long()
        while True:
            off, _ = off.sort(dim=1)
            dup = torch.zeros_like(off, dtype=torch.bool)
            dup[:, 1:] = off[:, 1:] == off[:, :-1]
            if not bool(dup.any()):
                break
            redraw = (torch.rand(int(dup.sum()), generator=generator, device=dev, dtype=torch.float64)
                      * dd.expand_as(off)[dup]).long()
            off[dup] = redraw
        segs.append(idx.repeat_interleave(k)); poss.append((start[idx].unsqueeze(1) + off).view(-1))
    if not segs:
        e = torch.empty(0, dtype=torch.long, device=dev)
        return e, e
    seg, pos = torch.cat(segs), torch.cat(poss)
    order = torch.argsort(seg, stable=True)  # edges grouped by target, in frontier order
    return seg[order], pos[order]


class TorchNeighborSampler(BaseSampler):
    """Uniform neighbor sampling in pure PyTorch, with per-hop node and edge counts.

    Args:
        data: a homogeneous graph (``edge_index`` on CPU or CUDA).
        num_neighbors: fanout per hop (``-1`` = all neighbours).
        seed: base seed; a batch's sample depends only on this seed and its seed nodes, so it
            is reproducible in any DataLoader worker.
        share_memory: keep the CSC graph in shared memory (one copy for forked workers and
            local ranks started by fork).
    """

    def __init__(self, data: Data, num_neighbors: Sequence[int], seed: int = 0, share_memory: bool = False):
        if not num_neighbors:
            raise ValueError("num_neighbors must list one fanout per hop, got an empty list")
        for k in num_neighbors:
            if int(k) != k or (k < 0 and k != -1) or k == 0:
                raise ValueError(f"each fanout must be a positive integer or -1 (all), got {list(num_neighbors)}")
        self.num_neighbors: List[int] = [int(k) for k in num_neighbors]
        self.num_nodes = data.num_nodes
        self.seed = int(seed)
        device = data.edge_index.device
        self.colptr, self.row, self.perm = to_csc(data, device=device, share_memory=share_memory)
        self.deg = self.colptr[1:] - self.colptr[:-1]
        self._assoc: Optional[Tensor] = None

    def sample_from_edges(self, index, neg_sampling=None):
        raise NotImplementedError("TorchNeighborSampler samples from seed nodes only (node-level tasks); "
                                  "for link prediction use PyG's NeighborSampler with pyg-lib")

    @property
    def edge_permutation(self) -> Optional[Tensor]:
        return self.perm

    def _generator(self, seeds: Tensor, input_id: Optional[Tensor]) -> torch.Generator:
        first = int(input_id[0]) if input_id is not None and input_id.numel() else 0
        h = (self.seed * 1_000_003 + int(seeds[0]) * 7919 + int(seeds[-1]) * 104_729
             + seeds.numel() * 31 + first) % (2**63 - 1)
        g = torch.Generator(device=seeds.device)
        g.manual_seed(h)
        return g

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> SamplerOutput:
        seeds = index.node.to(self.colptr.device).long()
        if seeds.numel() == 0:
            raise ValueError("cannot sample from an empty set of seed nodes")
        if self._assoc is None or self._assoc.device != seeds.device:
            self._assoc = torch.full((self.num_nodes,), -1, dtype=torch.long, device=seeds.device)
        assoc = self._assoc
        g = self._generator(seeds, index.input_id)
        nodes = [seeds]
        assoc[seeds] = torch.arange(seeds.numel(), device=seeds.device)
        if int(assoc[seeds].unique().numel()) != seeds.numel():
            assoc[seeds] = -1
            raise ValueError("seed nodes of a batch must be distinct")
        n = seeds.numel()
        frontier_local = torch.arange(n, device=seeds.device)
        frontier = seeds
        rows, cols, edges, n_nodes, n_edges = [], [], [], [n], []
        try:
            for k in self.num_neighbors:
                seg, pos = sample_neighbors(self.colptr, self.deg, frontier, k, g)
                nbr = self.row[pos]
                local = assoc[nbr]
                new = torch.unique(nbr[local < 0])
                assoc[new] = torch.arange(n, n + new.numel(), device=seeds.device)
                n += new.numel()
                rows.append(assoc[nbr]); cols.append(frontier_local[seg]); edges.append(pos)
                n_nodes.append(new.numel()); n_edges.append(pos.numel())
                nodes.append(new)
                frontier, frontier_local = new, assoc[new]
        finally:
            node = torch.cat(nodes)
            assoc[node] = -1  # reset only what this batch touched
        return SamplerOutput(node=node, row=torch.cat(rows), col=torch.cat(cols), edge=torch.cat(edges),
                             batch=None, num_sampled_nodes=n_nodes, num_sampled_edges=n_edges,
                             metadata=(index.input_id, index.time))
