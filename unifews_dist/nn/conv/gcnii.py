"""GCNII with Unifews edge and weight pruning."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..linear import UnifewsLinear
from ..selection import LayerPlan
from .gcn import GCNNormConv


class UnifewsGCNIIConv(GCNNormConv):
    r"""GCNII layer (Chen et al. 2020) with entry-wise pruning.

    .. math::
        p_i = (1 - \alpha) \sum_{j:\, s_{ji} \ge \theta_a \bar s} \hat a_{ji} x_j + \alpha x^{(0)}_i,
        \qquad x'_i = (1 - \beta) p_i + \beta\, W_m p_i

    with ``a_ji`` the symmetric GCN normalisation with self-loops, ``s_ji = |a_ji| ||x_j||``
    and ``beta = log(theta / layer + 1)``. Equal to :class:`torch_geometric.nn.GCN2Conv`
    (shared weights) when ``thr_a = thr_w = 0``.
    """

    stack_in_out_linears = True

    def __init__(self, channels: int, alpha: float = 0.1, theta: Optional[float] = None,
                 layer: Optional[int] = None, thr_a: float = 0.0, thr_w: float = 0.0, **kwargs):
        super().__init__(thr_a=thr_a, **kwargs)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if (theta is None) != (layer is None):
            raise ValueError(f"theta and layer go together, got theta={theta}, layer={layer}")
        self.channels, self.alpha = channels, alpha
        self.beta = 1.0 if theta is None else math.log(theta / layer + 1)
        self.lin = UnifewsLinear(channels, channels, bias=False, thr_w=thr_w)
        self.reset_parameters()

    @classmethod
    def for_stack(cls, layer, num_layers, in_channels, out_channels, thr_a=0.0, thr_w=0.0, gcnii_alpha=0.1,
                  gcnii_theta=0.5):
        return cls(in_channels, alpha=gcnii_alpha, theta=gcnii_theta, layer=layer + 1, thr_a=thr_a, thr_w=thr_w)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        torch.nn.init.xavier_uniform_(self.lin.weight)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], x_0: Tensor, edge_index: Tensor,
                edge_weight: Optional[Tensor] = None, return_kept: bool = False):
        """``(x, x_0, edge_index)``, as PyG's ``GCN2Conv``; the rest as :meth:`UnifewsConv.forward`."""
        out, sel = self.step(x, edge_index, edge_weight, LayerPlan(prepared=False, return_kept=return_kept), x0=x_0)
        return (out, sel.kept) if return_kept else out

    def combine(self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor]) -> Tensor:
        p = (1 - self.alpha) * agg + self.alpha * x0
        return (1 - self.beta) * p + self.beta * self.lin(p)
