"""GIN with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..linear import UnifewsLinear
from .base import UnifewsConv


class UnifewsGINConv(UnifewsConv):
    r"""Graph isomorphism network layer with entry-wise pruning.

    .. math::
        h = x W_{1,m}^\top, \qquad
        x'_i = W_{2,m}\,\mathrm{ReLU}\Big((1 + \epsilon) h_i + \sum_{j \in \mathcal{N}(i),\;
               \lVert h_j \rVert \ge \theta_a \bar s} h_j + b_1\Big) + b_2

    GIN's MLP ``Linear -> ReLU -> Linear`` of :class:`UnifewsLinear` (weight pruning in both) with
    its first linear map moved before propagation, which is exact for the dense layer
    (``W_1 (\sum_j x_j) = \sum_j W_1 x_j``): the edge rule then scores messages by the norms of
    learned rows, not of the raw input features, and propagates ``out_channels`` rather than
    ``in_channels``. Equal to :class:`torch_geometric.nn.GINConv` over the same MLP when
    ``thr_a = thr_w = 0``.
    """

    source_side_weights = ("mlp.0",)

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

    def transform(self, x_src: Tensor, x_dst: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.mlp[0](x_src, with_bias=False)  # the bias is added once, after the sum
        return h, h[: x_dst.size(0)]

    def combine(self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor]) -> Tensor:
        first, *rest = self.mlp
        h = torch.addcmul(agg, h_dst, 1 + self.eps)
        if first.bias is not None:
            h = h + first.bias
        for m in rest:
            h = m(h)
        return h
