"""Rank reductions shared by the callbacks (every rank must call them at the same point)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch


def reduce_sum(trainer, values: Union[Sequence[float], torch.Tensor], extra: Sequence[float] = ()) -> List[float]:
    """Sum numbers over all ranks (float64, one collective) and read them on the host in one
    transfer: ``values`` (host numbers or a device tensor) followed by the host numbers ``extra``."""
    if isinstance(values, torch.Tensor):
        t = values.to(torch.float64)
        if extra:
            t = torch.cat([t, torch.tensor([float(v) for v in extra], dtype=torch.float64, device=t.device)])
    else:
        t = torch.tensor([float(v) for v in list(values) + list(extra)], dtype=torch.float64)
    if trainer.world_size > 1:
        t = trainer.strategy.reduce(t.to(trainer.strategy.root_device), reduce_op="sum")
    return t.tolist()


def log_every(trainer, own: Optional[int]) -> int:
    """A callback's logging interval: its own, else the trainer's ``log_every_n_steps``."""
    return own or getattr(trainer, "log_every_n_steps", None) or 1
