"""The layer stack: carries the kept edges from layer to layer."""
from __future__ import annotations

from itertools import accumulate
from typing import List, Literal, Optional, Sequence, Union, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...sparsify import check_threshold
from ...checks import check_choice
from ..conv import CONVS
from ..linear import BACKENDS, MASK_MODES, UnifewsLinear, drop_premasked, premask_weights
from ..selection import LayerPlan, Selection
from ..stats import EdgeCounts, LayerStats, stats_tensor
from .input_rule import InputRule
from .layerwise import InferenceOptions, layerwise_inference

ConvName = Literal["gcn", "sage", "gat", "gin", "gcnii"]
Norm = Literal["batch", "layer", "none"]
LockPolicy = Literal["always", "eval", "never"]
Backend = Literal["auto", "dense", "sparse"]
NORMS, LOCK_POLICIES = get_args(Norm), get_args(LockPolicy)
#: the stack's conv options, each taken by the convs that name it in ``stack_options``
STACK_OPTION_DEFAULTS = {"heads": 1, "gcnii_alpha": 0.1, "gcnii_theta": 0.5}


def _per_layer(name: str, value: Union[float, Sequence[float]], num_layers: int) -> List[float]:
    if isinstance(value, (int, float)):
        values = [value] * num_layers
    else:
        values = list(value)
        if len(values) != num_layers:
            raise ValueError(f"{name} must be one number or a list of {num_layers} (one per layer), "
                             f"got {len(values)} values: {values}")
    return [check_threshold(name, v) for v in values]


class UnifewsGNN(nn.Module):
    r"""A stack of Unifews layers with progressive edge pruning.

    Layer ``l`` receives only the edges that survived layers ``0 .. l-1`` (with their original
    message weights) and prunes again, so edge sparsity never decreases with depth. Given the
    sampler's per-hop counts, layer ``l`` of ``L`` computes only the ``sum(nodes[:L-l])``
    targets that later layers need (PyG's ``trim_to_layer``, as a bipartite block), and of
    those only the rows layer ``l + 1`` reads: a node whose every outgoing edge was pruned is
    not computed at the layer before (it is neither aggregated into nor transformed). With
    ``norm="batch"`` the training statistics are then over the rows computed, as are the input
    column norms of the weight rule.

    Args:
        conv: layer type, one of ``gcn``, ``sage``, ``gat``, ``gin``, ``gcnii``.
        in_channels, hidden_channels, out_channels: feature sizes.
        num_layers: number of message-passing layers.
        dropout: dropout between layers.
        norm: ``batch``, ``layer`` or ``none`` between layers.
        thr_a: edge threshold, one for all layers or a list with one per layer.
        thr_w: weight threshold, likewise.
        heads: attention heads (``gat``; hidden layers concatenate ``hidden_channels // heads``).
        gcnii_alpha, gcnii_theta: GCNII's initial-residual and identity-map strengths.
        lock_target_edges: when edges into the seed nodes (the last layer's targets) are locked
            at every layer, so the seeds always receive their sampled neighbourhood: ``always``,
            ``eval`` (evaluation only, as the reference code's ``node_lock``) or ``never``.
        weight_backend: transform backend of every pruned linear map (``auto``, ``dense``, ``sparse``).
    """

    def __init__(self, conv: ConvName, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int = 2, dropout: float = 0.5, norm: Norm = "batch",
                 thr_a: Union[float, List[float]] = 0.0, thr_w: Union[float, List[float]] = 0.0,
                 heads: int = 1, gcnii_alpha: float = 0.1, gcnii_theta: float = 0.5,
                 lock_target_edges: LockPolicy = "always", weight_backend: Backend = "auto"):
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; allowed: {sorted(CONVS)}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        check_choice("norm", norm, NORMS)
        check_choice("lock_target_edges", lock_target_edges, LOCK_POLICIES)
        check_choice("weight_backend", weight_backend, BACKENDS)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for name, v in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                        ("out_channels", out_channels)):
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        self.num_layers, self.dropout = num_layers, dropout
        self.lock_target_edges = lock_target_edges
        thr_a_l = _per_layer("thr_a", thr_a, num_layers)
        thr_w_l = _per_layer("thr_w", thr_w, num_layers)
        Conv = CONVS[conv]
        options = {"heads": heads, "gcnii_alpha": gcnii_alpha, "gcnii_theta": gcnii_theta}
        for name, value in options.items():
            if name not in Conv.stack_options and value != STACK_OPTION_DEFAULTS[name]:
                takers = [n for n, c in CONVS.items() if name in c.stack_options]
                raise ValueError(f"{name}={value} does not apply to conv {conv!r} (only to {', '.join(takers)}); "
                                 f"leave it at {STACK_OPTION_DEFAULTS[name]}")
        options = {k: v for k, v in options.items() if k in Conv.stack_options}
        wrap = Conv.stack_in_out_linears  # hidden x hidden layers between two linear maps (GCNII)
        self.lin_in = nn.Linear(in_channels, hidden_channels) if wrap else None
        self.lin_out = nn.Linear(hidden_channels, out_channels) if wrap else None
        self.convs = nn.ModuleList()
        dims, c_in = [], hidden_channels if wrap else in_channels
        for i in range(num_layers):
            c_out = hidden_channels if wrap or i < num_layers - 1 else out_channels
            self.convs.append(Conv.for_stack(i, num_layers, c_in, c_out, thr_a=thr_a_l[i], thr_w=thr_w_l[i],
                                             **options))
            dims.append(c_out)
            c_in = c_out
        self.norms = nn.ModuleList()
        for d in dims if wrap else dims[:-1]:
            self.norms.append(nn.BatchNorm1d(d) if norm == "batch" else nn.LayerNorm(d) if norm == "layer"
                              else nn.Identity())
        self.set_weight_backend(weight_backend)
        self.layer_stats: List[LayerStats] = []
        #: skip, at layer ``l``, the rows layer ``l + 1`` does not read (off: compute every row)
        self.skip_unread_rows = True
        self._stats_tensor: Optional[Tensor] = None
        self._stats_cache: dict = {}

    # -- knobs the callbacks turn ------------------------------------------------------------
    @property
    def thr_a(self) -> List[float]:
        return [c.thr_a for c in self.convs]

    @property
    def thr_w(self) -> List[float]:
        return [c.weight_layers()[0].thr_w for c in self.convs]

    def set_thresholds(self, thr_a: Union[None, float, Sequence[float]] = None,
                       thr_w: Union[None, float, Sequence[float]] = None) -> None:
        if thr_a is not None:
            for c, v in zip(self.convs, _per_layer("thr_a", thr_a, self.num_layers)):
                c.thr_a = v
        if thr_w is not None:
            for c, v in zip(self.convs, _per_layer("thr_w", thr_w, self.num_layers)):
                c.set_thr_w(v)

    def weight_layers(self) -> List[UnifewsLinear]:
        return [lin for c in self.convs for lin in c.weight_layers()]

    def set_mask_mode(self, mode: str) -> None:
        check_choice("mask_mode", mode, MASK_MODES)
        for lin in self.weight_layers():
            lin.mask_mode = mode

    def set_weight_backend(self, backend: str) -> None:
        for lin in self.weight_layers():
            lin.backend = backend

    def input_rule(self) -> Optional[InputRule]:
        """The first layer's training rule for a loader to apply before it gathers rows
        (:class:`InputRule`), or ``None`` when its scores are not the inputs' (a conv that
        transforms, attends or adds self-loops first; a linear map before the stack; rows not
        skipped, so every first-layer target is read)."""
        first = self.convs[0]
        if not type(first).scores_inputs or self.lin_in is not None or not self.skip_unread_rows:
            return None
        return InputRule(type(first), self.num_layers, self.lock_target_edges == "always", first.lock_self_loops)

    # -- forward -------------------------------------------------------------------------------
    def _layer_sizes(self, num_nodes: int, num_sampled_nodes: Optional[Sequence[int]]):
        L = self.num_layers
        if num_sampled_nodes is None:
            return [num_nodes] * L, [num_nodes] * L
        hops = [int(n) for n in num_sampled_nodes]
        if len(hops) < L + 1:
            raise ValueError(f"{L} layers need per-hop node counts for {L + 1} hops (seeds + {L}), "
                             f"got {len(hops)}: {hops}; sample with as many hops as layers")
        cum = list(accumulate(hops[:L + 1]))
        num_src = [cum[L - i] for i in range(L)]
        num_dst = [cum[L - i - 1] for i in range(L)]
        if num_src[0] != num_nodes:
            raise ValueError(f"per-hop node counts add up to {num_src[0]}, but x has {num_nodes} rows")
        return num_src, num_dst

    @staticmethod
    def _layer_stats(conv, sel: Selection, edges_dense, num_src: int, num_dst: int) -> LayerStats:
        """What the layer ran (its selection, its linear maps' last calls), and what a dense
        layer would run on the whole block."""
        edges = EdgeCounts(edges_dense, sel.edges_in, sel.edges_kept, sel.edges_computed)
        return conv.layer_stats(edges, num_dst, [lin.last_rows for lin in conv.weight_layers()],
                                conv.dense_transform_macs(num_src, num_dst), (sel.channels, sel.channels_computed))

    def _dense_edge_counts(self, ei: Tensor, num_dst: List[int], num_sampled_nodes) -> List:
        """Each layer's dense edge count (edges into its targets) when they are not prefixes:
        counted on the device, read only if a statistic is."""
        if num_sampled_nodes is None:
            return [ei.size(1)] * self.num_layers
        return list(torch.stack([(ei[1] < nd).sum() for nd in num_dst]).unbind())

    def forward(self, x: Tensor, edge_index: Tensor, num_sampled_nodes: Optional[Sequence[int]] = None,
                batch_size: Optional[int] = None, num_sampled_edges: Optional[Sequence[int]] = None,
                input_mean: Optional[Tensor] = None) -> Tensor:
        """Node outputs: ``[sum(num_sampled_nodes[:1]), C]`` (the seeds) when per-hop counts are
        given, else ``[N, C]`` for every node (seeds first when ``batch_size`` is set).

        With the sampler's per-hop edge counts too (``num_sampled_edges``; edges in hop order, as
        PyG's samplers emit them), a layer whose edges were not pruned before it takes its edges
        as a prefix of the block (no device sync), as PyG's ``trim_to_layer``. The edge indices
        are not checked here: a sampled block is valid by construction (a single layer called
        on its own checks them).

        ``input_mean``: the first layer's mean score over a block whose rule a loader applied
        before gathering rows (:class:`InputRule`), which the layer then uses instead of its own;
        the rows the loader did not gather are zeros in ``x`` (their norm 0: their edges, which
        the rule drops at the loader's threshold, score 0), and the layer's threshold is at least
        the loader's.
        """
        if input_mean is not None and self.input_rule() is None:
            raise ValueError("input_mean is for a stack whose first conv scores its inputs (input_rule)")
        lins = self.weight_layers()
        premask_weights(lins)  # every fixed mask applied in one op
        try:
            return self._forward(x, edge_index, num_sampled_nodes, batch_size, num_sampled_edges, input_mean)
        finally:
            drop_premasked(lins)

    def _forward(self, x: Tensor, edge_index: Tensor, num_sampled_nodes: Optional[Sequence[int]],
                 batch_size: Optional[int], num_sampled_edges: Optional[Sequence[int]],
                 input_mean: Optional[Tensor]) -> Tensor:
        num_src, num_dst = self._layer_sizes(x.size(0), num_sampled_nodes)
        Conv = type(self.convs[0])
        ei, ew, edges_dense_l = Conv.prepare_block(edge_index, num_src[0], num_dst[0], self.num_layers,
                                                   num_sampled_nodes, num_sampled_edges)
        # bounds: host counts of the edges at hand into each remaining layer's targets, each a
        # prefix (hop-ordered block; full graph: every edge is every layer's). None: unknown
        bounds = edges_dense_l
        if num_sampled_nodes is None:
            bounds = [ei.size(1)] * self.num_layers
        if edges_dense_l is None:
            edges_dense_l = self._dense_edge_counts(ei, num_dst, num_sampled_nodes)
        lock = self.lock_target_edges == "always" or (self.lock_target_edges == "eval" and not self.training)
        seeds_first = num_sampled_nodes is not None and batch_size == num_dst[-1]
        x0 = None
        if self.lin_in is not None:
            x = x0 = F.relu(self.lin_in(F.dropout(x, self.dropout, self.training)))
        stats: List[LayerStats] = []
        ns = num_src[0]  # rows of this layer's input; fewer than num_src[i] once rows are skipped
        last_nd = num_src[0]  # targets ei is known to be restricted to
        pruned = False
        for i, conv in enumerate(self.convs):
            nd = num_dst[i]
            valid = None
            if bounds is not None:  # this layer's edges: a prefix
                if ei.size(1) > bounds[0]:
                    ei = ei[:, :bounds[0]]
                    ew = None if ew is None else ew[:bounds[0]]
            elif last_nd > nd and num_sampled_nodes is not None and (
                    i > 0 or len(num_sampled_nodes) > self.num_layers + 1):
                valid = ei[1] < nd
            last = i == self.num_layers - 1
            pruned = pruned or conv.thr_a > 0  # rows can be unread only once an edge was pruned
            num_next = None if last or not (self.skip_unread_rows and pruned) else num_dst[i + 1]
            locked = None
            if lock and batch_size is not None:  # the edges into the seeds: with bounds, the first ones
                locked = bounds[-1] if bounds is not None and seeds_first else ei[1] < batch_size
            plan = LayerPlan(locked=locked, num_next=num_next, valid=valid, bounds=bounds,
                             score_mean=input_mean if i == 0 else None)
            out, sel = conv.step((x[:ns], x[:nd]), ei, ew, plan, x0=x0)
            stats.append(self._layer_stats(conv, sel, edges_dense_l[i], num_src[i], nd))
            ei, ew = sel.edge_index, sel.edge_weight
            bounds = sel.bounds
            last_nd, ns = nd, nd
            if sel.rows is not None:  # sources of the next layer: the rows computed, renumbered
                ei = sel.renumbered
                ns = sel.rows.numel()
                if x0 is not None:
                    x0 = x0.index_select(0, sel.rows)
            elif bounds is None and not last:  # edges not into the next targets may come from further out
                ei = torch.stack([ei[0].clamp(max=nd - 1), ei[1]])
            x = self.between_layers(i, out)
        if self.lin_out is not None:
            x = self.lin_out(x)
        self.set_layer_stats(stats)
        return x

    def between_layers(self, i: int, out: Tensor, into: Optional[Tensor] = None) -> Tensor:
        """What follows layer ``i``: norm, ReLU and dropout, except after the last layer (unless a
        linear map follows the stack, GCNII). ``into``: where the result is written (layer-wise
        inference's output rows). The one per-layer step of :meth:`forward` and :meth:`inference`."""
        if i == self.num_layers - 1 and self.lin_out is None:
            if into is None:
                return out
            into.copy_(out)
            return into
        h = self.norms[i](out)
        if into is not None:
            h = torch.clamp(h, min=0, out=into)
        else:
            h = F.relu(h)
        return F.dropout(h, self.dropout, self.training)

    def set_layer_stats(self, stats: List[LayerStats]) -> None:
        """The statistics of the last forward or inference (what the monitors read)."""
        self.layer_stats, self._stats_tensor = stats, None

    def inference(self, x: Tensor, edge_index: Tensor, batch_size: int = 4096,
                  output_nodes: Optional[Tensor] = None, progress=None, distributed: bool = False,
                  lock_scope: str = "outputs", workspace=None) -> Tensor:
        """Layer-wise full-graph inference (evaluation mode), memory bounded by ``batch_size``
        target nodes: see :func:`~unifews_dist.nn.models.layerwise.layerwise_inference` and its
        :class:`~unifews_dist.nn.models.layerwise.InferenceOptions` (``lock_scope``: whose
        in-edges the seed locking keeps; ``workspace``: an
        :class:`~unifews_dist.nn.models.workspace.InferenceWorkspace` whose buffers repeated
        calls reuse). Leaves its per-layer statistics in :attr:`layer_stats` (summed over its
        batches)."""
        options = InferenceOptions(batch_size, output_nodes, progress, distributed, lock_scope, workspace)
        return layerwise_inference(self, x, edge_index, options)

    def stats_tensor(self) -> Tensor:
        """The last forward's :attr:`layer_stats` packed as one float64 device tensor (the
        :data:`~unifews_dist.nn.stats.FIELDS` of each layer), made once per forward, no device read."""
        if self._stats_tensor is None:
            self._stats_tensor = stats_tensor(self.layer_stats, next(self.parameters()).device, self._stats_cache)
        return self._stats_tensor
