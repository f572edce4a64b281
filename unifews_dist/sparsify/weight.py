"""Entry-wise weight pruning: the Unifews rule for a linear map ``X @ W.T``."""
from __future__ import annotations

import torch
from torch import Tensor

from .edge import check_threshold

# The cap keeps each column's threshold strictly below max|W|, so the largest entry survives.
_CAP = 1.0 - 1e-6


def column_sq_sums(x: Tensor) -> Tensor:
    """``sum_n x[n, j]^2`` per input column: the additive part of the column norm (all-reducible)."""
    x = x.reshape(-1, x.size(-1))
    return (x * x).sum(0) if x.dtype.is_floating_point else (x.float() ** 2).sum(0)


def column_thresholds(col_norms: Tensor, thr_w: float, weight_absmax: Tensor) -> Tensor:
    """Per-column magnitude threshold ``t_j`` such that ``W[i, j]`` is pruned iff ``|W[i, j]| < t_j``.

    ``t_j = thr_w * ||c||_2 / F_in / c_j``, capped just below ``max|W|``.
    """
    thr_w = check_threshold("thr_w", thr_w)
    f_in = col_norms.numel()
    ref = thr_w * torch.linalg.vector_norm(col_norms) / f_in
    zero = col_norms <= 0  # an all-zero input column: only the cap applies
    t = torch.where(zero, torch.full_like(col_norms, float("inf")), ref / col_norms.masked_fill(zero, 1.0))
    return torch.minimum(t, weight_absmax * _CAP)


def weight_keep_mask(weight: Tensor, col_norms: Tensor, thr_w: float) -> Tensor:
    """Bool ``[F_out, F_in]`` mask of the entries kept by the Unifews weight rule.

    Prune ``W[i, j]`` when ``|W[i, j]| * c_j < thr_w * ||c||_2 / F_in`` with ``c_j = ||X[:, j]||_2``;
    the per-column threshold is capped just below ``max|W|`` so the map is never emptied.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if col_norms.shape != (weight.size(1),):
        raise ValueError(
            f"col_norms must have shape ({weight.size(1)},) to match weight {tuple(weight.shape)}, "
            f"got {tuple(col_norms.shape)}"
        )
    thr_w = check_threshold("thr_w", thr_w)
    w = weight.detach().abs()
    if thr_w == 0:
        return torch.ones_like(w, dtype=torch.bool)
    t = column_thresholds(col_norms.to(w.dtype), thr_w, w.max())
    return w >= t.unsqueeze(0)
