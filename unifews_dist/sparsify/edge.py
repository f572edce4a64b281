"""Entry-wise edge pruning: per-edge message norms and the Unifews keep rule.

A message ``m_e = w_e * h_src(e)`` has norm ``|w_e| * ||h_src(e)||_2``, so the scores are
computed from one norm per node and one weight per edge, never from the ``[E, F]`` message
tensor.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def check_threshold(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not a finite number >= 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def node_norms(h: Tensor) -> Tensor:
    """L2 norm of each node's features; ``h`` is ``[N, F]`` or ``[N, heads, C]``."""
    return torch.linalg.vector_norm(h.reshape(h.size(0), -1), dim=-1)


def edge_scores(src_norm: Tensor, src: Tensor, edge_weight: Optional[Tensor] = None, nonneg: bool = False) -> Tensor:
    """Message norms ``s_e = |w_e| * ||h_src(e)||``.

    Args:
        src_norm: ``[N_src]`` node norms (see :func:`node_norms`).
        src: ``[E]`` source index of each edge.
        edge_weight: ``[E]`` message weight ``w_e`` (``None`` means 1).
        nonneg: the weights are known to be ``>= 0`` (``|w_e|`` is then not taken: one op less).
    """
    if src.dim() != 1:
        raise ValueError(f"src must be a 1-D index tensor, got shape {tuple(src.shape)}")
    if edge_weight is not None and edge_weight.shape != src.shape:
        raise ValueError(
            f"edge_weight must have shape {tuple(src.shape)} (one per edge), got {tuple(edge_weight.shape)}"
        )
    s = src_norm.index_select(0, src)
    if edge_weight is None:
        return s
    return s * (edge_weight if nonneg else edge_weight.abs())


def edge_keep_mask(
    scores: Tensor,
    thr_a: float,
    locked: Optional[Tensor] = None,
    reference: Optional[Tensor] = None,
    valid: Optional[Tensor] = None,
    num_valid: Optional[Tensor] = None,
    mean: Optional[Tensor] = None,
) -> Tensor:
    """The Unifews edge rule: keep edge ``e`` unless ``s_e < thr_a * mean(s)``.

    Args:
        scores: ``[E]`` message norms.
        thr_a: relative threshold, ``>= 0``; ``0`` keeps every edge.
        locked: ``[E]`` bool, edges kept whatever their score.
        reference: the quantity averaged for the threshold (defaults to ``scores``; GATv2
            compares against the mean source-feature norm).
        valid: ``[E]`` bool, the edges the rule applies to: the mean is over them, and the
            others are never kept (``None``: all).
        num_valid: ``valid.sum()``, if the caller has it already.
        mean: the threshold's mean, when it is taken over more edges than these (layer-wise
            inference: over all the layer's edges, given here a batch of targets at a time).
    """
    thr_a = check_threshold("thr_a", thr_a)
    if locked is not None and locked.shape != scores.shape:
        raise ValueError(f"locked must have shape {tuple(scores.shape)}, got {tuple(locked.shape)}")
    if thr_a == 0 or scores.numel() == 0:
        return torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.clone()
    ref = scores if reference is None else reference
    if mean is not None:
        pass
    elif valid is None:
        mean = ref.mean()
    else:  # a masked mean, with no device read (no valid edge: NaN, and nothing is kept)
        mean = (ref * valid).sum() / (valid.sum() if num_valid is None else num_valid)
    keep = scores >= thr_a * mean
    if locked is not None:
        keep = keep | locked
    return keep if valid is None else keep & valid
