"""What every Unifews layer shares: the edge-pruning step and its bookkeeping."""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from ...sparsify import check_threshold, edge_keep_mask, edge_scores, locked_edges
from ..linear import UnifewsLinear

PairTensor = Tuple[Tensor, Tensor]
#: Given a layer's kept edges (target-numbered), the sorted target rows a later layer reads,
#: or ``None`` for all of them.
RowsFn = Callable[[Tensor], Optional[Tensor]]


def row_positions(rows: Tensor, num_rows: int) -> Tensor:
    """``pos[r]`` = index of row ``r`` in ``rows``, ``-1`` for rows not in it."""
    pos = torch.full((num_rows,), -1, dtype=torch.long, device=rows.device)
    pos[rows] = torch.arange(rows.numel(), device=rows.device)
    return pos


def split_pair(x: Union[Tensor, PairTensor]) -> PairTensor:
    """``(x_src, x_dst)`` from a tensor (square graph) or a pair (bipartite sampled block)."""
    if isinstance(x, Tensor):
        return x, x
    if len(x) != 2:
        raise ValueError(f"x must be a tensor or a (x_src, x_dst) pair, got a sequence of {len(x)}")
    return x[0], x[1]


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int) -> None:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.numel():
        max_src, max_dst = edge_index.amax(dim=1).tolist()  # one device sync for both
        if max_src >= num_src or max_dst >= num_dst:
            raise ValueError(f"edge_index refers to node {max_src} -> {max_dst}, "
                             f"but x has {num_src} source and {num_dst} target nodes")


class UnifewsConv(MessagePassing):
    """Base of the sparsified layers: messages factor as ``w_e * h_src(e)`` and edges whose
    message norm is below ``thr_a`` times the layer's mean are dropped before aggregation.

    Subclasses implement ``forward`` and :meth:`prepare_edges`, and call :meth:`prune_edges`
    between computing ``h_src`` and propagating, then :meth:`restrict_targets` and
    :meth:`propagate` over the kept edges into the targets that are read.

    ``forward(..., out_rows=fn)``: after pruning, ``fn(kept_edge_index)`` names the target rows
    to compute (``None``: all); the output then has those rows only, in that order. The stack
    uses it so that a node whose every outgoing edge was pruned is neither aggregated into nor
    transformed at the layer before.
    """

    #: whether forward takes the initial representation ``x_0`` (GCNII)
    needs_x0 = False
    #: names of the linear maps applied to source rows (the rest are applied to target rows)
    source_side_weights: Tuple[str, ...] = ()

    def __init__(self, thr_a: float = 0.0, lock_self_loops: bool = True, **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        self.thr_a = thr_a
        self.lock_self_loops = lock_self_loops
        self.last_edges_in = 0
        self.last_edges_kept = 0
        self.last_edges_computed = 0
        self.last_prop_channels = 0

    @property
    def thr_a(self) -> float:
        return self._thr_a

    @thr_a.setter
    def thr_a(self, value: float) -> None:
        self._thr_a = check_threshold("thr_a", value)

    # The threshold is part of the layer's state: a checkpoint holds the model as it was
    # (a schedule may have moved it), and loading one brings it back.
    def get_extra_state(self) -> dict:
        return {"thr_a": self.thr_a}

    def set_extra_state(self, state: dict) -> None:
        self.thr_a = state["thr_a"]

    @staticmethod
    def prepare_edges(edge_index: Tensor, num_src: int, num_dst: int,
                      edge_weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Edges and message weights of the unpruned block (self-loops, normalisation).

        The stack calls this once per minibatch; weights are then carried with the surviving
        edges, so pruning never renormalises the remaining messages.
        """
        return edge_index, edge_weight

    def prune_edges(self, edge_index: Tensor, edge_weight: Optional[Tensor], src_norm: Tensor,
                    locked: Optional[Tensor] = None, reference: Optional[Tensor] = None) -> Optional[Tensor]:
        """Bool mask of kept edges, or ``None`` when nothing is pruned (``thr_a == 0``)."""
        self.last_edges_in = self.last_edges_kept = edge_index.size(1)
        if self.thr_a == 0:
            return None
        lock = locked_edges(edge_index, lock_self_loops=self.lock_self_loops)
        if locked is not None:
            lock = locked if lock is None else lock | locked
        scores = edge_scores(src_norm, edge_index[0], edge_weight)
        keep = edge_keep_mask(scores, self.thr_a, lock, reference)
        self.last_edges_kept = int(keep.sum())
        return keep

    @staticmethod
    def select(keep: Optional[Tensor], edge_index: Tensor, *per_edge: Optional[Tensor]):
        """Keep only the surviving edges (and their per-edge tensors)."""
        if keep is None:
            return (edge_index, *per_edge)
        idx = keep.nonzero().view(-1)
        return (edge_index.index_select(1, idx),
                *(None if t is None else t.index_select(0, idx) for t in per_edge))

    def restrict_targets(self, out_rows: Optional[RowsFn], num_dst: int, edge_index: Tensor,
                         *per_edge: Optional[Tensor]):
        """``(rows, edge_index, *per_edge)`` limited to the target rows ``out_rows`` asks for,
        targets renumbered ``0 .. len(rows) - 1``; ``rows`` is ``None`` when all are computed."""
        self.last_edges_computed = edge_index.size(1)
        rows = None if out_rows is None else out_rows(edge_index)
        if rows is None:
            return (None, edge_index, *per_edge)
        dst = row_positions(rows, num_dst)[edge_index[1]]
        idx = (dst >= 0).nonzero().view(-1)
        self.last_edges_computed = idx.numel()
        ei = torch.stack([edge_index[0].index_select(0, idx), dst.index_select(0, idx)])
        return (rows, ei, *(None if t is None else t.index_select(0, idx) for t in per_edge))

    @staticmethod
    def take_rows(rows: Optional[Tensor], x: Tensor) -> Tensor:
        return x if rows is None else x.index_select(0, rows)

    def message(self, x_j: Tensor, edge_weight: Optional[Tensor]) -> Tensor:
        if edge_weight is None:
            return x_j
        return x_j * edge_weight.view(-1, *([1] * (x_j.dim() - 1)))

    def weight_layers(self) -> list[UnifewsLinear]:
        return [m for m in self.modules() if isinstance(m, UnifewsLinear)]

    def set_thr_w(self, value: float) -> None:
        for lin in self.weight_layers():
            lin.thr_w = value

    def propagation_macs(self) -> tuple[int, int]:
        """(dense, sparse) propagation MACs of the last forward: over the edges it received, and
        over the kept edges it aggregated."""
        c = self.last_prop_channels
        return self.last_edges_in * c, self.last_edges_computed * c

    def _finish(self, out: Tensor, keep: Optional[Tensor], num_edges: int, return_kept: bool):
        if not return_kept:
            return out
        if keep is None:
            keep = torch.ones(num_edges, dtype=torch.bool, device=out.device)
        return out, keep
