"""GCNII with Unifews edge and weight pruning."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ...sparsify import node_norms
from ..linear import UnifewsLinear
from .base import UnifewsConv, check_edge_index, split_pair
from .gcn import UnifewsGCNConv


class UnifewsGCNIIConv(UnifewsConv):
    r"""GCNII layer (Chen et al. 2020) with entry-wise pruning.

    .. math::
        p_i = (1 - \alpha) \sum_{j:\, s_{ji} \ge \theta_a \bar s} \hat a_{ji} x_j + \alpha x^{(0)}_i,
        \qquad x'_i = (1 - \beta) p_i + \beta\, W_m p_i

    with ``a_ji`` the symmetric GCN normalisation with self-loops, ``s_ji = |a_ji| ||x_j||``
    and ``beta = log(theta / layer + 1)``. Equal to :class:`torch_geometric.nn.GCN2Conv`
    (shared weights) when ``thr_a = thr_w = 0``.
    """

    needs_x0 = True
    keeps_edge_order = False  # self-loops added

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

    def reset_parameters(self) -> None:
        super().reset_parameters()
        torch.nn.init.xavier_uniform_(self.lin.weight)

    prepare_edges = staticmethod(UnifewsGCNConv.prepare_edges)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], x_0: Tensor, edge_index: Tensor,
                edge_weight: Optional[Tensor] = None, locked: Optional[Tensor] = None,
                return_kept: bool = False, prepared: bool = False, num_next: Optional[int] = None,
                valid: Optional[Tensor] = None):
        x_src, x_dst = split_pair(x)
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        if not prepared:  # a stack validates its block once, not in every layer
            check_edge_index(edge_index, n_src, n_dst)
            edge_index, edge_weight = self.prepare_edges(edge_index, n_src, n_dst, edge_weight)
        keep = self.prune_edges(edge_index, edge_weight, node_norms(x_src), locked, valid=valid)
        rows, ei, ew = self.select_edges(keep, num_next, n_src, n_dst, edge_index, edge_weight)
        x_dst = self.take_rows(rows, x_dst)
        self.last_prop_channels = self.channels
        p = self.propagate(ei, x=(x_src, x_dst), edge_weight=ew, size=(n_src, x_dst.size(0)))
        p = (1 - self.alpha) * p + self.alpha * self.take_rows(rows, x_0[:n_dst])
        out = (1 - self.beta) * p + self.beta * self.lin(p)
        return self._finish(out, keep, edge_index.size(1), return_kept)
