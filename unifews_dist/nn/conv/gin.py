"""GIN with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..linear import UnifewsLinear
from .base import UnifewsConv


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

    def aggregated_channels(self) -> Optional[Tensor]:
        return self.mlp[0].used_inputs()

    def combine(
        self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor], agg_channels: Optional[Tensor] = None
    ) -> Tensor:
        if agg_channels is None:
            return self.mlp(agg + (1 + self.eps) * h_dst)
        first, *rest = self.mlp  # the first map reads only agg_channels of its input
        h = first(agg + (1 + self.eps) * h_dst.index_select(1, agg_channels), columns=agg_channels)
        for m in rest:
            h = m(h)
        return h
