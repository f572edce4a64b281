"""What every Unifews layer shares: the edge-pruning step and its bookkeeping."""
from __future__ import annotations

import math
import warnings
from itertools import accumulate
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import spmm

from ...sparsify import check_threshold, edge_keep_mask, edge_scores, locked_edges, node_norms
from ..constants import slot_ids
from ..linear import UnifewsLinear

PairTensor = Tuple[Tensor, Tensor]
def split_pair(x: Union[Tensor, PairTensor]) -> PairTensor:
    """``(x_src, x_dst)`` from a tensor (square graph) or a pair (bipartite sampled block)."""
    if isinstance(x, Tensor):
        return x, x
    if len(x) != 2:
        raise ValueError(f"x must be a tensor or a (x_src, x_dst) pair, got a sequence of {len(x)}")
    return x[0], x[1]


def hop_sums(counts: Optional[Sequence[int]], num_layers: int) -> Optional[List[int]]:
    """Running sums of per-hop counts (host numbers), or ``None`` when fewer than ``num_layers``
    hops are given."""
    if counts is None:
        return None
    if len(counts) < num_layers:
        raise ValueError(f"{num_layers} layers need per-hop counts for {num_layers} hops, got {list(counts)}")
    return list(accumulate(int(c) for c in counts))


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int) -> None:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.numel():
        max_src, max_dst = edge_index.amax(dim=1).tolist()  # one device sync for both
        if max_src >= num_src or max_dst >= num_dst:
            raise ValueError(f"edge_index refers to node {max_src} -> {max_dst}, "
                             f"but x has {num_src} source and {num_dst} target nodes")


class Selection(NamedTuple):
    """What a layer aggregated: ``rows`` it computed (``None``: all), the kept ``edge_index``
    (targets renumbered to positions in ``rows``), the same edges with both ends renumbered
    (``renumbered``; valid where the source is a row computed: every edge into the next
    layer's targets), the first per-edge tensor (the message weights) selected with them, and
    ``bounds``: when the layer was given its edges' bounds, the same for the kept edges and the
    later layers (host counts; see :meth:`UnifewsConv.forward`), else ``None``."""
    rows: Optional[Tensor]
    renumbered: Optional[Tensor]
    edge_index: Tensor
    edge_weight: Optional[Tensor]
    bounds: Optional[List[int]] = None


class UnifewsConv(MessagePassing):
    """Base of the sparsified layers: messages factor as ``w_e * h_src(e)`` and edges whose
    message norm is below ``thr_a`` times the layer's mean are dropped before aggregation.

    ``forward`` is one template for every conv: prepare the edges, :meth:`transform`, weigh the
    edges (:meth:`edge_weights`), score and prune them, select the kept ones into the target rows
    computed, propagate, :meth:`combine`. A conv supplies only its pieces, as PyG convs supply
    ``message`` / ``update``.

    Inside a stack (``prepared=True``) two more arguments apply. ``valid``: a bool mask of the
    edges given that are this layer's (the rest are ignored: the stack hands on the previous
    layer's aggregated edges without compacting them, so no device sync is spent on it).
    ``num_next``: the next layer's targets are rows ``0 .. num_next - 1``; the output then holds
    only the rows the next layer reads (those and the sources of the kept edges into them), and
    a node whose every outgoing edge was pruned is neither aggregated into nor transformed.
    What was selected is left in :attr:`last_selection` for the stack.

    ``bounds`` (host counts, the stack's sampled blocks): ``bounds[k]`` of the edges given are
    those into the targets of the ``k``-th layer from this one (``bounds[0]``: all of them; the
    edges into a later layer's targets are a prefix, as in a sampler's hop-ordered block).
    Given them, the layer reads all its counts in one transfer and keeps the order, so the next
    layer takes its edges as a prefix of the kept ones (no validity mask, no masked mean), and
    ``locked`` may be an int: the first ``locked`` edges (the edges into the seeds) are locked.

    Device syncs: with ``bounds``, one read of the layer's counts per layer (the kept edges and
    rows are then found with ``nonzero_static``, which needs none); without, one ``nonzero`` for
    the kept edges and one for the rows computed. Edge counts for statistics are host ints or
    device tensors, never read on their own.
    """

    #: whether forward takes the initial representation ``x_0`` (GCNII)
    needs_x0 = False
    #: whether a stack of these puts a linear map before and after its layers (all hidden x hidden)
    stack_in_out_linears = False
    #: the stack's conv options (:class:`UnifewsGNN`'s ``heads``, ``gcnii_alpha``, ...) this conv
    #: takes in :meth:`for_stack`; the stack refuses one set for a conv that does not take it
    stack_options: tuple = ()
    #: whether :meth:`edge_weights` needs exactly this layer's edges (attention is normalised
    #: over them): a stack's validity mask is then applied first, with one device read
    needs_exact_edges = False
    #: whether :meth:`prepare_edges` returns the edges in the order given (and no others), so
    #: that in a sampler's hop-ordered block each layer's edges are a prefix
    keeps_edge_order = True
    #: names of the linear maps applied to source rows (the rest are applied to target rows)
    source_side_weights: Tuple[str, ...] = ()
    #: whether the node's own term is outside propagation (SAGE's root weight, GIN's ``1 + eps``):
    #: a self-loop edge is then an ordinary message, not the node's own term, and is not locked
    own_term_outside = False

    def __init__(self, thr_a: float = 0.0, lock_self_loops: Optional[bool] = None, **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        self.thr_a = thr_a
        #: self-loops are never pruned (default: when the self-loop is the node's own term)
        self.lock_self_loops = not self.own_term_outside if lock_self_loops is None else bool(lock_self_loops)
        # statistics of the last forward: ints, or 0-dim device tensors (read only when logged)
        self.last_edges_in = 0
        self.last_edges_kept = 0
        self.last_edges_computed = 0
        self.last_prop_channels = 0  # channels of a message (of the propagation unpruned)
        self.last_prop_channels_computed = 0  # channels propagated (fewer with source_channels)
        self.last_selection: Optional["Selection"] = None

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
                locked: Union[None, Tensor, int] = None, return_kept: bool = False, prepared: bool = False,
                num_next: Optional[int] = None, valid: Optional[Tensor] = None, x0: Optional[Tensor] = None,
                bounds: Optional[Sequence[int]] = None, score_mean: Optional[Tensor] = None,
                rule_applied: bool = False, fused: bool = False, source_channels: Optional[Tensor] = None):
        """Prepare edges, transform, score, select, restrict targets, propagate, combine.

        Args:
            x: node features, or ``(x_src, x_dst)`` for a bipartite sampled block.
            edge_index, edge_weight: the edges (source, target) and optional weights.
            locked: ``[E]`` bool, edges never pruned (the stack's seed edges), or with
                ``bounds`` an int: the first ``locked`` edges.
            return_kept: also return the bool mask of the edges the rule kept.
            prepared: the edges and weights come from :meth:`prepare_edges` (or
                :meth:`prepare_block`) of this conv with no user weights, as in a stack: they are
                not checked again, and the weights are taken as non-negative (no ``abs``).
            num_next, valid, bounds: see the class docstring (used by the stack).
            x0: the initial representation, for convs that read it (GCNII).
            score_mean: the threshold's mean, taken elsewhere over more edges than these
                (layer-wise inference; see :meth:`threshold_mean`).
            rule_applied: the edges given are the ones the edge rule keeps, found by the caller
                from every node's norms (layer-wise inference, for a conv whose
                :attr:`scores_from_sources`): they are not scored again, and all are aggregated.
            fused: with no gradient taken (layer-wise inference), a conv whose messages are its
                weights times its sources' rows (the base's :meth:`message`, rows of one
                dimension) aggregates them with one sparse-dense product (PyG's fused
                :meth:`message_and_aggregate`), holding no per-edge message tensor. Fastest when
                the edges come sorted by target (on CUDA: by target, then source, none repeated;
                see :meth:`adjacency`).
            source_channels: the sources' rows hold only these channels, the
                :meth:`aggregated_channels` (the targets' rows hold all): only they are
                propagated. For a conv that propagates its inputs as they are, with the edges
                not scored here (``rule_applied``, or ``thr_a = 0``).
        """
        x_src, x_dst = split_pair(x)
        if source_channels is not None and (type(self).transform is not UnifewsConv.transform
                                            or not (rule_applied or self.thr_a == 0)):
            raise ValueError("source_channels need a conv that propagates its inputs untransformed, "
                             "with edges it does not score (rule_applied or thr_a = 0)")
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        nonneg = prepared or edge_weight is None  # prepared from no weights: 1/deg, gcn_norm, attention
        if bounds is not None and (valid is not None or bounds[0] != edge_index.size(1)):
            raise ValueError(f"bounds {list(bounds)} need exactly the layer's {bounds[0]} edges and no valid mask")
        if isinstance(locked, int) and bounds is None:
            raise ValueError("locked can be a count of leading edges only with bounds")
        if not prepared:  # a stack validates its block once, not in every layer
            check_edge_index(edge_index, n_src, n_dst)
            edge_index, edge_weight = self.prepare_edges(edge_index, n_src, n_dst, edge_weight)
        if valid is not None and self.needs_exact_edges:
            edge_index, edge_weight, locked = self.select(valid, edge_index, edge_weight, locked)
            valid = None
        h_src, h_dst = self.transform(x_src, x_dst)
        msg_weight, score_weight = self.edge_weights(h_src, h_dst, edge_index, edge_weight, n_dst)
        if rule_applied:
            if valid is not None or bounds is not None or not self.scores_from_sources:
                raise ValueError("rule_applied takes exactly the kept edges (no valid mask, no bounds), "
                                 f"of a conv whose scores come from its sources ({type(self).__name__}'s do not)")
            self.last_edges_in, keep = edge_index.size(1), None
        else:
            norms = self.score_norms(h_src) if self.thr_a > 0 else None
            keep = self.prune_edges(edge_index, score_weight, norms, locked,
                                    None if norms is None else self.score_reference(norms, edge_index), valid,
                                    nonneg=nonneg, mean=score_mean)
        narrowed = keep  # selection with bounds narrows the rule's mask in place
        if return_kept and bounds is not None and keep is not None:
            narrowed = keep.clone()
        same = msg_weight is edge_weight
        rows, ei, *weights = self.select_edges(narrowed, num_next, n_src, n_dst, edge_index, edge_weight,
                                               *(() if same else (msg_weight,)), bounds=bounds)
        h_dst = self.take_rows(rows, h_dst)
        if x0 is not None:
            x0 = self.take_rows(rows, x0[:n_dst])
        self.last_prop_channels_computed = math.prod(h_src.shape[1:])
        self.last_prop_channels = self.last_prop_channels_computed if source_channels is None else \
            math.prod(h_dst.shape[1:])
        w = weights[-1]
        if fused and self._fusable(h_src, w):
            adj_t = self.adjacency(ei, w, n_src, h_dst.size(0), h_src.dtype)
            agg = self.propagate(adj_t, x=(h_src, h_dst), edge_weight=None)  # (the weights are in adj_t)
        else:
            agg = self.propagate(ei, x=(h_src, h_dst), edge_weight=w, size=(n_src, h_dst.size(0)))
        out = self.combine(agg, h_dst, x0) if source_channels is None else \
            self.combine(agg, h_dst, x0, agg_channels=source_channels)
        return self._finish(out, keep, edge_index.size(1), return_kept)

    def transform(self, x_src: Tensor, x_dst: Tensor) -> PairTensor:
        """``(h_src, h_dst)``: what is propagated from the sources (and scored), and what
        :meth:`combine` reads of the targets. Default: the features themselves."""
        return x_src, x_dst

    def edge_weights(self, h_src: Tensor, h_dst: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                     num_dst: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """``(message weights, score weights)`` of the edges. Default: the prepared weights, both."""
        return edge_weight, edge_weight

    def score_norms(self, h_src: Tensor) -> Tensor:
        """Per-source norms the edge rule scores messages with."""
        return node_norms(h_src)

    def score_reference(self, norms: Tensor, edge_index: Tensor) -> Optional[Tensor]:
        """What the threshold's mean is taken over (``None``: the scores)."""
        return None

    @property
    def scores_from_sources(self) -> bool:
        """Whether an edge's score is its prepared weight times its source's norm, averaged over
        the scores (the base's :meth:`edge_weights` and :meth:`score_reference`): the rule can
        then be applied from every node's norm before a batch's source rows are gathered."""
        cls = type(self)
        return cls.edge_weights is UnifewsConv.edge_weights and cls.score_reference is UnifewsConv.score_reference

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

    def combine(self, agg: Tensor, h_dst: Tensor, x0: Optional[Tensor]) -> Tensor:
        """The layer's output rows from the aggregated messages and the targets' own rows. A
        conv whose :meth:`aggregated_channels` can be fewer than all also takes ``agg_channels``:
        ``agg`` then holds only those channels."""
        raise NotImplementedError

    def aggregated_channels(self) -> Optional[Tensor]:
        """The channels of the aggregated messages that :meth:`combine` reads (``None``: all):
        a linear map whose weight columns are pruned whole reads none of those inputs, so they
        need not be propagated. Default: all."""
        return None

    @classmethod
    def prepares_by_target(cls) -> bool:
        """Whether :meth:`prepare_edges` keeps the edges as given and weighs each from its
        target's in-edges alone (so the edges into some targets prepare alike on their own,
        given those targets as ``num_dst``): the base's (no weights) and SAGE's (``1 / deg``), not
        GCN's (self-loops added, both ends' degrees)."""
        return cls.prepare_edges is UnifewsConv.prepare_edges

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
        edges hop by hop (PyG's samplers, ours), so a conv that keeps their order has prefixes."""
        ei, ew = cls.prepare_edges(edge_index, num_src, num_dst)
        cum = hop_sums(num_sampled_edges, num_layers)
        if not cls.keeps_edge_order or num_sampled_nodes is None or cum is None:
            return ei, ew, None
        return ei, ew, [cum[num_layers - 1 - i] for i in range(num_layers)]

    def prune_edges(self, edge_index: Tensor, edge_weight: Optional[Tensor], src_norm: Tensor,
                    locked: Union[None, Tensor, int] = None, reference: Optional[Tensor] = None,
                    valid: Optional[Tensor] = None, nonneg: bool = False,
                    mean: Optional[Tensor] = None) -> Optional[Tensor]:
        """Bool mask of kept edges, or ``None`` when every edge given is kept. Only ``valid``
        edges count (in the threshold's mean too) and only they can be kept. ``locked``: a mask,
        or the number of leading edges locked; ``nonneg``: the weights are known ``>= 0``."""
        num_valid = None if valid is None else valid.sum()
        self.last_edges_in = edge_index.size(1) if valid is None else num_valid
        if self.thr_a == 0:
            return valid
        lock = locked_edges(edge_index, lock_self_loops=self.lock_self_loops)
        if isinstance(locked, Tensor):
            lock = locked if lock is None else lock | locked
        scores = edge_scores(src_norm, edge_index[0], edge_weight, nonneg=nonneg)
        keep = edge_keep_mask(scores, self.thr_a, lock, reference, valid, num_valid, mean=mean)
        if isinstance(locked, int) and locked > 0:  # (a fresh mask: written in place)
            keep[:locked] = True
        return keep

    def select_edges(self, keep: Optional[Tensor], num_next: Optional[int], num_src: int, num_dst: int,
                     edge_index: Tensor, *per_edge: Optional[Tensor], bounds: Optional[Sequence[int]] = None):
        """``(rows, edge_index, *per_edge)``: the kept edges into the target rows computed,
        targets renumbered to positions in ``rows`` (``None``: every target, numbering kept).

        With ``num_next``, the rows computed are ``0 .. num_next - 1`` and the sources of the kept
        edges into them; the rest are read by no later layer. Rows can only be skipped when an
        edge was pruned (in a sampled block every node has an edge to the hop before it).
        Targets of edges that are not kept may lie anywhere below ``max(num_src, num_dst)``.
        With ``bounds`` (see :meth:`forward`), the edges keep their order and the kept edges'
        bounds for the later layers are left in :attr:`last_selection`.
        """
        nxt = None if bounds is None else list(bounds[1:])
        if keep is not None and bounds is not None and edge_index.size(1) and any(b != bounds[0] for b in nxt):
            return self._select_counted(keep, num_next, num_src, num_dst, edge_index, per_edge, list(bounds))
        rows = pos = None
        self.last_edges_kept = edge_index.size(1)
        if keep is not None and num_next is not None and num_next < num_dst:
            src, dst = edge_index
            self.last_edges_kept = keep.sum()  # by the rule; fewer are aggregated
            read, pos = self._rows_read(keep, src, dst, num_src, num_dst, num_next, exact=False)
            keep = keep & read.index_select(0, dst)
            rows = read[:num_dst].nonzero().view(-1)
        idx = None if keep is None else keep.nonzero().view(-1)
        if idx is not None:
            if rows is None:
                self.last_edges_kept = idx.numel()
            edge_index = edge_index.index_select(1, idx)
            per_edge = tuple(None if t is None else t.index_select(0, idx) for t in per_edge)
        if nxt is not None and idx is not None:  # (only here when every edge is every later layer's)
            nxt = [edge_index.size(1)] * len(nxt)
        return self._selected(rows, pos, edge_index, per_edge, nxt)

    @staticmethod
    def _rows_read(keep: Tensor, src: Tensor, dst: Optional[Tensor], num_src: int, num_dst: int,
                   num_next: int, exact: bool) -> Tuple[Tensor, Tensor]:
        """``(read, pos)``: ``read[j]`` whether the next layer reads row ``j`` (the next targets
        and the sources of the kept edges into them: they are among this layer's targets, as in
        any sampled block), and ``pos[j]`` the position of row ``j`` among the rows read (for
        ``j < num_dst``; with ``exact``, ``pos[num_dst]`` is the number of rows read).
        ``dst=None``: every edge given goes into the next targets (the prefix of a block that
        holds them). ``exact``: the next layer reads only edges from rows read; otherwise an
        unread row's position is kept in range (the previous row read's), as edges left for a
        validity mask are still gathered."""
        assert num_next >= 1, num_next  # row 0 is read: the spare slot of edges not into the next targets
        size = max(num_src, num_dst)
        # slot 0 before the rows (this buffer's cumsum is read's exclusive cumsum, the positions),
        # then the next targets set: one op on a cached constant, no zeros and fill
        buf = slot_ids(size + 1, src.device) <= num_next
        read = buf[1:]
        into_next = keep if dst is None else keep & (dst < num_next)
        # an edge not into the next targets marks row 0, which is read anyway (a next target)
        read.index_fill_(0, src * into_next, True)
        return read, (buf.cumsum(0) if exact else read.cumsum(0) - 1)

    def _select_counted(self, keep: Tensor, num_next: Optional[int], num_src: int, num_dst: int,
                        edge_index: Tensor, per_edge: tuple, bounds: List[int]):
        """:meth:`select_edges` given the edges' bounds: every count the layer needs (kept edges
        by the rule and into each later layer's targets, rows read next) comes in one transfer,
        and the kept edges and rows are then found without a device read (``nonzero_static``).
        ``keep`` is the rule's fresh mask; it is narrowed in place to the edges aggregated."""
        src, dst = edge_index
        head = bounds[1]  # the edges into the next layer's targets: the first ``head``
        csum = keep.cumsum(0)  # before narrowing: the edges into later targets are all aggregated
        ends = [b for b in bounds[1:] if b > 0]
        parts = [csum[b - 1] for b in ends] + [csum[-1]]
        read = pos = None
        if num_next is not None and num_next < num_dst:
            read, pos = self._rows_read(keep[:head], src[:head], None, num_src, num_dst, num_next, exact=True)
            tail = keep[head:]
            tail &= read.index_select(0, dst[head:])
            parts += [tail.sum(), pos[num_dst]]  # (pos: read's exclusive cumsum)
        counts = torch.stack(parts).tolist()  # the layer's one device read
        at = dict(zip(ends, counts))
        nxt = [at.get(b, 0) for b in bounds[1:]]
        self.last_edges_kept = counts[len(ends)]  # by the rule; fewer are aggregated when rows are skipped
        kept = self.last_edges_kept if read is None else nxt[0] + counts[-2]
        idx = torch.nonzero_static(keep, size=kept).view(-1)
        edge_index = edge_index.index_select(1, idx)
        per_edge = tuple(None if t is None else t.index_select(0, idx) for t in per_edge)
        rows = None
        if read is not None:
            rows = torch.nonzero_static(read[:num_dst], size=counts[-1]).view(-1)
        return self._selected(rows, pos, edge_index, per_edge, nxt)

    def _selected(self, rows, pos, edge_index, per_edge, bounds):
        renumbered = None
        if pos is not None:  # both ends in one gather: the targets for this layer, both for the next
            renumbered = pos.index_select(0, edge_index.reshape(-1)).view(2, -1)
            edge_index = torch.stack([edge_index[0], renumbered[1]])
        self.last_edges_computed = edge_index.size(1)
        self.last_selection = Selection(rows, renumbered, edge_index, per_edge[0] if per_edge else None, bounds)
        return (rows, edge_index, *per_edge)

    @staticmethod
    def select(keep: Optional[Tensor], edge_index: Tensor, *per_edge: Optional[Tensor]):
        """Keep only the surviving edges (and their per-edge tensors)."""
        if keep is None:
            return (edge_index, *per_edge)
        idx = keep.nonzero().view(-1)
        return (edge_index.index_select(1, idx),
                *(None if t is None else t.index_select(0, idx) for t in per_edge))

    @staticmethod
    def take_rows(rows: Optional[Tensor], x: Tensor) -> Tensor:
        return x if rows is None else x.index_select(0, rows)

    def _fusable(self, h_src: Tensor, weight: Optional[Tensor]) -> bool:
        return (type(self).message is UnifewsConv.message and h_src.dim() == 2 and not torch.is_grad_enabled()
                and (weight is None or weight.dim() == 1))

    @staticmethod
    def adjacency(edge_index: Tensor, edge_weight: Optional[Tensor], num_src: int, num_dst: int,
                  dtype: torch.dtype) -> Tensor:
        """The edges as a sparse ``[num_dst, num_src]`` CSR matrix of their weights (``None``: 1).
        On CUDA, as cuSPARSE requires it: in each row the columns sorted and distinct (edges out of
        that order are sorted, and a repeated edge becomes one entry of the summed weights: the
        same sum of messages; in order, nothing is copied but the row pointers). On the CPU
        torch's kernel (MKL's, or its own loop) sums a row's entries in any order, repeated ones
        too, so only edges out of target order are sorted (stably, by target alone)."""
        dst, src = edge_index[1], edge_index[0]
        w = edge_weight.to(dtype) if edge_weight is not None else torch.ones(src.numel(), dtype=dtype,
                                                                            device=src.device)
        if src.is_cuda:
            key = dst * num_src + src
            step = key[1:] - key[:-1]
            unsorted, repeated = torch.stack([(step < 0).any(), (step == 0).any()]).tolist()  # (one device read)
            if unsorted or repeated:  # (in order, a repeated edge follows its first: merged without a sort)
                key, inv = (torch.unique if unsorted else torch.unique_consecutive)(key, return_inverse=True)
                w = w.new_zeros(key.numel()).index_add_(0, inv, w)
                dst = torch.div(key, num_src, rounding_mode="floor")
                src = key - dst * num_src
        elif bool((dst[1:] < dst[:-1]).any()):
            order = torch.argsort(dst, stable=True)
            dst, src, w = dst.index_select(0, order), src.index_select(0, order), w.index_select(0, order)
        crow = torch.searchsorted(dst, torch.arange(num_dst + 1, device=dst.device))
        with warnings.catch_warnings():  # (torch says once that its CSR tensors are in beta)
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(crow, src, w, (num_dst, num_src), check_invariants=False)

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
        return [m for m in self.modules() if isinstance(m, UnifewsLinear)]

    def set_thr_w(self, value: float) -> None:
        for lin in self.weight_layers():
            lin.thr_w = value

    def propagation_macs(self) -> tuple[int, int]:
        """(dense, sparse) propagation MACs of the last forward: over the edges it received, and
        over the kept edges it aggregated."""
        return (self.last_edges_in * self.last_prop_channels,
                self.last_edges_computed * self.last_prop_channels_computed)

    def _finish(self, out: Tensor, keep: Optional[Tensor], num_edges: int, return_kept: bool):
        if not return_kept:
            return out
        if keep is None:
            keep = torch.ones(num_edges, dtype=torch.bool, device=out.device)
        return out, keep
