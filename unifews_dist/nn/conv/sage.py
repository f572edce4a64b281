"""GraphSAGE (mean aggregation, root weight) with Unifews edge and weight pruning."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..constants import ones
from ..linear import UnifewsLinear
from .base import UnifewsConv


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
        dst, dtype = edge_index[1], torch.get_default_dtype()
        # the in-degree, as torch_geometric.utils.degree, from a cached ones vector (an op less)
        deg = torch.zeros(num_dst, dtype=dtype, device=dst.device)
        deg.scatter_add_(0, dst, ones(dst.numel(), dst.device, dtype))
        w = deg.reciprocal().index_select(0, dst)  # (every target indexed has degree >= 1)
        return edge_index, w if edge_weight is None else w * edge_weight

    def aggregated_channels(self) -> Optional[Tensor]:
        return self.lin_l.used_inputs()

    def combine(
        self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor], agg_channels: Optional[Tensor] = None
    ) -> Tensor:
        return self.lin_r(h_dst, add=self.lin_l(agg, columns=agg_channels))  # (the sum fused into lin_r's matmul)
