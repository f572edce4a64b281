"""GATv2 with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import softmax

from ..linear import UnifewsLinear
from .base import UnifewsConv


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
    adds_self_loops = True
    attention = True

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

    @classmethod
    def for_stack(cls, layer, num_layers, in_channels, out_channels, thr_a=0.0, thr_w=0.0, heads=1):
        """Hidden layers concatenate ``heads`` heads of ``out_channels // heads``; the last has one."""
        h = 1 if layer == num_layers - 1 else heads
        if out_channels % h:
            raise ValueError(f"hidden_channels ({out_channels}) must be divisible by heads ({h})")
        return cls(in_channels, out_channels // h, heads=h, concat=True, thr_a=thr_a, thr_w=thr_w)

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
        """The edges as given, then a self-loop per target. As PyG's ``GATv2Conv``, which removes
        the graph's own self-loops and adds one per node, but without the device read removing
        them takes: a self-loop already in the graph stays, weighted 0 (its attention is 0, its
        message is nothing), and every other edge 1."""
        return UnifewsGATv2Conv.with_self_loops(edge_index, min(num_src, num_dst))

    @staticmethod
    def with_self_loops(edge_index: Tensor, num_nodes: int) -> Tuple[Tensor, Optional[Tensor]]:
        loops = torch.arange(num_nodes, device=edge_index.device)
        ei = torch.cat([edge_index, loops.expand(2, -1)], dim=1)
        w = torch.cat([edge_index[0] != edge_index[1], loops.new_ones(num_nodes, dtype=torch.bool)])
        return ei, w.to(torch.get_default_dtype())

    def transform(self, x_src: Tensor, x_dst: Tensor) -> Tuple[Tensor, Tensor]:
        H, C = self.heads, self.out_channels
        return self.lin_l(x_src).view(-1, H, C), self.lin_r(x_dst).view(-1, H, C)

    def edge_weights(self, h_src: Tensor, h_dst: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                     num_dst: int) -> Tuple[Tensor, Tensor]:
        """Attention (dropout applied) for the messages; its head mean, without gradient, for the scores."""
        src, dst = edge_index
        e = F.leaky_relu(h_src[src] + h_dst[dst], self.negative_slope)
        logits = (e * self.att).sum(-1)  # [E, H]
        if edge_weight is not None:  # a weight-0 edge (a self-loop the graph had) gets no attention
            logits = logits.masked_fill(edge_weight.view(-1, 1) == 0, float("-inf"))
        alpha = softmax(logits, dst, num_nodes=num_dst)
        return F.dropout(alpha, p=self.dropout, training=self.training), alpha.detach().mean(-1)

    def score_reference(self, norms: Tensor, edge_index: Tensor) -> Tensor:
        return norms[edge_index[0]]  # the reference code compares against the mean source norm

    def combine(self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor]) -> Tensor:
        out = agg.reshape(h_dst.size(0), self.heads * self.out_channels) if self.concat else agg.mean(1)
        return out if self.bias is None else out + self.bias
