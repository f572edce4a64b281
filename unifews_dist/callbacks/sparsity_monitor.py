"""Log what the pruning did: per-layer edge and weight sparsity and the MACs it saved."""
from __future__ import annotations

from typing import Dict, List, Optional

from pytorch_lightning.callbacks import Callback

from ..nn.stats import FIELDS
from ._dist import log_every, reduce_sum


def sparsity_metrics(layers: List[Dict[str, float]]) -> Dict[str, float]:
    """Logged metrics from per-layer counts (summed over ranks: weight masks are the same on
    every rank, so their ratios do not change; MACs are the total over ranks)."""
    out: Dict[str, float] = {}
    for i, c in enumerate(layers):
        out[f"sparsity/edge/layer{i}"] = 1 - c["edges_kept"] / c["edges_dense"] if c["edges_dense"] else 0.0
        out[f"sparsity/weight/layer{i}"] = 1 - c["weight_nnz"] / c["weight_numel"] if c["weight_numel"] else 0.0
    dense, kept = sum(c["edges_dense"] for c in layers), sum(c["edges_kept"] for c in layers)
    numel, nnz = sum(c["weight_numel"] for c in layers), sum(c["weight_nnz"] for c in layers)
    out["sparsity/edge/all"] = 1 - kept / dense if dense else 0.0
    out["sparsity/weight/all"] = 1 - nnz / numel if numel else 0.0
    macs_d, macs_s = sum(c["macs_dense"] for c in layers), sum(c["macs_sparse"] for c in layers)
    out["macs/dense"], out["macs/sparse"] = macs_d, macs_s
    out["macs/reduction"] = macs_d / macs_s if macs_s else 1.0
    return out


class SparsityMonitor(Callback):
    r"""Logs, every training step, the sparsity of the step's sampled block summed over ranks:

    ``sparsity/edge/layer{i}`` (share of the sampled edges layer ``i`` would aggregate that
    layers ``0..i`` pruned), ``sparsity/weight/layer{i}``, ``sparsity/edge/all``,
    ``sparsity/weight/all``, ``macs/dense``, ``macs/sparse`` and ``macs/reduction``
    (dense / sparse). At the end of each training epoch the same keys with an ``_epoch`` suffix
    hold the epoch's totals; :attr:`epoch_layers` keeps them (rank-summed) for ``summary.json``.

    Lightning's ``ModelPruning`` reports only parameter sparsity; edges are pruned per batch,
    so this reads the model's per-layer counts of the last forward (``model.layer_stats``).

    The per-step counts are added up on the device (no host read); they are reduced over ranks
    and read, in one transfer, on logging steps only.

    In a test run the same figures are summed over the test batches and logged once with a
    ``test/`` prefix (``test/sparsity/edge/all``, ``test/macs/dense`` ...): the sparsity of the
    model that was tested, on the batches it was tested on (``summary.json`` reports these).

    Args:
        log_every_n_steps: log step values every n training steps (``None``: the trainer's
            ``log_every_n_steps``). The rank reduction happens at those steps only; epoch
            totals count every step.
    """

    def __init__(self, log_every_n_steps: Optional[int] = None):
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1 or null, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self.epoch_layers: List[Dict[str, float]] = []
        self._epoch = None  # device tensor: this epoch's counts so far

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        counts = pl_module.model.stats_tensor()
        self._epoch = counts.clone() if self._epoch is None else self._epoch.add_(counts)
        if trainer.global_step % log_every(trainer, self.log_every_n_steps):
            return
        layers = _layers(reduce_sum(trainer, counts), len(pl_module.model.layer_stats))
        pl_module.log_dict(sparsity_metrics(layers), on_step=True, on_epoch=False)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._test = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        counts = pl_module.model.stats_tensor()
        self._test = counts.clone() if self._test is None else self._test.add_(counts)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if getattr(self, "_test", None) is None:
            return
        layers = _layers(reduce_sum(trainer, self._test), len(pl_module.model.layer_stats))
        pl_module.log_dict({f"test/{k}": v for k, v in sparsity_metrics(layers).items()}, on_step=False, on_epoch=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch is None:
            return
        n_layers = len(self._epoch) // len(FIELDS)
        self.epoch_layers = _layers(reduce_sum(trainer, self._epoch), n_layers)
        metrics = sparsity_metrics(self.epoch_layers)
        pl_module.log_dict({f"{k}_epoch": v for k, v in metrics.items()}, on_step=False, on_epoch=True)

    def state_dict(self) -> dict:
        return {"epoch_layers": self.epoch_layers}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_layers = state_dict.get("epoch_layers", [])


def _layers(flat: List[float], n_layers: int) -> List[Dict[str, float]]:
    k = len(FIELDS)
    return [{f: flat[i * k + j] for j, f in enumerate(FIELDS)} for i in range(n_layers)]
