"""Constant device tensors made once per device and handed out as views.

On a GPU every op is a kernel launch and the step is bound by them (BENCHMARKS.md, host work):
a per-batch ``torch.arange`` or ``torch.ones`` is one launch more than slicing a tensor that
is already there. The tensors grow (doubling) when a larger one is asked for; callers never
write into them. A request above ``MAX_CACHED`` elements (a whole graph's edges, as layer-wise
inference prepares them, not a minibatch's) gets a tensor of its own, freed with it: cached, it
would stay for the life of the process (2 x 4 bytes per edge for ``ones``: 13 GB for
ogbn-papers100M).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

_CACHE: Dict[Tuple[str, torch.device, torch.dtype], Tensor] = {}
# elements: a products minibatch of 1024 seeds, fanout [15, 10, 5], has ~1M edges (4096 seeds:
# ~3.7M); a rank's share of a products-sized graph in layer-wise inference, 15-60M
MAX_CACHED = 1 << 22


def _cached(kind: str, n: int, device, dtype: torch.dtype, make) -> Tensor:
    key = (kind, torch.device(device), dtype)
    if n > MAX_CACHED:
        return make(n, key[1], dtype)
    t = _CACHE.get(key)
    if t is None or t.numel() < n:
        t = make(max(2 * n, 2 * (0 if t is None else t.numel()), 1024), key[1], dtype)
        _CACHE[key] = t
    return t[:n]


def ones(n: int, device, dtype: torch.dtype = torch.float32) -> Tensor:
    """``torch.ones(n)``, read-only."""
    return _cached("ones", n, device, dtype, lambda m, d, t: torch.ones(m, device=d, dtype=t))


def slot_ids(n: int, device) -> Tensor:
    """``[MAX, 1, 2, ..., n - 1]`` (int64), read-only: ``slot_ids(n) <= k`` is a bool buffer whose
    slot 0 is ``False`` and slots ``1 .. k`` are ``True``, in one op."""
    def make(m, d, t):
        ids = torch.arange(m, device=d, dtype=t)
        ids[0] = torch.iinfo(t).max
        return ids
    return _cached("slot_ids", n, device, torch.long, make)
