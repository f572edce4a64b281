"""Layer-wise full-graph inference of a :class:`UnifewsGNN`: every node's output over all of its
kept in-edges, one layer at a time, in batches of target nodes.

PyG's ``BasicGNN.inference`` runs a model this way (a loader over every node with all
neighbours, each layer for all nodes before the next), but it knows nothing of edge pruning:
here the edge rule's mean is taken over all of a layer's edges (:meth:`UnifewsConv.threshold_mean`)
before the layer runs batch by batch, and the edges a layer prunes are gone from every later
layer (progressive, as in training). Memory: the nodes' representations of one layer (``N x
hidden``), the graph's edges, and one batch's messages.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _csr_by_target(edge_index: Tensor, num_nodes: int) -> Tensor:
    counts = torch.bincount(edge_index[1], minlength=num_nodes)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


@torch.no_grad()
def layerwise_inference(model, x: Tensor, edge_index: Tensor, batch_size: int = 4096,
                        output_nodes: Optional[Tensor] = None, device: Optional[torch.device] = None,
                        progress: Optional[Callable[[int], None]] = None) -> Tensor:
    """Outputs ``[N, C]`` of ``model`` (a :class:`UnifewsGNN`, in evaluation mode) for every node
    of the graph ``(x, edge_index)``, or ``[len(output_nodes), C]`` for the nodes given.

    Each layer's edges are pruned by its rule over the whole graph (the threshold's mean over all
    of the layer's edges that survived the layers before it), weight masks as trained. Locking
    as in a sampled evaluation (``lock_target_edges`` ``always`` or ``eval``): every edge of the
    last layer goes into a node whose output is asked for, and is kept; the seeds' in-edges at
    earlier layers are not locked (every node is some seed: that would lock every edge). With
    thresholds 0 this is the full-graph forward of the dense model.

    Args:
        batch_size: target nodes per batch (their in-edges and sources are what one batch holds).
        output_nodes: the nodes whose outputs are returned (all are computed up to the last
            layer, which computes only these); ``None``: every node.
        device: where to compute (default: the model's); ``x`` and ``edge_index`` may be on the host.
        progress: called with the number of target nodes after each batch (a progress bar).
    """
    if model.training:
        raise ValueError("layer-wise inference runs the model in evaluation mode: call model.eval() first")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device or next(model.parameters()).device
    n = x.size(0)
    Conv = type(model.convs[0])
    ei, ew = Conv.prepare_edges(edge_index.to(device), n, n)  # the whole graph's weights (1/deg, gcn_norm)
    order = torch.argsort(ei[1], stable=True)  # by target: a batch of targets is a slice of edges
    ei = ei.index_select(1, order)
    ew = None if ew is None else ew.index_select(0, order)
    lock = model.lock_target_edges in ("always", "eval")
    h = x.to(device)
    x0 = None
    if model.lin_in is not None:
        h = x0 = torch.cat([F.relu(model.lin_in(h[a:a + batch_size])) for a in range(0, n, batch_size)])
    lookup = torch.full((n,), -1, dtype=torch.long, device=device)  # node id -> position in a batch
    mark = torch.zeros(n, dtype=torch.bool, device=device)  # a batch's targets (reset after it)
    stats: List[Dict[str, int]] = []
    for i, conv in enumerate(model.convs):
        last = i == model.num_layers - 1
        targets = output_nodes.to(device) if (last and output_nodes is not None) else None
        mean = conv.threshold_mean(h, ei, ew) if conv.thr_a > 0 else None  # over all the layer's edges
        if targets is not None:  # only the asked-for outputs: their in-edges, in their order
            ei, ew = _in_edges_of(ei, ew, targets, n)
        ptr = _csr_by_target(ei, n if targets is None else targets.numel()).tolist()
        rows = n if targets is None else targets.numel()
        keep_all = torch.ones(ei.size(1), dtype=torch.bool, device=device)
        outs, layer = [], {"edges": ei.size(1), "kept": 0, "macs": 0}
        for a in range(0, rows, batch_size):
            b = min(a + batch_size, rows)
            e0, e1 = ptr[a], ptr[b]
            src, dst = ei[0, e0:e1], ei[1, e0:e1] - a
            tgt = torch.arange(a, b, device=device) if targets is None else targets[a:b]
            # the batch's nodes: its targets first (a sampled block's layout), then their other sources
            mark[tgt] = True
            nodes = torch.cat([tgt, torch.unique(src[~mark[src]])])
            mark[tgt] = False
            lookup[nodes] = torch.arange(nodes.numel(), device=device)
            local = torch.stack([lookup[src], dst])
            locked = torch.ones(e1 - e0, dtype=torch.bool, device=device) if (lock and last) else None
            xs = (h[nodes], h[tgt])
            args = (xs, x0[tgt], local) if conv.needs_x0 else (xs, local)
            out, keep = conv(*args, ew[e0:e1] if ew is not None else None, locked=locked, prepared=True,
                             return_kept=True, score_mean=mean)
            keep_all[e0:e1] = keep
            layer["kept"] += int(keep.sum())
            # what the batch computed: messages aggregated, and the kept weight entries times rows
            layer["macs"] += conv.propagation_macs()[1] + sum(int(lin.macs()[1]) for lin in conv.weight_layers())
            if not last or model.lin_out is not None:
                out = F.relu(model.norms[i](out))
            outs.append(out)
            if progress is not None:
                progress(b - a)
        h = torch.cat(outs)
        stats.append(layer)
        if not last:  # progressive: what this layer pruned is gone from the later ones
            idx = keep_all.nonzero().view(-1)
            ei = ei.index_select(1, idx)
            ew = None if ew is None else ew.index_select(0, idx)
    if model.lin_out is not None:
        h = torch.cat([model.lin_out(h[a:a + batch_size]) for a in range(0, h.size(0), batch_size)])
    model.inference_stats = stats
    return h


def _in_edges_of(ei: Tensor, ew: Optional[Tensor], targets: Tensor, n: int):
    """The edges into ``targets``, targets renumbered to positions in ``targets`` and sorted by them."""
    pos = torch.full((n,), -1, dtype=torch.long, device=ei.device)
    pos[targets] = torch.arange(targets.numel(), device=ei.device)
    t = pos[ei[1]]
    idx = (t >= 0).nonzero().view(-1)
    idx = idx[torch.argsort(t[idx], stable=True)]
    out = torch.stack([ei[0, idx], t[idx]])
    return out, None if ew is None else ew[idx]
