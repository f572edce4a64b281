"""One layer of a stack run over batches of target nodes (:class:`BatchedLayer`), each batch
all the targets' kept in-edges: the step layer-wise inference repeats for every layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..selection import LayerPlan
from ..stats import EdgeCounts, LayerStats
from .workspace import SOURCES, InferenceWorkspace, next_input_role


@dataclass
class TargetTask:
    """What one :meth:`BatchedLayer.run` computes: the outputs of ``nodes`` over ``edges``.

    ``edges``: ``(edge_index, edge_weight)`` of the edges into ``nodes`` (targets as positions in
    ``nodes``, sorted by them); ``edges_dense``: their count with no pruning anywhere. ``start``:
    the targets are the nodes ``start, start + 1, ...`` (their rows are then a slice, not a
    gather). ``own``: the targets' own rows (their input and the source of their self-loops;
    ``None``: their rows as neighbours). ``lock_all``: every edge is locked; ``lock_into``: ``[N]``
    bool, the nodes whose in-edges are locked. ``loops_only``: only a self-loop's source is a
    target's own row (else a target's own row is also its row as a neighbour of the others).
    ``norms`` (with ``mean``, for a conv whose scores come from its sources): every node's score
    norm, so the rule is applied to all the edges at once, before any batch. ``own_result``: the
    outputs are not written into the workspace (they outlive the call)."""

    nodes: Tensor
    edges: Tuple[Tensor, Optional[Tensor]]
    edges_dense: int
    start: Optional[int] = None
    own: Optional[Tensor] = None
    lock_all: bool = False
    lock_into: Optional[Tensor] = None
    loops_only: bool = False
    mean: Optional[Tensor] = None
    norms: Optional[Tensor] = None
    own_result: bool = False


class BatchedLayer:
    """One layer of a stack run over batches of targets; sums what it computed into statistics."""

    def __init__(self, model, i: int, n: int, batch_size: int, progress, workspace: InferenceWorkspace,
                 canonical: bool = False):
        self.model, self.i, self.conv, self.workspace = model, i, model.convs[i], workspace
        self.canonical = canonical
        self.n, self.batch_size, self.progress = n, batch_size, progress
        self.lins = self.conv.weight_layers()
        self.kept = self.computed = self.t_dense = self.edges_in = self.edges_dense = self.targets = 0
        self.channels = self.channels_computed = 0
        self.rows = [0] * len(self.lins)
        self._lookup: Optional[Tensor] = None  # [N] scratch of _gathered (a run that gathers makes them)
        self._mark: Optional[Tensor] = None

    def run(self, task: TargetTask, nbr: Tensor, x0: Optional[Tensor]
            ) -> Tuple[Tensor, Tuple[Tensor, Optional[Tensor]]]:
        """``(outputs of the task's nodes, (kept edges, their weights))``; ``nbr``: every node's row
        as a neighbour. With ``task.norms`` the batches get the kept edges only (the conv is told
        so and scores nothing again).

        A conv that propagates its sources' rows as they are (no source-side weights: SAGE, GIN,
        GCNII) reads them from ``nbr`` by node id, one gather of the messages; a conv that
        transforms them first (GCN, GATv2) gets each batch's distinct sources gathered, so each is
        transformed once per batch."""
        targets, (ei, ew), own, norms, start = task.nodes, task.edges, task.own, task.norms, task.start
        conv, device, bs = self.conv, ei.device, self.batch_size
        edges_given = ei, ew
        if norms is not None:
            keep_all = self._rule(task)
            idx = keep_all.nonzero().view(-1)
            ei, ew = self._take(ei, ew, idx)
            self.kept += idx.numel()
        else:
            keep_all = torch.ones(ei.size(1), dtype=torch.bool, device=device)
        # the sources by node id: no per-batch gather of their rows (and no scores of them to take)
        by_id = own is None and not conv.source_side_weights and (norms is not None or conv.thr_a == 0)
        # of the channels the conv's weights read (the rest, pruned whole, are not propagated):
        # taken once for the layer, every batch's product then reads rows of those alone
        channels = conv.aggregated_channels() if by_id else None
        sources = nbr if channels is None else torch.index_select(
            nbr, 1, channels, out=self.workspace.get(SOURCES, (nbr.size(0), channels.numel()), nbr))
        # each batch's first edge (the edges are sorted by target position): one search per batch
        cuts = list(range(0, targets.numel(), bs)) + [targets.numel()]
        ptr = dict(zip(cuts, torch.searchsorted(ei[1], torch.tensor(cuts, device=device)).tolist()))
        if not by_id:  # [N] scratch of _gathered: each node's row in a batch, and the batch's targets
            self._lookup = torch.full((self.n,), -1, dtype=torch.long, device=device)
            self._mark = torch.zeros(self.n, dtype=torch.bool, device=device)
        result = None  # every target's output, written batch by batch (no list of them to concatenate)
        for a in range(0, targets.numel(), bs):
            b = min(a + bs, targets.numel())
            e0, e1 = ptr[a], ptr[b]
            src, dst = ei[0, e0:e1], ei[1, e0:e1] - a
            w = None if ew is None else ew[e0:e1]
            tgt = targets[a:b]
            if by_id:
                xs = (sources, nbr[start + a:start + b] if start is not None else nbr.index_select(0, tgt))
                local = torch.stack([src, dst])
            else:
                xs, local = self._gathered(task, nbr, tgt, src, dst, a, b)
            x0_tgt = x0[tgt] if conv.needs_x0 else None
            if norms is None:
                lock = None
                if task.lock_all:
                    lock = torch.ones(src.numel(), dtype=torch.bool, device=device)
                elif task.lock_into is not None:
                    lock = task.lock_into.index_select(0, tgt).index_select(0, dst)
                plan = LayerPlan(locked=lock, return_kept=True, score_mean=task.mean, fused=True,
                                 canonical=self.canonical, source_channels=channels)
                out, sel = conv.step(xs, local, w, plan, x0=x0_tgt)
                keep_all[e0:e1] = sel.kept
                self.kept += int(sel.kept.sum())
            else:  # the edges given are the rule's kept ones: the conv does not score them again
                plan = LayerPlan(rule_applied=True, fused=True, canonical=self.canonical, source_channels=channels)
                out, sel = conv.step(xs, local, w, plan, x0=x0_tgt)
            self.computed += int(sel.edges_computed)
            self.channels, self.channels_computed = sel.channels, sel.channels_computed
            for j, lin in enumerate(self.lins):
                self.rows[j] += lin.last_rows
                self.t_dense += lin.last_rows * lin.in_features * lin.out_features
            if result is None:
                shape = (targets.numel(), *out.shape[1:])
                hidden = self.i < self.model.num_layers - 1 and not task.own_result  # (never what the call returns)
                result = self.workspace.get(next_input_role("output", self.i), shape, out) if hidden \
                    else out.new_empty(shape)
            self.model.between_layers(self.i, out, into=result[a:b])
            if self.progress is not None:
                self.progress(b - a)
        if result is None:  # (as torch.cat of no batches raised before)
            raise ValueError("layer-wise inference got no target nodes (output_nodes is empty)")
        self.edges_in += keep_all.numel()
        self.edges_dense += task.edges_dense
        self.targets += targets.numel()
        if norms is None:  # the kept edges, unless every edge was
            ei, ew = edges_given
            if self.kept < ei.size(1):
                ei, ew = self._take(ei, ew, keep_all.nonzero().view(-1))
        return result, (ei, ew)

    def _take(self, ei: Tensor, ew: Optional[Tensor], idx: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The edges ``idx`` of ``(ei, ew)`` (the layer's kept ones, the next layer's input),
        written into the workspace's buffers."""
        ws, k = self.workspace, idx.numel()
        ei = torch.index_select(ei, 1, idx, out=ws.get(next_input_role("edges", self.i), (2, k), ei))
        return ei, None if ew is None else torch.index_select(
            ew, 0, idx, out=ws.get(next_input_role("weights", self.i), (k,), ew))

    def _rule(self, task: TargetTask, chunk: int = 1 << 22) -> Tensor:
        """The layer's edge rule over all the task's edges, in chunks of edges (memory bounded by
        the chunk): bool mask of the kept ones. Locked: self-loops (when the conv locks them) and
        the edges into ``task.lock_into``'s nodes."""
        conv, targets, (ei, ew), start = self.conv, task.nodes, task.edges, task.start
        norms, mean, lock_into = task.norms, task.mean, task.lock_into
        keep = torch.empty(ei.size(1), dtype=torch.bool, device=ei.device)
        for e in range(0, ei.size(1), chunk):
            src, pos = ei[0, e:e + chunk], ei[1, e:e + chunk]
            lock = None
            if conv.lock_self_loops or lock_into is not None:
                tgt = pos + start if start is not None else targets.index_select(0, pos)
                lock = conv.edge_locks(src, tgt, None if lock_into is None else lock_into.index_select(0, tgt))
            w = None if ew is None else ew[e:e + chunk]
            keep[e:e + chunk] = conv.edge_rule(norms, src, w, lock, mean)
        return keep

    def _gathered(self, task: TargetTask, nbr: Tensor, tgt: Tensor, src: Tensor, dst: Tensor, a: int, b: int):
        """``((x_src, x_dst), edges)`` of the batch of targets ``tgt`` (the task's ``a .. b - 1``)
        with its distinct sources' rows gathered: the targets' own rows first (a sampled block's
        layout), then the others' rows; the edges ``(src, dst)`` renumbered to those rows."""
        own, lookup, mark, device = task.own, self._lookup, self._mark, src.device
        if task.loops_only:
            own_src = src == tgt.index_select(0, dst)
        else:
            mark[tgt] = True
            own_src = mark.index_select(0, src)
            mark[tgt] = False
            lookup[tgt] = torch.arange(b - a, device=device)
        others = torch.unique(src[~own_src])
        lookup[others] = torch.arange(b - a, b - a + others.numel(), device=device)
        local_src = lookup.index_select(0, src)
        if task.loops_only:
            local_src = torch.where(own_src, dst, local_src)
        if own is None:  # a target's own row is its neighbour row: one gather, targets first
            src_rows = nbr.index_select(0, torch.cat([tgt, others]))
            xs = (src_rows, src_rows[:b - a])
        else:
            xs = (torch.cat([own[a:b], nbr.index_select(0, others)]), own[a:b])
        return xs, torch.stack([local_src, dst])

    def stats(self) -> LayerStats:
        edges = EdgeCounts(self.edges_dense, self.edges_in, self.kept, self.computed)
        channels = (self.channels, self.channels_computed)
        return self.conv.layer_stats(edges, self.targets, self.rows, self.t_dense, channels)
