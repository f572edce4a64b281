"""GIN with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ...sparsify import node_norms
from ..linear import UnifewsLinear
from .base import UnifewsConv, check_edge_index, split_pair


class UnifewsGINConv(UnifewsConv):
    r"""Graph isomorphism network layer with entry-wise pruning.

    .. math::
        x'_i = \mathrm{MLP}_m\Big((1 + \epsilon) x_i + \sum_{j \in \mathcal{N}(i),\;
               \lVert x_j \rVert \ge \theta_a \bar s} x_j\Big)

    where the MLP is ``Linear -> ReLU -> Linear`` of :class:`UnifewsLinear` (weight pruning in
    both). Equal to :class:`torch_geometric.nn.GINConv` over the same MLP when
    ``thr_a = thr_w = 0``.
    """

    def __init__(self, in_channels: int, out_channels: int, thr_a: float = 0.0, thr_w: float = 0.0,
                 eps: float = 0.0, train_eps: bool = False, **kwargs):
        super().__init__(thr_a=thr_a, **kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.mlp = nn.Sequential(UnifewsLinear(in_channels, out_channels, thr_w=thr_w), nn.ReLU(),
                                 UnifewsLinear(out_channels, out_channels, thr_w=thr_w))
        self.initial_eps = eps
        if train_eps:
            self.eps = nn.Parameter(torch.tensor([float(eps)]))
        else:
            self.register_buffer("eps", torch.tensor([float(eps)]))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in self.mlp:
            if isinstance(m, UnifewsLinear):
                m.reset_parameters()
        self.eps.data.fill_(self.initial_eps)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,
                edge_weight: Optional[Tensor] = None, locked: Optional[Tensor] = None,
                return_kept: bool = False, prepared: bool = False, num_next: Optional[int] = None,
                valid: Optional[Tensor] = None):
        x_src, x_dst = split_pair(x)
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        if not prepared:  # a stack validates its block once, not in every layer
            check_edge_index(edge_index, n_src, n_dst)
        keep = self.prune_edges(edge_index, edge_weight, node_norms(x_src), locked, valid=valid)
        rows, ei, ew = self.select_edges(keep, num_next, n_src, n_dst, edge_index, edge_weight)
        x_dst = self.take_rows(rows, x_dst)
        self.last_prop_channels = self.in_channels
        agg = self.propagate(ei, x=(x_src, x_dst), edge_weight=ew, size=(n_src, x_dst.size(0)))
        out = self.mlp(agg + (1 + self.eps) * x_dst)
        return self._finish(out, keep, edge_index.size(1), return_kept)
