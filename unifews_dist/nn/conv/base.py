"""What every Unifews layer shares: the edge-pruning step and its bookkeeping."""
from __future__ import annotations

import inspect
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import spmm

from ...sparsify import check_threshold, edge_keep_mask, edge_scores, node_norms, transform_macs
from ...sparsify.spmm import csr_adjacency
from ..linear import UnifewsLinear
from ..selection import LayerPlan, Selection, compact, hop_sums, hops_with_loops, select_edges, take_rows
from ..stats import EdgeCounts, LayerStats

PairTensor = Tuple[Tensor, Tensor]


def split_pair(x: Union[Tensor, PairTensor]) -> PairTensor:
    """``(x_src, x_dst)`` from a tensor (square graph) or a pair (bipartite sampled block)."""
    if isinstance(x, Tensor):
        return x, x
    if len(x) != 2:
        raise ValueError(f"x must be a tensor or a (x_src, x_dst) pair, got a sequence of {len(x)}")
    return x[0], x[1]


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int) -> None:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.numel():
        max_src, max_dst = edge_index.amax(dim=1).tolist()  # one device sync for both
        if max_src >= num_src or max_dst >= num_dst:
            raise ValueError(f"edge_index refers to node {max_src} -> {max_dst}, "
                             f"but x has {num_src} source and {num_dst} target nodes")


class UnifewsConv(MessagePassing):
    """Base of the sparsified layers: messages factor as ``w_e * h_src(e)`` and edges whose
    message norm is below ``thr_a`` times the layer's mean are dropped before aggregation.

    ``conv(x, edge_index, edge_weight)`` is PyG's call (``return_kept=True`` also returns the
    rule's bool mask of the edges, self-loops included). A stack calls :meth:`step` with a
    :class:`LayerPlan` and gets ``(out, selection)`` back: the :class:`Selection` says which
    edges and rows were aggregated and how many, for the next layer and the statistics. One
    template serves every conv: prepare the edges, :meth:`transform`, weigh the edges
    (:meth:`edge_weights`), score and prune them, select the kept ones into the target rows
    computed (:func:`~unifews_dist.nn.selection.select_edges`), propagate, :meth:`combine`. A
    conv supplies only its pieces, as PyG convs supply ``message`` / ``update``, and declares the
    few facts its code cannot show by class attributes (below).

    With the plan's ``num_next`` the output holds only the rows the next layer reads, and a node
    whose every outgoing edge was pruned is neither aggregated into nor transformed. With its
    ``bounds`` the layer reads all its counts in one transfer and keeps the order, so the next
    layer takes its edges as a prefix of the kept ones (no validity mask, no masked mean).

    Device syncs: with ``bounds``, one read of the layer's counts per layer (the kept edges and
    rows are then found with ``nonzero_static``, which needs none); without, one ``nonzero`` for
    the kept edges and one for the rows computed. Edge counts for statistics are host ints or
    device tensors, never read on their own.
    """

    # What a conv declares: the facts its code cannot show. Everything else a stack or layer-wise
    # inference needs is derived from these and from the conv's signatures (see __init_subclass__).

    #: whether the conv adds a self-loop per node, its own term (GCN, GCNII, GATv2). Otherwise the
    #: node's own term is outside propagation (SAGE's root weight, GIN's ``1 + eps``) and
    #: :meth:`prepare_edges` keeps the edges as given, in order, each weighed from its target's
    #: in-edges alone: in a sampler's hop-ordered block each layer's edges are then a prefix, the
    #: edges into some targets prepare alike on their own, and a self-loop in the graph is an
    #: ordinary message, not locked. With loops, a sampled block is reordered hop by hop, each
    #: hop's edges followed by its nodes' loops, so each layer's edges are still a prefix.
    adds_self_loops = False
    #: whether messages are weighed by attention normalised over the layer's edges (GATv2): the
    #: edge weights then need exactly this layer's edges (a stack's validity mask is applied
    #: first, one device read), and an edge's score is not its prepared weight times its source's
    #: norm, so the rule cannot be applied from node norms before a batch's rows are gathered
    attention = False
    #: names of the linear maps applied to source rows before propagation (the rest are applied
    #: to target rows): a conv without them propagates its inputs as they are
    source_side_weights: Tuple[str, ...] = ()
    #: whether a stack of these puts a linear map before and after its layers (all hidden x hidden)
    stack_in_out_linears = False

    #: (derived) whether :meth:`forward` takes the initial representation ``x_0`` (GCNII)
    needs_x0 = False
    #: (derived) the stack's conv options (:class:`UnifewsGNN`'s ``heads``, ``gcnii_alpha``, ...)
    #: this conv's :meth:`for_stack` takes; the stack refuses one set for a conv that does not
    stack_options: Tuple[str, ...] = ()
    #: (derived) scores are prepared weights times input norms: a first layer's rule needs no row (SAGE)
    scores_inputs = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.needs_x0 = "x_0" in inspect.signature(cls.forward).parameters
        own = {m for k in cls.__mro__[:cls.__mro__.index(UnifewsConv)] for m in vars(k)} & {
            "transform", "edge_weights", "score_norms", "score_reference", "edge_rule", "prepare_block"}
        cls.scores_inputs = not (cls.source_side_weights or cls.attention or cls.adds_self_loops or own)
        base = inspect.signature(UnifewsConv.for_stack).parameters
        cls.stack_options = tuple(n for n in inspect.signature(cls.for_stack).parameters if n not in base)

    def __init__(self, thr_a: float = 0.0, lock_self_loops: Optional[bool] = None, **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        self.thr_a = thr_a
        #: self-loops are never pruned (default: when the self-loop is the node's own term)
        self.lock_self_loops = self.adds_self_loops if lock_self_loops is None else bool(lock_self_loops)

    @classmethod
    def for_stack(cls, layer: int, num_layers: int, in_channels: int, out_channels: int, thr_a: float = 0.0,
                  thr_w: float = 0.0) -> "UnifewsConv":
        """This conv as layer ``layer`` of ``num_layers`` in :class:`UnifewsGNN`; a conv with
        :attr:`stack_options` takes those as keyword arguments too."""
        return cls(in_channels, out_channels, thr_a=thr_a, thr_w=thr_w)

    @property
    def thr_a(self) -> float:
        return self._thr_a

    @thr_a.setter
    def thr_a(self, value: float) -> None:
        self._thr_a = check_threshold("thr_a", value)

    # The threshold is part of the layer's state: a checkpoint holds the model as it was
    # (a schedule may have moved it), and loading one brings it back.
    def get_extra_state(self) -> dict:
        return {"thr_a": self.thr_a}

    def set_extra_state(self, state: dict) -> None:
        self.thr_a = state["thr_a"]

    # -- the layer: one template; each conv supplies its pieces ------------------------------
    def forward(self, x: Union[Tensor, PairTensor], edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                return_kept: bool = False):
        """PyG's call: the layer's output rows (``return_kept``: and the rule's bool mask of the
        edges given, as PyG's attention convs return their weights).

        Args:
            x: node features, or ``(x_src, x_dst)`` for a bipartite sampled block.
            edge_index: the edges (source, target), checked and prepared here.
            edge_weight: optional edge weights (multiplied into the conv's own normalisation).
            return_kept: also return the bool mask of the edges the rule kept.
        """
        out, sel = self.step(x, edge_index, edge_weight, LayerPlan(prepared=False, return_kept=return_kept))
        return (out, sel.kept) if return_kept else out

    def step(self, x: Union[Tensor, PairTensor], edge_index: Tensor, edge_weight: Optional[Tensor],
             plan: LayerPlan, x0: Optional[Tensor] = None) -> Tuple[Tensor, Selection]:
        """One layer as a stack runs it: ``(output rows, selection)``, whatever the plan. ``plan``
        says what the stack knows of the block (:class:`LayerPlan`); ``x0``: the initial
        representation, for a conv whose :meth:`forward` takes ``x_0`` (GCNII)."""
        x_src, x_dst = split_pair(x)
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        self._check_plan(plan, edge_index)
        nonneg = plan.prepared or edge_weight is None  # prepared from no weights: 1/deg, gcn_norm, attention
        if not plan.prepared:  # a stack validates its block once, not in every layer
            check_edge_index(edge_index, n_src, n_dst)
            edge_index, edge_weight = self.prepare_edges(edge_index, n_src, n_dst, edge_weight)
        locked, valid = plan.locked, plan.valid
        if valid is not None and self.attention:  # attention is normalised over exactly the layer's edges
            edge_index, edge_weight, locked = compact(valid, edge_index, edge_weight, locked)
            valid = None
        h_src, h_dst = self.transform(x_src, x_dst)
        msg_weight, score_weight = self.edge_weights(h_src, h_dst, edge_index, edge_weight, n_dst)
        num_valid = None if valid is None else valid.sum()
        keep = None
        if not plan.rule_applied:
            norms = self.score_norms(h_src) if self.thr_a > 0 else None
            reference = None if norms is None else self.score_reference(norms, edge_index)
            if norms is not None and score_weight is not None and not nonneg:  # a user's signed weights
                score_weight = score_weight.abs()
            keep = self.prune_edges(edge_index, score_weight, norms, locked, reference, valid, num_valid,
                                    plan.score_mean)
        # selection with bounds narrows the rule's mask in place: a copy when the mask is returned
        narrowed = keep.clone() if plan.return_kept and plan.bounds is not None and keep is not None else keep
        sel = select_edges(narrowed, plan.num_next, n_src, n_dst, edge_index, edge_weight,
                           None if msg_weight is edge_weight else msg_weight, bounds=plan.bounds)
        h_dst = take_rows(sel.rows, h_dst)
        if x0 is not None:
            x0 = take_rows(sel.rows, x0[:n_dst])
        agg = self._aggregate(h_src, h_dst, sel, plan)
        out = self.combine(agg, h_dst, x0) if plan.source_channels is None else \
            self.combine(agg, h_dst, x0, agg_channels=plan.source_channels)
        if plan.return_kept and keep is None:
            keep = torch.ones(edge_index.size(1), dtype=torch.bool, device=out.device)
        computed = math.prod(h_src.shape[1:])
        return out, sel._replace(
            edges_in=edge_index.size(1) if valid is None else num_valid, kept=keep if plan.return_kept else None,
            channels=computed if plan.source_channels is None else math.prod(h_dst.shape[1:]),
            channels_computed=computed)

    def _aggregate(self, h_src: Tensor, h_dst: Tensor, sel: Selection, plan: LayerPlan) -> Tensor:
        """The kept messages summed into the rows computed: per edge (PyG's ``propagate``), or by
        one sparse-dense product (``plan.fused``, no gradient, the base's messages)."""
        ei, w = sel.edge_index, sel.message_weight
        if plan.fused and self._fusable(h_src, w):
            adj_t = csr_adjacency(ei, w, h_src.size(0), h_dst.size(0), h_src.dtype, canonical=plan.canonical)
            return self.propagate(adj_t, x=(h_src, h_dst), edge_weight=None)  # (the weights are in adj_t)
        return self.propagate(ei, x=(h_src, h_dst), edge_weight=w, size=(h_src.size(0), h_dst.size(0)))

    def _check_plan(self, plan: LayerPlan, edge_index: Tensor) -> None:
        bounds = plan.bounds
        if plan.source_channels is not None and (self.source_side_weights or not (plan.rule_applied or
                                                                                   self.thr_a == 0)):
            raise ValueError("source_channels need a conv that propagates its inputs untransformed, "
                             "with edges it does not score (rule_applied or thr_a = 0)")
        if bounds is not None and (plan.valid is not None or bounds[0] != edge_index.size(1)):
            raise ValueError(f"bounds {list(bounds)} need exactly the layer's {bounds[0]} edges and no valid mask")
        if isinstance(plan.locked, int) and bounds is None:
            raise ValueError("locked can be a count of leading edges only with bounds")
        if plan.rule_applied and (plan.valid is not None or bounds is not None or self.attention):
            raise ValueError("rule_applied takes exactly the kept edges (no valid mask, no bounds), "
                             f"of a conv whose scores come from its sources ({type(self).__name__}'s do not)")

    def transform(self, x_src: Tensor, x_dst: Tensor) -> PairTensor:
        """``(h_src, h_dst)``: what is propagated from the sources (and scored), and what
        :meth:`combine` reads of the targets. Default: the features themselves."""
        return x_src, x_dst

    def edge_weights(self, h_src: Tensor, h_dst: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                     num_dst: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """``(message weights, score weights)`` of the edges. Default: the prepared weights, both
        (the same tensor: the selection then carries it once; ``None`` only for unweighted edges)."""
        return edge_weight, edge_weight

    def score_norms(self, h_src: Tensor) -> Tensor:
        """Per-source norms the edge rule scores messages with."""
        return node_norms(h_src)

    def score_reference(self, norms: Tensor, edge_index: Tensor) -> Optional[Tensor]:
        """What the threshold's mean is taken over (``None``: the scores)."""
        return None

    @torch.no_grad()
    def node_score_norms(self, x: Tensor, batch_size: int = 65536) -> Tensor:
        """:meth:`score_norms` of every node's transformed row, in node batches."""
        return torch.cat([self.score_norms(self.transform(x[a:a + batch_size], x[a:a + batch_size])[0])
                          for a in range(0, x.size(0), batch_size)])

    @torch.no_grad()
    def threshold_mean(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                       batch_size: int = 65536, norms: Optional[Tensor] = None) -> Tensor:
        """The mean the edge rule compares against, over all of a graph's (prepared) edges: what
        :meth:`forward` takes over the edges it is given, for layer-wise inference, which gives
        a layer a batch of targets at a time. Node norms in node batches (or ``norms``, from
        :meth:`node_score_norms`), scores in edge chunks (memory bounded by ``batch_size``); the
        scores' weights are the prepared weights (every conv whose score weights are not, GATv2,
        averages a reference of the norms instead)."""
        norms = self.node_score_norms(x, batch_size) if norms is None else norms
        total = self.threshold_sum(norms, edge_index, edge_weight, batch_size)
        return (total / max(edge_index.size(1), 1)).to(norms.dtype)

    def threshold_sum(self, norms: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                      batch_size: int = 65536) -> Tensor:
        """The float64 sum behind :meth:`threshold_mean` over the edges given (only their
        sources are read): ranks that each hold a share of a layer's edges add theirs up."""
        total, n = norms.new_zeros((), dtype=torch.float64), edge_index.size(1)
        chunk = 16 * batch_size
        for e in range(0, n, chunk):
            ei = edge_index[:, e:e + chunk]
            ref = self.score_reference(norms, ei)
            if ref is None:
                ref = edge_scores(norms, ei[0], None if edge_weight is None else edge_weight[e:e + chunk])
            total += ref.sum(dtype=torch.float64)
        return total

    def combine(self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor],
                agg_channels: Optional[Tensor] = None) -> Tensor:
        """The layer's output rows from the aggregated messages and the targets' own rows (``x0``:
        the initial representation, for a conv that reads it). ``agg_channels``: ``agg`` holds only
        these channels: only a conv whose :meth:`aggregated_channels` can be fewer than all is
        given it, so the others' ``combine`` need not take it."""
        raise NotImplementedError

    def aggregated_channels(self) -> Optional[Tensor]:
        """The channels of the aggregated messages that :meth:`combine` reads (``None``: all):
        a linear map whose weight columns are pruned whole reads none of those inputs, so they
        need not be propagated. Default: all."""
        return None

    @staticmethod
    def prepare_edges(edge_index: Tensor, num_src: int, num_dst: int,
                      edge_weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Edges and message weights of the unpruned block (self-loops, normalisation).

        The stack calls this once per minibatch; weights are then carried with the surviving
        edges, so pruning never renormalises the remaining messages.
        """
        return edge_index, edge_weight

    @classmethod
    def prepare_block(cls, edge_index: Tensor, num_src: int, num_dst: int, num_layers: int,
                      num_sampled_nodes: Optional[Sequence[int]] = None,
                      num_sampled_edges: Optional[Sequence[int]] = None
                      ) -> Tuple[Tensor, Optional[Tensor], Optional[List[int]]]:
        """A stack's edges for a sampled block (:meth:`prepare_edges`) and, when each layer's
        edges are a prefix of them, each layer's edge count (layer ``i`` takes the first
        ``counts[i]``: no device read to find them), else ``None``. A sampler's block lists its
        edges hop by hop (PyG's samplers, ours), so a conv that keeps their order has prefixes,
        and one that adds self-loops has them once its loops follow each hop's edges."""
        cum_n, cum_e = hop_sums(num_sampled_nodes, num_layers), hop_sums(num_sampled_edges, num_layers)
        if cum_n is None or cum_e is None:
            ei, ew = cls.prepare_edges(edge_index, num_src, num_dst)
            return ei, ew, None
        if not cls.adds_self_loops:
            ei, ew = cls.prepare_edges(edge_index, num_src, num_dst)
            return ei, ew, [cum_e[num_layers - 1 - i] for i in range(num_layers)]
        ei, ew = cls.with_self_loops(edge_index, num_src)
        order, counts = hops_with_loops(cum_n, cum_e, edge_index.size(1), num_layers, edge_index.device)
        return ei.index_select(1, order), None if ew is None else ew.index_select(0, order), counts

    @staticmethod
    def with_self_loops(edge_index: Tensor, num_nodes: int) -> Tuple[Tensor, Optional[Tensor]]:
        """For a conv that :attr:`adds_self_loops`: the edges as given, then a self-loop for each
        of the ``num_nodes`` nodes, with their prepared weights (the block's order is made from
        this layout by :meth:`prepare_block`)."""
        raise NotImplementedError

    def prune_edges(self, edge_index: Tensor, edge_weight: Optional[Tensor], src_norm: Tensor,
                    locked: Union[None, Tensor, int] = None, reference: Optional[Tensor] = None,
                    valid: Optional[Tensor] = None, num_valid: Optional[Tensor] = None,
                    mean: Optional[Tensor] = None) -> Optional[Tensor]:
        """Bool mask of kept edges, or ``None`` when every edge given is kept: an edge's score is
        its weight (``>= 0``: a signed weight's magnitude is taken by the caller) times its
        source's norm. Only ``valid`` edges count (in the threshold's mean too) and only they can
        be kept; ``num_valid``: their count, if known. ``locked``: a mask, or the number of
        leading edges locked; ``mean``: the rule's mean, taken elsewhere over more edges."""
        if valid is not None and num_valid is None:
            num_valid = valid.sum()
        if self.thr_a == 0:
            return valid
        lock = self.edge_locks(edge_index[0], edge_index[1], locked if isinstance(locked, Tensor) else None)
        keep = self.edge_rule(src_norm, edge_index[0], edge_weight, lock, mean, reference, valid, num_valid)
        if isinstance(locked, int) and locked > 0:  # (a fresh mask: written in place)
            keep[:locked] = True
        return keep

    def edge_locks(self, src: Tensor, dst: Tensor, locked: Optional[Tensor] = None) -> Optional[Tensor]:
        """The edges the rule never prunes (``None``: none): self-loops, when the conv locks them
        (``src`` and ``dst`` in one numbering), and ``locked``."""
        lock = src == dst if self.lock_self_loops else None  # (equal ids: the same node)
        if locked is not None:
            lock = locked if lock is None else lock | locked
        return lock

    def edge_rule(self, src_norm: Tensor, src: Tensor, edge_weight: Optional[Tensor], lock: Optional[Tensor] = None,
                  mean: Optional[Tensor] = None, reference: Optional[Tensor] = None, valid: Optional[Tensor] = None,
                  num_valid: Optional[Tensor] = None) -> Tensor:
        """The layer's edge rule, the one place it is written (a layer's :meth:`prune_edges`,
        layer-wise inference's rule over all of a layer's edges): bool mask of the edges whose
        score, weight (``>= 0``) times their source's norm, reaches ``thr_a`` times the mean
        score (or ``mean``, taken elsewhere; of ``reference`` instead of the scores, GATv2), and
        of the ``lock`` ones; only ``valid`` edges count and can be kept."""
        scores = edge_scores(src_norm, src, edge_weight, nonneg=True)
        return edge_keep_mask(scores, self.thr_a, lock, reference, valid, num_valid, mean=mean)

    def _fusable(self, h_src: Tensor, weight: Optional[Tensor]) -> bool:
        """Whether messages are the weights times the sources' rows (one dimension each), summed
        by one sparse-dense product: the base's :meth:`message`, no gradient taken."""
        return (type(self).message is UnifewsConv.message and h_src.dim() == 2 and not torch.is_grad_enabled()
                and (weight is None or weight.dim() == 1))

    def message_and_aggregate(self, adj_t: Tensor, x: PairTensor) -> Tensor:
        """The weighted sum of the sources' rows into each target, the adjacency given as a
        sparse ``[targets, sources]`` matrix of the message weights (see ``fused``)."""
        return spmm(adj_t, x[0], reduce=self.aggr)

    def message(self, x_j: Tensor, edge_weight: Optional[Tensor]) -> Tensor:
        if edge_weight is None:
            return x_j
        edge_weight = edge_weight.to(x_j.dtype)
        return x_j * edge_weight.view(*edge_weight.shape, *([1] * (x_j.dim() - edge_weight.dim())))

    def weight_layers(self) -> list[UnifewsLinear]:
        """The conv's linear maps (:class:`UnifewsLinear`), in registration order."""
        return [m for m in self.modules() if isinstance(m, UnifewsLinear)]

    def dense_transform_macs(self, num_src: int, num_dst: int) -> int:
        """Multiply-adds of the conv's linear maps run dense on a whole block: a map of
        :attr:`source_side_weights` on every source row, the others on the targets' rows."""
        return sum(transform_macs(num_src if name in self.source_side_weights else num_dst, m.in_features,
                                  m.out_features) for name, m in self.named_modules() if isinstance(m, UnifewsLinear))

    def layer_stats(self, edges: EdgeCounts, num_targets: int, rows: Sequence[int], transform_macs_dense: int,
                    channels: Tuple[int, int]) -> LayerStats:
        """This layer's :class:`LayerStats` (a stack's forward, layer-wise inference): ``edges``
        as counted, this conv's self-loops (one per target, when it adds them) among them;
        ``rows``: the rows each of :meth:`weight_layers` multiplied; ``channels``: of a message,
        and of a message propagated."""
        lins = self.weight_layers()
        return LayerStats(edges._replace(own_loops=num_targets if self.adds_self_loops else 0),
                          [(lin.weight.numel(), lin.weight_nnz(), r) for lin, r in zip(lins, rows)],
                          transform_macs_dense, channels, "+".join(sorted({lin.last_backend for lin in lins})))

    def set_thr_w(self, value: float) -> None:
        for lin in self.weight_layers():
            lin.thr_w = value
