"""The LightningModule: steps, metrics and optimizers around :class:`UnifewsGNN`."""
from __future__ import annotations

from typing import List, Literal, Union, get_args

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..checks import check_choice
from ..distributed import gather_objects
from ..run.checkpoint import rng_state, set_rng_state
from ..nn import UnifewsGNN
from ..nn.models.gnn import Backend, ConvName, LockPolicy, Norm
from ..nn.models.layerwise import LOCK_SCOPES, LockScope
from .accuracy import Accuracy

# The choices are Literal types: the signature is the config schema (LightningCLI reports a bad
# value with the allowed ones); check_choice says the same to Python callers.
Optimizer = Literal["adam", "adamw"]
Scheduler = Literal["none", "cosine", "step"]
OPTIMIZERS, SCHEDULERS = get_args(Optimizer), get_args(Scheduler)


class UnifewsModule(pl.LightningModule):
    """Node classification with a Unifews GNN on neighbor-sampled minibatches.

    The loss and accuracy use the seed nodes only; accuracy is reduced across ranks as
    (correct, total) sums by torchmetrics. Single-label data: cross-entropy, accuracy of the
    arg-max. Multi-label data (multi-hot targets): binary cross-entropy on each class's logit,
    accuracy over all (node, class) decisions at logit > 0. ``in_channels``, ``out_channels``
    and ``multilabel`` come from the data module when run through the CLI.

    Args:
        in_channels: input features per node (the CLI takes it from the data).
        out_channels: classes (the CLI takes it from the data).
        conv: the layer type: ``gcn``, ``sage``, ``gat`` (GATv2), ``gin`` or ``gcnii``.
        hidden_channels: features of each hidden layer.
        num_layers: message-passing layers; ``data.num_neighbors`` gives one fanout per layer.
        dropout: dropout between layers.
        norm: normalisation between layers: ``batch``, ``layer`` or ``none``.
        thr_a: edge threshold (one, or one per layer): an edge's message is not computed when its
            norm ``|w_e| * ||h_src||`` is below ``thr_a`` times the layer's mean message norm;
            an edge dropped at layer ``l`` is gone from every later layer. 0: no edge pruning.
        thr_w: weight threshold (one, or one per layer): a weight entry ``W[i, j]`` is not
            computed when ``|W[i, j]| * ||X[:, j]|| < thr_w * ||c||_2 / F_in``, ``c`` the input
            column norms (summed over ranks; each column's threshold capped below ``max|W|``).
            0: no weight pruning. A sparsity schedule callback ramps both up to these values.
        heads: attention heads of ``gat``'s hidden layers (an error for other convs).
        gcnii_alpha: GCNII's initial-residual strength (``gcnii`` only).
        gcnii_theta: GCNII's identity-map strength (``gcnii`` only).
        lock_target_edges: when the edges into a batch's seed nodes are kept at every layer, so
            the seeds always receive their sampled neighbourhood: ``always``, ``eval``
            (evaluation only, as the reference code) or ``never``.
        weight_backend: how a pruned weight is applied: ``auto`` (a sparse kernel where it beats
            dense), ``dense`` (masked dense matmul) or ``sparse``.
        lock_scope: with seed locking, whose in-edges layer-wise evaluation and prediction
            keep: ``outputs`` (every node evaluated or predicted, at once, as the seeds of one
            sampled batch) or ``each`` (each node as if evaluated alone; twice the layer work).
        lr: learning rate.
        weight_decay: weight decay.
        optimizer: ``adam`` or ``adamw``.
        lr_scheduler: ``none``, ``cosine`` (over ``max_epochs``) or ``step`` (x0.5 every 50 epochs).
        multilabel: targets are multi-hot ``[nodes, out_channels]`` (set from the data by the CLI).
    """

    def __init__(self, in_channels: int = -1, out_channels: int = -1, conv: ConvName = "sage",
                 hidden_channels: int = 256, num_layers: int = 2, dropout: float = 0.5, norm: Norm = "batch",
                 thr_a: Union[float, List[float]] = 0.0, thr_w: Union[float, List[float]] = 0.0, heads: int = 1,
                 gcnii_alpha: float = 0.1, gcnii_theta: float = 0.5, lock_target_edges: LockPolicy = "always",
                 weight_backend: Backend = "auto", lock_scope: LockScope = "outputs", lr: float = 0.001,
                 weight_decay: float = 1e-5,
                 optimizer: Optimizer = "adam", lr_scheduler: Scheduler = "none", multilabel: bool = False):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"in_channels and out_channels must be positive (the CLI takes them from the data), "
                             f"got {in_channels}, {out_channels}")
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("lr_scheduler", lr_scheduler, SCHEDULERS)
        check_choice("lock_scope", lock_scope, LOCK_SCOPES)
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        self.save_hyperparameters()
        self.model = UnifewsGNN(conv, in_channels, hidden_channels, out_channels, num_layers=num_layers,
                                dropout=dropout, norm=norm, thr_a=thr_a, thr_w=thr_w, heads=heads,
                                gcnii_alpha=gcnii_alpha, gcnii_theta=gcnii_theta,
                                lock_target_edges=lock_target_edges, weight_backend=weight_backend)
        self.multilabel, self.lock_scope = multilabel, lock_scope
        self.accuracy = torch.nn.ModuleDict({s: Accuracy() for s in ("train_", "val_", "test_")})
        self._outputs: list = []  # (predictions, targets) of an evaluation, for the dataset's evaluator

    def forward(self, batch):
        """The seeds' outputs of a sampled batch, or, for a whole-graph batch (``layerwise``: the
        data module's layer-wise evaluation and prediction), those of ``batch.nodes``."""
        if getattr(batch, "layerwise", False):
            return self.model.inference(batch.x, batch.edge_index, batch_size=batch.infer_batch_size,
                                        output_nodes=batch.nodes, progress=getattr(self, "_progress", None),
                                        distributed=self._world_size() > 1, lock_scope=self.lock_scope)
        hops = getattr(batch, "num_sampled_nodes", None)
        out = self.model(batch.x, batch.edge_index, num_sampled_nodes=hops, batch_size=batch.batch_size,
                         num_sampled_edges=getattr(batch, "num_sampled_edges", None) if hops is not None else None,
                         input_mean=getattr(batch, "score_mean", None))  # the loader's rule
        return out[: batch.batch_size]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """The step's thresholds are set (the callbacks' hooks ran first): a data module that
        prunes before it gathers (``before_training_step``) is told the first layer's."""
        before = getattr(self.trainer.datamodule, "before_training_step", None)
        if before is not None:
            before(batch, self.model.thr_a[0])

    def on_train_epoch_start(self) -> None:
        """A data module that samples less (``before_training_epoch``) is told the first layer's
        threshold at the epoch's start (the callbacks' hooks ran first)."""
        before = getattr(self.trainer.datamodule, "before_training_epoch", None)
        if before is not None:
            before(self.model.thr_a[0])

    def _world_size(self) -> int:
        try:
            return self.trainer.world_size
        except RuntimeError:  # not attached to a trainer
            return 1

    @staticmethod
    def targets(batch) -> torch.Tensor:
        return batch.y[batch.nodes] if getattr(batch, "layerwise", False) else batch.y[: batch.batch_size]

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Class ids (multi-label: 0/1 per class, at logit > 0)."""
        return (logits > 0).long() if self.multilabel else logits.argmax(-1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or binary cross-entropy per class for multi-hot targets."""
        if self.multilabel:
            if y.dim() != 2 or y.size(1) != logits.size(1):
                raise ValueError(f"multi-label targets must be [nodes, {logits.size(1)}], got {tuple(y.shape)}")
            return F.binary_cross_entropy_with_logits(logits, y.float())
        return F.cross_entropy(logits, y)

    def _step(self, batch, stage: str):
        logits = self(batch)
        y = self.targets(batch)
        loss = self.loss(logits, y)
        acc = self.accuracy[stage + "_"]
        # update only: the accuracy is logged per epoch, so no per-batch value is computed
        pred = self.predictions(logits)
        acc.update(pred, y.long() if self.multilabel else y)  # multi-label: every (node, class) decision
        if stage != "train" and self._evaluator() is not None:
            self._outputs.append((pred.detach().cpu(), y.detach().cpu()))
        self.log(f"{stage}/loss", loss, batch_size=batch.batch_size, on_step=stage == "train", on_epoch=True,
                 sync_dist=stage != "train")
        self.log(f"{stage}/acc", acc, batch_size=batch.batch_size, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        """Layer-wise outputs of ``batch.nodes`` (this rank's share): node ids, class ids, logits;
        a progress bar of the target nodes computed (every layer's), on rank 0."""
        from tqdm.auto import tqdm

        n, layers = batch.x.size(0), self.model.num_layers
        show = self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None
        share = n // self._world_size()  # each rank computes a share of the layers before the last
        total = share * (layers - 1) + batch.nodes.numel()
        if self.lock_scope == "each" and self.model.lock_target_edges != "never":
            total += batch.nodes.numel() * (layers - 1)  # every layer once more for the outputs, locked
        with tqdm(total=total, desc="layer-wise inference", unit="node", disable=not show) as bar:
            self._progress = bar.update
            try:
                logits = self(batch)
            finally:
                self._progress = None
        return {"node": batch.nodes.cpu(), "pred": self.predictions(logits).cpu(), "logits": logits.float().cpu()}

    # -- the dataset's own evaluator (OGB's), on all of a stage's nodes --------------------------
    def _evaluator(self):
        try:
            dm = self.trainer.datamodule
        except RuntimeError:  # not attached to a trainer
            return None
        return getattr(getattr(dm, "dataset", None), "evaluator", None)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _log_evaluator(self, stage: str) -> None:
        evaluate = self._evaluator()
        outputs, self._outputs = getattr(self, "_outputs", []), []
        if evaluate is None or self.trainer.sanity_checking:
            return
        mine = (torch.cat([p for p, _ in outputs]), torch.cat([y for _, y in outputs])) if outputs else None
        parts = [p for p in gather_objects(mine) if p is not None]  # every rank scores all nodes alike
        if parts:
            pred, y = torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])
            self.log(f"{stage}/ogb_acc", evaluate(pred, y), rank_zero_only=False, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluator("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluator("test")

    # A resumed run draws the same random numbers (dropout) as an uninterrupted one: every rank's
    # generators are saved with the checkpoint and put back when training starts again (after
    # Lightning's sanity check, which reads the generators too).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # a diverged model (NaN / inf weights) is never written over the last good checkpoint
        bad = [n for n, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise ValueError(f"training diverged: non-finite weights in {bad[0]}"
                             f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''} at step "
                             f"{self.trainer.global_step}; stopped before writing a checkpoint, "
                             "the last good one is kept")
        state = rng_state()
        checkpoint["rng_states"] = gather_objects(state)  # every rank writes the checkpoint dict

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        states = getattr(self, "_rng_to_restore", None)
        if states:
            rank = self.trainer.global_rank
            set_rng_state(states[rank] if rank < len(states) else states[0])
            self._rng_to_restore = None

    def configure_optimizers(self):
        opt_cls = torch.optim.Adam if self.hparams.optimizer == "adam" else torch.optim.AdamW
        # fused: one kernel for the whole update (and no host read of the step count) on CUDA and CPU
        fused = all(p.device.type in ("cuda", "cpu") and p.dtype.is_floating_point for p in self.parameters())
        opt = opt_cls(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused or None
        )
        if self.hparams.lr_scheduler == "none":
            return opt
        if self.hparams.lr_scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs or 1))
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
