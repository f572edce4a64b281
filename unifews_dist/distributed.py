"""Rank helpers shared by the model, the data module and the LightningModule: who this process
is in the process group, and collectives that fall back to the one process's value without one."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> Tuple[int, int]:
    """``(world size, rank)`` of the initialised process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without a process group); every rank calls it."""
    size, _ = world()
    if size == 1:
        return [obj]
    parts = [None] * size
    dist.all_gather_object(parts, obj)
    return parts


def shares(n: int, world: int) -> List[Tuple[int, int]]:
    """Contiguous node ranges, one per rank: ``ceil(n / world)`` nodes each but the last, so that
    the ranks' rows, each padded to that many, all-gather into one buffer whose first ``n`` rows
    are every node's in order (:func:`all_gather_rows`); where that would leave a rank without
    nodes (``n`` small beside ``world``), sizes differing by at most one."""
    m = -(-n // world)
    if (world - 1) * m < n:
        return [(r * m, min((r + 1) * m, n)) for r in range(world)]
    return [(r * n // world, (r + 1) * n // world) for r in range(world)]


def all_gather_rows(t: Tensor, sizes: List[int], out: Optional[Tensor] = None) -> Tensor:
    """Every rank's ``t`` (``sizes[r]`` rows on rank ``r``) in rank order, by one all-gather of
    the rows padded to the largest size, into ``out`` (``[world x max(sizes), ...]``) when given.
    When every rank's rows land where they belong (only ranks after the last full one fall
    short: :func:`shares`' split) the result is a view of that buffer; otherwise the padding is
    cut out (a copy)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # (its name before torch 2.13)
    m, world = max(sizes), len(sizes)
    if t.size(0) < m:
        pad = t.new_zeros((m, *t.shape[1:]))
        pad[:t.size(0)] = t
        t = pad
    buf = t.new_empty((world * m, *t.shape[1:])) if out is None else out
    gather(buf, t.contiguous())
    if all(sum(sizes[:r]) == r * m for r in range(world) if sizes[r]):  # each rank's rows where they belong
        return buf[:sum(sizes)]
    return torch.cat([buf[r * m:r * m + k] for r, k in enumerate(sizes)])


def rows_or_none(rows: Optional[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``rows``, or, on a rank that computed none, ``[0, width]`` of the width the other ranks'
    rows have (agreed by one all-reduce, which every rank joins)."""
    width = torch.tensor([0 if rows is None else rows.size(1)], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    return torch.empty((0, int(width)), dtype=dtype, device=device) if rows is None else rows


def mean_over_ranks(total: Tensor, count: float, dtype: torch.dtype) -> Tensor:
    """A mean over items that the ranks hold a share of each: every rank's float64 ``total`` and
    ``count`` added up by one all-reduce (the same mean on every rank)."""
    t = torch.stack([total.to(torch.float64), torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    dist.all_reduce(t)
    return (t[0] / t[1].clamp(min=1)).to(dtype)
