"""Accuracy as a (correct, total) pair of sums."""
from __future__ import annotations

import torch
from torchmetrics import Metric


class Accuracy(Metric):
    """Share of correct decisions: ``correct / total``, both summed over steps and ranks.

    Single-label: ``pred`` are class ids. Multi-label: ``pred`` and ``target`` are 0/1 per
    (node, class) and every decision counts. This is what torchmetrics' ``MulticlassAccuracy`` /
    ``MultilabelAccuracy`` with ``average="micro"`` compute; those derive it from four
    stat-score tensors (13 kernels per update, against 4 here), and their input validation
    reads the targets on the host (a device sync per step).
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape")
        self.correct += (pred == target).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.double().div(self.total.clamp(min=1)).float()
