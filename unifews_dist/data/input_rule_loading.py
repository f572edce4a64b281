"""What a data module does for a model whose first layer's edge rule runs in the loader (SAGE's:
:meth:`~unifews_dist.nn.UnifewsGNN.input_rule`): the training loader gathers only the rows a layer
reads (``prune_before_gather``, exact), and the training sampler may sample less (``sample_less``,
an approximation); the trainer tells it the thresholds, each step and each epoch."""
from __future__ import annotations

from typing import List, Optional

import torch

from .loaders import RowsGather, SampleLess
from .prepared import feature_norms
from .samplers import make_sampler


class InputRuleLoading:
    """Mixed into :class:`~unifews_dist.data.UnifewsDataModule`, whose attributes it reads
    (``trainer``, ``gpu_sampling``, ``prune_before_gather``, ``sample_less``, ``feature_gather``,
    ``graph``, ``seed``, ``load()``, ``_sampler()``, ``_samplers``, ``_device_x``) and sets
    (``_gather``, ``_less``, ``_epoch_thr``, ``_norms``). The LightningModule calls
    :meth:`before_training_epoch` and :meth:`before_training_step`; Lightning keeps
    :meth:`state_dict` in every checkpoint."""

    def _input_rule(self):
        """The model's first-layer rule for the loader (``input_rule``), when its first layer
        scores its inputs and the graph is sampled on the host; else ``None``."""
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        input_rule = getattr(getattr(module, "model", None), "input_rule", None)
        return input_rule() if input_rule is not None and not self.gpu_sampling else None

    def _input_norms(self) -> torch.Tensor:
        """Every node's input norm (:func:`~unifews_dist.data.prepared.feature_norms`), once."""
        if self._norms is None:
            self._norms = feature_norms(self.load())
        return self._norms

    def _rows_gather(self, rule) -> Optional[RowsGather]:
        """The training loader's :class:`RowsGather` (``prune_before_gather``)."""
        if rule is None or not self.prune_before_gather:
            return None
        return RowsGather(rule, self._input_norms(), None if self.feature_gather == "device" else self.load().data.x)

    def _train_sampler(self, fanout: List[int], rule):
        """The training sampler: with ``sample_less``, a built-in one of its own that samples less."""
        if rule is None or not self.sample_less or self.sampler_kind not in ("auto", "torch"):
            self._less = None
            return self._sampler(fanout)
        key = ("sample_less", tuple(fanout))
        if key not in self._samplers:
            self._samplers[key] = make_sampler("torch", self.graph, fanout, self.seed)
        self._less = self._samplers[key].expand_rule = SampleLess(rule, self._input_norms())
        self._less.publish(self._epoch_thr)
        return self._samplers[key]

    def before_training_epoch(self, thr_a: float) -> None:
        """Called when a training epoch starts (``thr_a``: the first layer's threshold now): with
        ``sample_less``, the epoch's blocks are sampled at it."""
        self._epoch_thr = float(thr_a)
        if self._less is not None:
            self._less.publish(thr_a)

    def state_dict(self) -> dict:
        """What a resumed run needs to sample the blocks an uninterrupted one does (``sample_less``)."""
        return {"epoch_thr_a": self._epoch_thr} if self.sample_less else {}

    def load_state_dict(self, state: dict) -> None:
        self.before_training_epoch(state.get("epoch_thr_a", 0.0))

    def before_training_step(self, batch, thr_a: float) -> None:
        """Called when a training step starts, its thresholds set (``thr_a``: the first layer's):
        the loader prunes the batches it samples from now on at it, and a batch pruned at a
        higher one (a threshold that fell: a feedback controller, a table) has the rows it left
        out gathered now, so the step is exact whatever the loader read."""
        if self._gather is None:
            return
        self._gather.publish(thr_a)
        if getattr(batch, "gather_thr", None) is None or thr_a >= batch.gather_thr:
            return
        have = torch.zeros(batch.n_id.numel(), dtype=torch.bool, device=batch.x.device)
        have[batch.x_rows] = True
        missing = (~have).nonzero().view(-1)
        ids = batch.n_id.index_select(0, missing)
        x = self._device_x if self.feature_gather == "device" else self.load().data.x
        rows = x.index_select(0, ids.to(x.device))
        batch.x.index_copy_(0, missing, rows.to(device=batch.x.device, dtype=batch.x.dtype))
        batch.x_rows = torch.arange(batch.n_id.numel(), device=batch.x.device)
        batch.rows_gathered, batch.gather_thr = batch.rows_gathered + int(missing.numel()), 0.0
