"""GraphSAGE (mean aggregation, root weight) with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.utils import degree

from ...sparsify import node_norms
from ..linear import UnifewsLinear
from .base import UnifewsConv, check_edge_index, split_pair


class UnifewsSAGEConv(UnifewsConv):
    r"""GraphSAGE with mean aggregation and entry-wise pruning.

    .. math::
        x'_i = W_{l,m} \Big(\sum_{j \in \mathcal{N}(i),\; s_{ji} \ge \theta_a \bar s}
               \tfrac{1}{d_i} x_j\Big) + b + W_{r,m} x_i,
        \qquad s_{ji} = \frac{\lVert x_j \rVert_2}{d_i}

    ``d_i`` is the in-degree in the sampled block before pruning: pruned messages are
    dropped, not renormalised. Equal to :class:`torch_geometric.nn.SAGEConv` (mean,
    ``root_weight=True``) when ``thr_a = thr_w = 0``.
    """

    def __init__(self, in_channels: int, out_channels: int, thr_a: float = 0.0, thr_w: float = 0.0,
                 bias: bool = True, **kwargs):
        super().__init__(thr_a=thr_a, **kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin_l = UnifewsLinear(in_channels, out_channels, bias=bias, thr_w=thr_w)
        self.lin_r = UnifewsLinear(in_channels, out_channels, bias=False, thr_w=thr_w)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()

    @staticmethod
    def prepare_edges(edge_index: Tensor, num_src: int, num_dst: int,
                      edge_weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        deg = degree(edge_index[1], num_dst, dtype=torch.get_default_dtype())
        w = deg.reciprocal()[edge_index[1]]  # (every target indexed has degree >= 1)
        return edge_index, w if edge_weight is None else w * edge_weight

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,
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
        self.last_prop_channels = self.in_channels
        agg = self.propagate(ei, x=(x_src, x_dst), edge_weight=ew.to(x_src.dtype), size=(n_src, x_dst.size(0)))
        out = self.lin_l(agg) + self.lin_r(x_dst)
        return self._finish(out, keep, edge_index.size(1), return_kept)
