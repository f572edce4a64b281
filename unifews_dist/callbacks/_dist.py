"""Rank reductions shared by the callbacks (every rank must call them at the same point)."""
from __future__ import annotations

from typing import List, Sequence

import torch


def reduce_sum(trainer, values: Sequence[float]) -> List[float]:
    """Sum a flat list of numbers over all ranks (float64, one collective)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if trainer.world_size > 1:
        t = trainer.strategy.reduce(t.to(trainer.strategy.root_device), reduce_op="sum").cpu()
    return t.tolist()
