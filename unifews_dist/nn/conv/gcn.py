"""GCN with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from ..linear import UnifewsLinear
from .base import UnifewsConv


class GCNNormConv(UnifewsConv):
    """A conv whose edges are GCN's: a self-loop for every node and the symmetric normalisation
    ``1 / sqrt(d_i d_j)`` of :func:`gcn_norm` (GCN, GCNII)."""

    adds_self_loops = True

    @staticmethod
    def prepare_edges(edge_index: Tensor, num_src: int, num_dst: int,
                      edge_weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        ei, ew = gcn_norm(edge_index, edge_weight, num_src, add_self_loops=True)
        if num_dst < num_src:  # self-loops of source-only nodes count in their degree only
            keep = ei[1] < num_dst
            ei, ew = ei[:, keep], ew[keep]
        return ei, ew

    @staticmethod
    def with_self_loops(edge_index: Tensor, num_nodes: int) -> Tuple[Tensor, Optional[Tensor]]:
        """Normalised as :func:`gcn_norm` does (a self-loop per node; an edge that already is one
        weighs 0, so it is counted once), without reading the device."""
        loops = torch.arange(num_nodes, device=edge_index.device)
        ei = torch.cat([edge_index, loops.expand(2, -1)], dim=1)
        w = torch.cat([(edge_index[0] != edge_index[1]).float(), torch.ones(num_nodes, device=edge_index.device)])
        return gcn_norm(ei, w, num_nodes, add_self_loops=False)  # the loops are in ei already


class UnifewsGCNConv(GCNNormConv):
    r"""Graph convolution (Kipf & Welling) with entry-wise pruning.

    .. math::
        h = x W_m^\top, \qquad
        x'_i = \sum_{j \in \mathcal{N}(i) \cup \{i\},\; s_{ji} \ge \theta_a \bar s}
               \frac{1}{\sqrt{\hat d_i \hat d_j}} h_j + b,
        \qquad s_{ji} = \frac{\lVert h_j \rVert_2}{\sqrt{\hat d_i \hat d_j}}

    where :math:`\bar s` is the mean message norm of the layer and :math:`W_m` the weight
    pruned by :class:`UnifewsLinear`. Self-loops are never pruned. Equal to
    :class:`torch_geometric.nn.GCNConv` when ``thr_a = thr_w = 0``.

    Args:
        in_channels, out_channels: feature sizes.
        thr_a: edge threshold (``0`` keeps every edge).
        thr_w: weight threshold (``0`` keeps every entry).
        bias: add a learnable bias.
    """

    source_side_weights = ("lin",)

    def __init__(self, in_channels: int, out_channels: int, thr_a: float = 0.0, thr_w: float = 0.0,
                 bias: bool = True, **kwargs):
        super().__init__(thr_a=thr_a, **kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin = UnifewsLinear(in_channels, out_channels, bias=False, thr_w=thr_w)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin.reset_parameters()
        nn.init.xavier_uniform_(self.lin.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def transform(self, x_src: Tensor, x_dst: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.lin(x_src)
        return h, h[: x_dst.size(0)]

    def combine(self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor]) -> Tensor:
        return agg if self.bias is None else agg + self.bias
