"""The first layer's edge rule as a loader applies it, before a single feature row is gathered.

For a conv that scores its inputs (:attr:`~unifews_dist.nn.UnifewsConv.scores_inputs`: SAGE), an
edge's score at the first layer is its prepared weight (from the block's structure) times its
source's input feature norm, and the threshold is relative to the mean over the layer's edges:
all known from the block and every node's norm, computed once. A stack that skips unread rows
reads a node's input row only as a source of an edge the first layer keeps, or as a target the
second layer reads: rows its own targets, or sources of kept edges. A node that is neither (an
outermost-hop node whose every out-edge the rule drops, an inner one whose out-edges it drops
and which the second layer does not target) is read by no layer: its row need not be gathered,
moved or computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ...sparsify import edge_keep_mask, edge_scores
from ..selection import hop_sums


@dataclass(frozen=True)
class InputRule:
    """What a loader needs to apply a stack's first-layer rule (:meth:`UnifewsGNN.input_rule`):
    the conv class (its edge preparation), the depth, and which edges the rule locks in training.
    Plain values: it travels to DataLoader workers."""

    conv: type
    num_layers: int
    lock_seeds: bool
    lock_self_loops: bool

    def rows_read(self, norms: Tensor, edge_index: Tensor, num_sampled_nodes: Sequence[int],
                  num_sampled_edges: Sequence[int], batch_size: int, thr_a: float) -> Tuple[Tensor, Tensor]:
        """``(rows, mean)`` of a sampled block (hop-ordered, seeds first, as the stack takes it):
        the block's rows some layer may read at a first-layer threshold of ``thr_a`` or above
        (the second layer's targets, the first's with one layer, and the sources of the edges the
        rule keeps), and
        the rule's mean score over the first layer's edges, which the stack then uses as is.
        ``norms``: the block's nodes' input norms. The same functions as the layer's rule
        (:meth:`UnifewsConv.prepare_block`, ``edge_scores``, ``edge_keep_mask``), in the same
        order, so on one device the stack's rule at ``thr_a`` keeps exactly the edges whose
        sources are listed here, and at a higher threshold a subset of them."""
        L = self.num_layers
        cum_n = hop_sums(num_sampled_nodes, L + 1)
        num_src, num_dst = cum_n[L], cum_n[L - 1]
        ei, ew, counts = self.conv.prepare_block(edge_index, num_src, num_dst, L, num_sampled_nodes,
                                                 num_sampled_edges)
        src, dst = ei[0, :counts[0]], ei[1, :counts[0]]
        ew = None if ew is None else ew[:counts[0]]
        scores = edge_scores(norms, src, ew, nonneg=True)
        mean = scores.mean()
        if thr_a == 0 or src.numel() == 0:
            return torch.arange(num_src, device=norms.device), mean
        lock = src == dst if self.lock_self_loops else None
        if self.lock_seeds:
            lock = dst < batch_size if lock is None else lock | (dst < batch_size)
        keep = edge_keep_mask(scores, thr_a, lock, mean=mean)
        read = torch.zeros(num_src, dtype=torch.bool, device=norms.device)
        read[:cum_n[L - 2] if L > 1 else num_dst] = True  # the rows the next layer targets
        read[src[keep]] = True
        return read.nonzero().view(-1), mean

    def hop_kept(self, src_norms: Tensor, dst: Tensor, num_dst: int, hop: int, thr_a: float,
                 partial: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``(keep, partial)``: the rule estimated on one hop's edges while sampling (a sampler that
        samples less expands only the sources of the kept ones). ``src_norms``: the edges' sources'
        input norms; ``dst``: their targets, positions among the hop's ``num_dst`` targets (whose
        in-edges are all this hop's). The weights are the conv's on these edges alone (a conv
        without self-loops weighs an edge from its target's in-edges). The mean is not known
        before the last hop: it is estimated by the mean over the hops so far (``partial``: their
        float64 score sum and count, returned updated), an approximation of the method. Edges into
        the seeds (hop 0) are kept when the rule locks them."""
        ei = torch.stack([torch.arange(dst.numel(), device=dst.device), dst])
        _, w = self.conv.prepare_edges(ei, dst.numel(), num_dst)
        scores = src_norms if w is None else src_norms * w
        now = torch.stack([scores.sum(dtype=torch.float64), torch.tensor(float(scores.numel()), dtype=torch.float64,
                                                                          device=scores.device)])
        partial = now if partial is None else partial + now
        if thr_a == 0 or (hop == 0 and self.lock_seeds) or scores.numel() == 0:
            return torch.ones_like(scores, dtype=torch.bool), partial
        return scores >= thr_a * (partial[0] / partial[1]).to(scores.dtype), partial
