"""Layer-wise full-graph inference of a :class:`UnifewsGNN`: every node's output over all of its
kept in-edges, one layer at a time, in batches of target nodes.

PyG's ``BasicGNN.inference`` runs a model this way (a loader over every node with all
neighbours, each layer for all nodes before the next), but it knows nothing of edge pruning:
here the edge rule's mean is taken over all of a layer's edges (:meth:`UnifewsConv.threshold_mean`)
before the layer runs batch by batch, and the edges a layer prunes are gone from every later
layer (progressive, as in training). A batch's messages are summed by one sparse-dense product
(the conv's ``fused`` aggregation: no per-edge message tensor), its sources' rows read by node id
where the conv propagates them untransformed, of the channels the layer's pruned weights read
only. Memory: two representations of every node per layer (``N x hidden`` each) and the read
channels of one, the graph's edges, and one batch's sparse adjacency. Under DDP
(``distributed``) each rank holds the same rows, but of the edges only its share's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional, Tuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ...checks import check_choice
from ... import distributed as ranks
from ...sparsify import edge_keep_mask, edge_scores
from ..selection import LayerPlan, in_degree_ptr, in_edges_of
from ..stats import EdgeCounts, LayerStats
from .workspace import SOURCES, InferenceOptions, InferenceWorkspace, next_input_role


LockScope = Literal["outputs", "each"]
LOCK_SCOPES = get_args(LockScope)


@dataclass
class _Targets:
    """What one :meth:`_Layer.run` computes: the outputs of ``nodes`` over ``edges``.

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


class _Layer:
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

    def run(self, task: _Targets, nbr: Tensor, x0: Optional[Tensor]
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
        if not by_id:
            lookup = torch.full((self.n,), -1, dtype=torch.long, device=device)
            mark = torch.zeros(self.n, dtype=torch.bool, device=device)
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
                xs, local = self._gathered(tgt, (src, dst), own, nbr, task.loops_only, (a, b), (lookup, mark))
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

    def _rule(self, task: _Targets, chunk: int = 1 << 22) -> Tensor:
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
                if conv.lock_self_loops:
                    lock = src == tgt
                if lock_into is not None:
                    into = lock_into.index_select(0, tgt)
                    lock = into if lock is None else lock.logical_or_(into)
            w = None if ew is None else ew[e:e + chunk]
            keep[e:e + chunk] = edge_keep_mask(edge_scores(norms, src, w, nonneg=True), conv.thr_a, lock, mean=mean)
        return keep

    @staticmethod
    def _gathered(tgt, edges, own, nbr, loops_only, span, scratch):
        """``((x_src, x_dst), edges)`` of a batch (targets ``span = (a, b)``) with its distinct
        sources' rows gathered: the targets' own rows first (a sampled block's layout), then the
        others' rows; the edges' sources renumbered to those rows (``scratch``: ``[N]`` lookup and
        mark buffers)."""
        (src, dst), (a, b), (lookup, mark) = edges, span, scratch
        device = src.device
        if loops_only:
            own_src = src == tgt.index_select(0, dst)
        else:
            mark[tgt] = True
            own_src = mark.index_select(0, src)
            mark[tgt] = False
            lookup[tgt] = torch.arange(b - a, device=device)
        others = torch.unique(src[~own_src])
        lookup[others] = torch.arange(b - a, b - a + others.numel(), device=device)
        local_src = lookup.index_select(0, src)
        if loops_only:
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


@torch.no_grad()
def layerwise_inference(model, x: Tensor, edge_index: Tensor, options: Optional[InferenceOptions] = None) -> Tensor:
    """Outputs ``[N, C]`` of ``model`` (a :class:`UnifewsGNN`, in evaluation mode) for every node
    of the graph ``(x, edge_index)``, or ``[len(output_nodes), C]`` for the nodes given.

    Every node's representation at each layer is pruned by the layer's rule over the whole graph
    (the threshold's mean over all of the layer's edges that survived the layers before it;
    weight masks as trained). That is the output when seed edges are not locked
    (``lock_target_edges="never"``, or ``"always"`` in training only).

    With locking (``"eval"`` / ``"always"``), ``lock_scope`` says whose in-edges are kept:

    - ``"outputs"``: every output node's in-edges, at every layer, all at once: what a sampled
      evaluation does for the seeds of one batch (a seed that is another seed's neighbour is
      locked there too), and what the reference code's full-graph evaluation does for the split
      it scores. Each layer runs once. Predicting every node then prunes no edge.
    - ``"each"``: as a sampled evaluation of each output node on its own: the node's in-edges
      are kept at every layer, its own row (its input, its self-loop) is its locked
      representation of the layer before, and its neighbours' rows are their pruned
      representations, so a node's output depends on no other output node. Each layer is
      computed twice, pruned for every node and locked for the output nodes.

    With thresholds 0 this is the full-graph forward of the dense model.

    The model runs on its own device; ``x`` and ``edge_index`` may be on the host.
    """
    options = options or InferenceOptions()
    batch_size, output_nodes, progress = options.batch_size, options.output_nodes, options.progress
    distributed, lock_scope, workspace = options.distributed, options.lock_scope, options.workspace
    if model.training:
        raise ValueError("layer-wise inference runs the model in evaluation mode: call model.eval() first")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_choice("lock_scope", lock_scope, LOCK_SCOPES)
    device = next(model.parameters()).device
    n, L = x.size(0), model.num_layers
    Conv = type(model.convs[0])
    locked = model.lock_target_edges in ("always", "eval")
    each = locked and lock_scope == "each"
    world, rank = ranks.world() if distributed else (1, 0)
    # under DDP a conv whose edges prepare by target prepares its rank's share only (below)
    share_first = world > 1 and not each and not Conv.adds_self_loops
    ei, ew = (edge_index.to(device), None) if share_first else \
        Conv.prepare_edges(edge_index.to(device), n, n)  # the whole graph's weights (1/deg, gcn_norm)
    # by target: a batch of targets is a slice of edges. On CUDA also by source, as cuSPARSE's
    # rows must be (the fused aggregation then copies nothing but for repeated edges); on the CPU
    # a graph already in target order (a CSC, as prepared datasets give it) is not sorted at all
    canonical = device.type == "cuda" if options.canonical is None else options.canonical
    if canonical:
        order = torch.argsort(ei[1] * n + ei[0])
    else:
        order = torch.argsort(ei[1], stable=True) if bool((ei[1, 1:] < ei[1, :-1]).any()) else None
    if order is not None:
        ei = ei.index_select(1, order)
        ew = None if ew is None else ew.index_select(0, order)
    everyone = torch.arange(n, device=device)
    outputs = everyone if output_nodes is None else output_nodes.to(device)
    wanted = None  # under DDP: [N] bool, every rank's output nodes
    if world > 1:
        import torch.distributed as dist
        if n < world:
            raise ValueError(f"distributed layer-wise inference needs at least one node per rank: {n} nodes, "
                             f"{world} ranks")
        if output_nodes is not None:
            union = torch.zeros(n, dtype=torch.uint8, device=device)
            union[outputs] = 1
            dist.all_reduce(union, op=dist.ReduceOp.MAX)
            wanted = union.bool()
            if not bool(wanted.any()):  # (as one process: no rank has an output node)
                raise ValueError("layer-wise inference got no target nodes (output_nodes is empty)")
    lock_into = None
    if locked and not each:  # the output nodes (of every rank): their in-edges locked
        lock_into = wanted
        if lock_into is None:
            lock_into = torch.zeros(n, dtype=torch.bool, device=device)
            lock_into[outputs] = True
    in_degree = in_degree_ptr(ei, n).diff()
    if each:
        out_ei, out_ew = (ei, ew) if output_nodes is None else in_edges_of(ei, ew, outputs, n)
    if world > 1:  # this rank's share of the targets: the in-edges of those (targets as positions
        # in the share) are all the edges it holds, and, after each layer, its kept ones
        shares = ranks.shares(n, world)
        lo, hi = shares[rank]
        a, b = torch.searchsorted(ei[1], torch.tensor([lo, hi], device=device)).tolist()  # (ei: by target)
        ei, ew = torch.stack([ei[0, a:b], ei[1, a:b] - lo]), None if ew is None else ew[a:b].clone()
        if share_first:  # (the in-degrees above: of the edges as given, which these convs keep)
            ei, ew = Conv.prepare_edges(ei, n, hi - lo)
    h = x.to(device)
    x0 = None
    if model.lin_in is not None:
        h = x0 = torch.cat([F.relu(model.lin_in(h[a:a + batch_size])) for a in range(0, n, batch_size)])
    pruned = h  # every node's pruned rows
    own = h[outputs] if each else None  # the outputs' own (locked) rows
    stats: List[LayerStats] = []
    space = InferenceWorkspace() if workspace is None else workspace  # (none given: the call's own)
    for i, conv in enumerate(model.convs):
        last = i == L - 1
        layer = _Layer(model, i, n, batch_size, progress, space, canonical)
        if each:  # the outputs, their in-edges locked: own rows from before, neighbours' pruned rows
            task = _Targets(outputs, (out_ei, out_ew), int(in_degree[outputs].sum()), own=own, lock_all=True,
                            loops_only=True, own_result=True)
            own, _ = layer.run(task, pruned, x0)
        if not last or not each:  # every node (the last layer: the outputs only), pruned by the rule
            norms = mean = None
            if conv.thr_a > 0:  # the rule's mean over all the layer's edges
                norms = conv.node_score_norms(pruned)
                mean = conv.threshold_mean(pruned, ei, ew, norms=norms) if world == 1 else \
                    ranks.mean_over_ranks(conv.threshold_sum(norms, ei, ew), ei.size(1), norms.dtype)
                norms = None if conv.attention else norms
            start = 0  # the targets are the nodes start, start + 1, ... (None: any nodes)
            if world > 1 and last and wanted is not None:  # the output nodes in this rank's share
                pos = wanted[lo:hi].nonzero().view(-1)
                tg, (t_ei, t_ew), start = pos + lo, in_edges_of(ei, ew, pos, hi - lo), None
            elif world > 1:  # this rank's share
                tg, t_ei, t_ew, start = everyone[lo:hi], ei, ew, lo
            elif last and output_nodes is not None:
                tg, t_ei, t_ew, start = (outputs, *in_edges_of(ei, ew, outputs, n), None)
            else:
                tg, t_ei, t_ew = everyone, ei, ew
            if tg.numel() or world == 1:  # (one process given no output node: run says so)
                task = _Targets(tg, (t_ei, t_ew), int(in_degree[tg].sum()), start=start, lock_into=lock_into,
                                mean=mean, norms=norms)
                pruned_next, kept = layer.run(task, pruned, x0)
            else:  # (no output node in this rank's share)
                pruned_next, kept = None, None
            if world > 1:  # every rank: every node's rows (the last layer: every rank's outputs')
                if last and wanted is not None:
                    sizes = torch.stack([wanted[beg:end].sum() for beg, end in shares]).tolist()
                    pruned_next = ranks.rows_or_none(pruned_next, pruned.dtype, device)
                    rows = ranks.all_gather_rows(pruned_next, sizes)
                    pruned_next = rows.index_select(0, (wanted.cumsum(0) - 1).index_select(0, outputs))
                else:
                    m = max(end - beg for beg, end in shares)
                    into = None if last else space.get(("gathered", i % 2), (world * m, *pruned_next.shape[1:]),
                                                       pruned_next)
                    pruned_next = ranks.all_gather_rows(pruned_next, [end - beg for beg, end in shares], into)
            if not last:  # progressive: what this layer pruned is gone from the later ones
                ei, ew = kept
            pruned = pruned_next
        stats.append(layer.stats())
    h = own if each else pruned
    if model.lin_out is not None:
        h = torch.cat([model.lin_out(h[a:a + batch_size]) for a in range(0, h.size(0), batch_size)])
    model.set_layer_stats(stats)  # what the monitors read, as after a forward
    return h
