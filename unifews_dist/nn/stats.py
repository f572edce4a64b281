"""What one layer did in the last forward: the statistics the callbacks log.

Layers fill them with what they know without reading the device: Python ints where the host
knows a count (sizes of tensors), 0-dim device tensors where only the device does (edges kept by
the rule, weight entries kept). Reading an attribute converts to ``int`` (a device read);
:func:`stats_tensor` packs a whole forward's statistics into one device tensor in a few ops and
no read, so a callback can add them up every step and read them once when it logs.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Count = Union[int, Tensor]
#: the per-layer figures the monitors sum and log, in this order
FIELDS = ("edges_dense", "edges_kept", "weight_numel", "weight_nnz", "macs_dense", "macs_sparse")


def _int(v: Count) -> int:
    return int(v)


class EdgeCounts(NamedTuple):
    """What one layer did with the block's edges: host ints, or 0-dim device tensors (read only
    when a statistic is).

    Args:
        dense: edges this layer would aggregate with no pruning anywhere.
        into: edges that reached it (pruned ones from earlier layers are gone).
        kept: edges the pruning rule kept (it aggregates those into the rows it computes).
        computed: messages aggregated (a host int).
        own_loops: self-loops the conv added, one per target (GCN, GCNII, GATv2: the node's own
            term, never pruned), counted in the four above. They are left out of the edge
            statistics, so that edge sparsity is the share of the graph's sampled edges pruned
            for every conv alike (SAGE's and GIN's own term is outside propagation), and kept in
            the MACs, which they cost.
    """

    dense: Count
    into: Count
    kept: Count
    computed: int
    own_loops: int = 0


class LayerStats:
    """One layer's statistics. Edge counts are of the sampled block.

    Args:
        edges: the layer's :class:`EdgeCounts`.
        weights: ``(numel, nnz, rows)`` of each linear map: entries, kept entries, rows multiplied.
        transform_macs_dense: multiply-adds of the linear maps run dense on the whole block.
        channels: ``(channels of each message, channels of each message aggregated)``: fewer are
            aggregated where the channels no kept weight reads are not propagated.
        transform_backend: the transforms' backends, ``+``-joined.
    """

    def __init__(self, edges: EdgeCounts, weights: Sequence[Tuple[int, Count, int]], transform_macs_dense: int,
                 channels: Tuple[int, int], transform_backend: str = "dense"):
        self._loops = int(edges.own_loops)
        self._edges_dense, self._edges_in, self._edges_kept = edges.dense, edges.into, edges.kept
        self._weights = list(weights)
        self.weight_numel = sum(n for n, _, _ in self._weights)
        self._t_dense, self._channels = int(transform_macs_dense), int(channels[0])
        self._prop_macs = int(edges.computed) * int(channels[1])
        self.transform_backend = transform_backend

    @property
    def own_loops(self) -> int:
        """Self-loops the conv added (left out of the edge counts, in the MACs)."""
        return self._loops

    @property
    def edges_dense(self) -> int:
        """The graph's sampled edges this layer would aggregate with no pruning anywhere."""
        return _int(self._edges_dense) - self._loops

    @property
    def edges_in(self) -> int:
        return _int(self._edges_in) - self._loops

    @property
    def edges_kept(self) -> int:
        return _int(self._edges_kept) - self._loops

    @property
    def macs_dense(self) -> int:
        return self._t_dense + _int(self._edges_dense) * self._channels

    @property
    def weight_nnz(self) -> int:
        return sum(_int(k) for _, k, _ in self._weights)

    @property
    def macs_sparse(self) -> int:
        return sum(r * _int(k) for _, k, r in self._weights) + self._prop_macs

    @property
    def edge_sparsity(self) -> float:
        dense = self.edges_dense
        return 1.0 - self.edges_kept / dense if dense else 0.0

    @property
    def weight_sparsity(self) -> float:
        return 1.0 - self.weight_nnz / self.weight_numel if self.weight_numel else 0.0

    def terms(self) -> List[Tuple[int, List[Tuple[int, Tensor]]]]:
        """Each of :data:`FIELDS` as ``(host part, [(coefficient, device scalar), ...])``."""
        def split(v: Count, coef: int = 1):
            return (0, [(coef, v)]) if isinstance(v, Tensor) else (int(v) * coef, [])

        nnz_host, nnz_dev, macs_host, macs_dev = 0, [], self._prop_macs, []
        for _, k, rows in self._weights:
            h, d = split(k)
            nnz_host += h
            nnz_dev += d
            h, d = split(k, rows)
            macs_host += h
            macs_dev += d
        d_host, d_dev = split(self._edges_dense, self._channels)
        (dense_host, dense_dev), (kept_host, kept_dev) = split(self._edges_dense), split(self._edges_kept)
        return [(dense_host - self._loops, dense_dev), (kept_host - self._loops, kept_dev), (self.weight_numel, []),
                (nnz_host, nnz_dev), (self._t_dense + d_host, d_dev), (macs_host, macs_dev)]


def stats_tensor(stats: Sequence[LayerStats], device=None, cache: Optional[dict] = None) -> Tensor:
    """``[len(stats) * len(FIELDS)]`` float64 on ``device``: every layer's :data:`FIELDS`, with
    no device read (a handful of ops whatever the number of layers). ``cache``: a dict kept by
    the caller, where the positions of the device terms (the same every step) are kept."""
    host, idx, coef, dev = [], [], [], []
    for i, s in enumerate(stats):
        for j, (h, terms) in enumerate(s.terms()):
            host.append(float(h))
            for c, t in terms:
                idx.append(i * len(FIELDS) + j)
                coef.append(float(c))
                dev.append(t)
    if device is None:
        device = dev[0].device if dev else torch.device("cpu")
    packed = torch.tensor(host + coef, dtype=torch.float64, device=device)  # one host-to-device copy
    out = packed[:len(host)]
    if dev:
        vals = torch.stack([t.reshape(()) for t in dev])  # (promoted to float64 by the product)
        key = (tuple(idx), str(device))
        if cache is None or key not in cache:
            index = torch.tensor(idx, device=device)
            if cache is not None:
                cache.clear()
                cache[key] = index
        else:
            index = cache[key]
        out.index_add_(0, index, vals.to(device) * packed[len(host):])
    return out
