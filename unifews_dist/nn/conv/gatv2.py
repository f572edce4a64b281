"""GATv2 with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import add_self_loops, remove_self_loops, softmax

from ...sparsify import node_norms
from ..linear import UnifewsLinear
from .base import UnifewsConv, check_edge_index, split_pair


class UnifewsGATv2Conv(UnifewsConv):
    r"""GATv2 (Brody et al.) with entry-wise pruning.

    .. math::
        \alpha_{ji} = \operatorname{softmax}_j\big(a^\top \mathrm{LeakyReLU}(W_{l,m} x_j + W_{r,m} x_i)\big),
        \qquad x'_i = \big\Vert_h \sum_{j:\, s_{ji} \ge \theta_a \bar n} \alpha^h_{ji} W^h_{l,m} x_j + b

    with the score ``s_ji = mean_h(alpha_ji) * ||W_l x_j||`` compared against ``thr_a`` times the
    mean of ``||W_l x_j||`` over the layer's edges (as in the reference code). Attention is
    computed for every edge; pruned messages are dropped from the aggregation without
    renormalising the remaining coefficients. Equal to :class:`torch_geometric.nn.GATv2Conv`
    (``share_weights=False``, no edge features, no residual) when ``thr_a = thr_w = 0``.
    """

    source_side_weights = ("lin_l",)
    keeps_edge_order = False  # self-loops added

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, thr_a: float = 0.0,
                 thr_w: float = 0.0, bias: bool = True, **kwargs):
        super().__init__(thr_a=thr_a, node_dim=0, **kwargs)
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.in_channels, self.out_channels, self.heads, self.concat = in_channels, out_channels, heads, concat
        self.negative_slope, self.dropout = negative_slope, dropout
        self.lin_l = UnifewsLinear(in_channels, heads * out_channels, bias=bias, thr_w=thr_w)
        self.lin_r = UnifewsLinear(in_channels, heads * out_channels, bias=bias, thr_w=thr_w)
        self.att = nn.Parameter(torch.empty(1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_l, self.lin_r):
            lin.reset_parameters()
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.att)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @staticmethod
    def prepare_edges(edge_index: Tensor, num_src: int, num_dst: int,
                      edge_weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        edge_index, _ = remove_self_loops(edge_index)
        edge_index, _ = add_self_loops(edge_index, num_nodes=min(num_src, num_dst))
        return edge_index, None

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,
                edge_weight: Optional[Tensor] = None, locked: Optional[Tensor] = None,
                return_kept: bool = False, prepared: bool = False, num_next: Optional[int] = None,
                valid: Optional[Tensor] = None):
        x_src, x_dst = split_pair(x)
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        if not prepared:  # a stack validates its block once, not in every layer
            edge_index, _ = self.prepare_edges(edge_index, n_src, n_dst)
            check_edge_index(edge_index, n_src, n_dst)
        if valid is not None:  # attention is normalised over this layer's edges: compact them first
            edge_index, locked = self.select(valid, edge_index, locked)
        H, C = self.heads, self.out_channels
        h_l = self.lin_l(x_src).view(-1, H, C)
        h_r = self.lin_r(x_dst).view(-1, H, C)
        src, dst = edge_index
        e = F.leaky_relu(h_l[src] + h_r[dst], self.negative_slope)
        alpha = softmax((e * self.att).sum(-1), dst, num_nodes=n_dst)  # [E, H]
        norm_src = node_norms(h_l) if self.thr_a > 0 else None
        keep = self.prune_edges(edge_index, alpha.detach().mean(-1), norm_src, locked,
                                reference=None if norm_src is None else norm_src[src])
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        rows, ei, _, alpha = self.select_edges(keep, num_next, n_src, n_dst, edge_index, None, alpha)
        h_r = self.take_rows(rows, h_r)
        self.last_prop_channels = H * C
        out = self.propagate(ei, x=(h_l, h_r), alpha=alpha, size=(n_src, h_r.size(0)))
        out = out.reshape(h_r.size(0), H * C) if self.concat else out.mean(1)
        if self.bias is not None:
            out = out + self.bias
        return self._finish(out, keep, edge_index.size(1), return_kept)

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:  # type: ignore[override]
        return x_j * alpha.unsqueeze(-1)
