"""Writes ``predict``'s outputs, gathered from every rank, to one file."""
from __future__ import annotations

import os

import torch
from pytorch_lightning.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """``path`` (``torch.save``, loadable with ``weights_only=True``): ``node`` (node ids, in the
    order asked for), ``pred`` (class ids; multi-label: 0/1 per class) and ``logits``. Rank ``r``
    predicted the nodes at positions ``r, r + world, ...`` (the data module's share); rank 0
    puts them back in order and writes the file atomically (a temporary file, then a rename).

    Args:
        path: the file to write.
    """

    def __init__(self, path: str):
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        outs = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        mine = {k: torch.cat([o[k] for o in outs]) for k in ("node", "pred", "logits")} if outs else None
        if trainer.world_size > 1:
            parts = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, mine)
        else:
            parts = [mine]
        if not trainer.is_global_zero:
            return
        parts = [p for p in parts if p is not None]
        total = sum(p["node"].numel() for p in parts)
        result = {}
        for key in ("node", "pred", "logits"):
            first = parts[0][key]
            full = first.new_empty((total, *first.shape[1:]))
            for r, p in enumerate(parts):
                full[r::len(parts)] = p[key]
            result[key] = full
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        torch.save(result, tmp)
        os.replace(tmp, self.path)
