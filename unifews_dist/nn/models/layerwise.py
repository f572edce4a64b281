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
from typing import Callable, List, Literal, Optional, Tuple, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ...checks import check_choice
from ... import distributed as ranks
from ..selection import in_degree_ptr, in_edges_of
from ..stats import LayerStats
from .target_batches import BatchedLayer, TargetTask
from .workspace import InferenceWorkspace


LockScope = Literal["outputs", "each"]
LOCK_SCOPES = get_args(LockScope)


@dataclass
class InferenceOptions:
    """How :func:`~unifews_dist.nn.models.layerwise.layerwise_inference` runs.

    Args:
        batch_size: target nodes per batch (their in-edges and sources are what one batch holds).
        output_nodes: the nodes whose outputs are returned; ``None``: every node.
        progress: called with the number of target nodes after each batch (a progress bar).
        distributed: called on every rank of the initialised process group at once (each with
            its own ``output_nodes``): the ranks split the work instead of each doing all of it.
            Each rank computes every layer for a contiguous share of the nodes (the last layer:
            for the output nodes of every rank in its share) and holds the in-edges of its share
            only, the kept ones after each layer; the rows are all-gathered (one buffer), and the
            rule's mean is the ranks' sums added up. Every rank then holds the same
            representations and means as one process would (with ``"outputs"``, the locked nodes
            are every rank's output nodes), and returns its own output nodes' rows. Its
            statistics are this rank's share (a sum over ranks is one process's for every rank's
            output nodes). With ``"each"``, each rank computes its own outputs' locked rows.
        lock_scope: ``"outputs"`` or ``"each"`` (:func:`~unifews_dist.nn.models.layerwise.layerwise_inference`).
        workspace: an :class:`InferenceWorkspace` to take the large buffers from and leave them
            in for the next call (``None``: the call's own, freed when it ends).
        canonical: the edges sorted by target and source and each batch's sum in cuSPARSE's
            canonical CSR (default: on CUDA; asked for on the CPU, the GPU's path runs there).
    """

    batch_size: int = 4096
    output_nodes: Optional[Tensor] = None
    progress: Optional[Callable[[int], None]] = None
    distributed: bool = False
    lock_scope: str = "outputs"
    workspace: Optional[InferenceWorkspace] = None
    canonical: Optional[bool] = None


class _Run:
    """One call's set-up, and the steps of :func:`layerwise_inference` that read it: the graph
    sorted by target (this rank's share under DDP), the output nodes, whose in-edges are locked,
    and the rows gathered from every rank after each layer."""

    def __init__(self, model, n: int, options: InferenceOptions):
        if model.training:
            raise ValueError("layer-wise inference runs the model in evaluation mode: call model.eval() first")
        if options.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {options.batch_size}")
        check_choice("lock_scope", options.lock_scope, LOCK_SCOPES)
        self.model, self.n, self.options = model, n, options
        self.device = next(model.parameters()).device
        locked = model.lock_target_edges in ("always", "eval")
        self.each = locked and options.lock_scope == "each"
        self.world, self.rank = ranks.world() if options.distributed else (1, 0)
        # by target: a batch of targets is a slice of edges. On CUDA also by source, as cuSPARSE's
        # rows must be (the fused aggregation then copies nothing but for repeated edges)
        self.canonical = self.device.type == "cuda" if options.canonical is None else options.canonical
        self.space = InferenceWorkspace() if options.workspace is None else options.workspace  # (none: the call's own)
        self.everyone = torch.arange(n, device=self.device)
        self.outputs = self.everyone if options.output_nodes is None else options.output_nodes.to(self.device)
        self.wanted = self._every_ranks_outputs()  # under DDP: [N] bool, every rank's output nodes
        self.lock_into = None  # the output nodes (of every rank): their in-edges locked
        if locked and not self.each:
            self.lock_into = self.wanted
            if self.lock_into is None:
                self.lock_into = torch.zeros(n, dtype=torch.bool, device=self.device)
                self.lock_into[self.outputs] = True
        self.shares = ranks.shares(n, self.world) if self.world > 1 else None
        self.lo, self.hi = self.shares[self.rank] if self.world > 1 else (0, n)

    def _every_ranks_outputs(self) -> Optional[Tensor]:
        if self.world == 1:
            return None
        if self.n < self.world:
            raise ValueError(f"distributed layer-wise inference needs at least one node per rank: {self.n} nodes, "
                             f"{self.world} ranks")
        if self.options.output_nodes is None:
            return None
        union = torch.zeros(self.n, dtype=torch.uint8, device=self.device)
        union[self.outputs] = 1
        dist.all_reduce(union, op=dist.ReduceOp.MAX)
        wanted = union.bool()
        if not bool(wanted.any()):  # (as one process: no rank has an output node)
            raise ValueError("layer-wise inference got no target nodes (output_nodes is empty)")
        return wanted

    def graph(self, edge_index: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The prepared edges sorted by target, this rank's share's under DDP (targets as positions
        in the share); sets the in-degrees and, with ``"each"``, the output nodes' in-edges."""
        n, Conv, device = self.n, type(self.model.convs[0]), self.device
        # under DDP a conv whose edges prepare by target prepares its rank's share only (below)
        share_first = self.world > 1 and not self.each and not Conv.adds_self_loops
        ei, ew = (edge_index.to(device), None) if share_first else \
            Conv.prepare_edges(edge_index.to(device), n, n)  # the whole graph's weights (1/deg, gcn_norm)
        # on the CPU a graph already in target order (a CSC, as prepared datasets give it) is not sorted
        if self.canonical:
            order = torch.argsort(ei[1] * n + ei[0])
        else:
            order = torch.argsort(ei[1], stable=True) if bool((ei[1, 1:] < ei[1, :-1]).any()) else None
        if order is not None:
            ei = ei.index_select(1, order)
            ew = None if ew is None else ew.index_select(0, order)
        self.in_degree = in_degree_ptr(ei, n).diff()
        if self.each:
            self.out_edges = (ei, ew) if self.options.output_nodes is None else in_edges_of(ei, ew, self.outputs, n)
        if self.world > 1:  # this rank's share of the targets: the in-edges of those are all the
            # edges it holds, and, after each layer, its kept ones
            lo, hi = self.lo, self.hi
            a, b = torch.searchsorted(ei[1], torch.tensor([lo, hi], device=device)).tolist()  # (ei: by target)
            ei, ew = torch.stack([ei[0, a:b], ei[1, a:b] - lo]), None if ew is None else ew[a:b].clone()
            if share_first:  # (the in-degrees above: of the edges as given, which these convs keep)
                ei, ew = Conv.prepare_edges(ei, n, hi - lo)
        return ei, ew

    def input_rows(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Every node's input to the first conv, and the initial representation ``x0`` of a stack
        with a linear map before its convs (GCNII)."""
        h, bs = x.to(self.device), self.options.batch_size
        if self.model.lin_in is None:
            return h, None
        h = torch.cat([F.relu(self.model.lin_in(h[a:a + bs])) for a in range(0, self.n, bs)])
        return h, h

    def output_rows(self, h: Tensor) -> Tensor:
        """The rows returned: after the stack's linear map after its convs, if it has one."""
        bs = self.options.batch_size
        if self.model.lin_out is None:
            return h
        return torch.cat([self.model.lin_out(h[a:a + bs]) for a in range(0, h.size(0), bs)])

    def layer(self, i: int) -> BatchedLayer:
        o = self.options
        return BatchedLayer(self.model, i, self.n, o.batch_size, o.progress, self.space, self.canonical)

    def locked_outputs(self, own: Tensor) -> TargetTask:
        """``"each"``: the output nodes with every in-edge locked, their own rows the locked rows
        of the layer before, their neighbours' rows the pruned ones."""
        return TargetTask(self.outputs, self.out_edges, int(self.in_degree[self.outputs].sum()), own=own,
                          lock_all=True, loops_only=True, own_result=True)

    def pruned_targets(self, conv, last: bool, pruned: Tensor, edges) -> Optional[TargetTask]:
        """The targets whose rows the rule prunes at this layer, with the rule's mean over all the
        layer's edges: this rank's share of every node (the last layer: of the output nodes);
        ``None``: none in this rank's share."""
        ei, ew = edges
        norms = mean = None
        if conv.thr_a > 0:  # the rule's mean over all the layer's edges
            norms = conv.node_score_norms(pruned)
            mean = conv.threshold_mean(pruned, ei, ew, norms=norms) if self.world == 1 else \
                ranks.mean_over_ranks(conv.threshold_sum(norms, ei, ew), ei.size(1), norms.dtype)
            norms = None if conv.attention else norms
        start = 0  # the targets are the nodes start, start + 1, ... (None: any nodes)
        if self.world > 1 and last and self.wanted is not None:  # the output nodes in this rank's share
            pos = self.wanted[self.lo:self.hi].nonzero().view(-1)
            tg, (t_ei, t_ew), start = pos + self.lo, in_edges_of(ei, ew, pos, self.hi - self.lo), None
        elif self.world > 1:  # this rank's share
            tg, t_ei, t_ew, start = self.everyone[self.lo:self.hi], ei, ew, self.lo
        elif last and self.options.output_nodes is not None:
            tg, t_ei, t_ew, start = (self.outputs, *in_edges_of(ei, ew, self.outputs, self.n), None)
        else:
            tg, t_ei, t_ew = self.everyone, ei, ew
        if not tg.numel() and self.world > 1:  # (one process given no output node: the layer says so)
            return None
        return TargetTask(tg, (t_ei, t_ew), int(self.in_degree[tg].sum()), start=start, lock_into=self.lock_into,
                          mean=mean, norms=norms)

    def from_every_rank(self, i: int, rows: Optional[Tensor], like: Tensor, last: bool) -> Tensor:
        """Under DDP, every rank's rows of this layer, in node order (the last layer: every rank's
        output nodes')."""
        shares = self.shares
        if last and self.wanted is not None:
            sizes = torch.stack([self.wanted[beg:end].sum() for beg, end in shares]).tolist()
            rows = ranks.all_gather_rows(ranks.rows_or_none(rows, like.dtype, self.device), sizes)
            return rows.index_select(0, (self.wanted.cumsum(0) - 1).index_select(0, self.outputs))
        m = max(end - beg for beg, end in shares)
        into = None if last else self.space.get(("gathered", i % 2), (self.world * m, *rows.shape[1:]), rows)
        return ranks.all_gather_rows(rows, [end - beg for beg, end in shares], into)


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
    run = _Run(model, x.size(0), options or InferenceOptions())
    edges = run.graph(edge_index)
    pruned, x0 = run.input_rows(x)  # every node's pruned rows
    own = pruned[run.outputs] if run.each else None  # the outputs' own (locked) rows
    stats: List[LayerStats] = []
    for i, conv in enumerate(model.convs):
        last = i == model.num_layers - 1
        layer = run.layer(i)
        if run.each:  # the outputs, their in-edges locked
            own, _ = layer.run(run.locked_outputs(own), pruned, x0)
        if not last or not run.each:  # every node (the last layer: the outputs only), pruned by the rule
            task = run.pruned_targets(conv, last, pruned, edges)
            rows, kept = layer.run(task, pruned, x0) if task is not None else (None, None)
            if run.world > 1:  # every rank: every node's rows
                rows = run.from_every_rank(i, rows, pruned, last)
            if not last:  # progressive: what this layer pruned is gone from the later ones
                edges = kept
            pruned = rows
        stats.append(layer.stats())
    model.set_layer_stats(stats)  # what the monitors read, as after a forward
    return run.output_rows(own if run.each else pruned)
