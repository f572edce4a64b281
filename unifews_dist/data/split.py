"""The random class-stratified split of a graph's nodes into train, validation and test, and the
node sets a command names (a split, or a file of node ids)."""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

SPLITS = ("all", "train", "val", "test")


def check_split_fractions(fractions) -> list:
    """``[train, val]`` as floats, or ValueError naming the value."""
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        fr = []
    if len(fr) != 2 or not all(math.isfinite(f) and f > 0 for f in fr) or sum(fr) >= 1:
        raise ValueError(f"random_split needs [train, val] fractions > 0 with sum < 1 (the rest is test), "
                         f"got {fractions!r}")
    return fr

def random_split(y: Tensor, fractions, seed: int = 0):
    """``(train, val, test)`` node ids: ``fractions = (train, val)`` of the nodes, the rest test,
    drawn per class (class-stratified) for single-label ``y``, over all nodes for multi-label.

    The Unifews reference code evaluates Planetoid graphs on such a split (0.5 / 0.25 / 0.25,
    stratified, a new draw per seed), not on Planetoid's public split; PyG's ``RandomNodeSplit``
    draws fixed counts per class or unstratified fractions, so it does not give this one."""
    fr = check_split_fractions(fractions)
    g = torch.Generator().manual_seed(seed)
    groups = [torch.arange(y.size(0))] if y.dim() != 1 else [(y == c).nonzero().view(-1) for c in y.unique()]
    parts = ([], [], [])
    for nodes in groups:
        nodes = nodes[torch.randperm(nodes.numel(), generator=g)]
        a = int(round(fr[0] * nodes.numel()))
        b = a + int(round(fr[1] * nodes.numel()))
        for i, chunk in enumerate((nodes[:a], nodes[a:b], nodes[b:])):
            parts[i].append(chunk)
    return tuple(torch.cat(p).sort().values for p in parts)


def named_nodes(ds, name: str) -> Tensor:
    """The node ids of ``ds`` that ``name`` names: ``all``, a split (``train``, ``val``, ``test``),
    or a file of node ids (``.pt`` holding a tensor, or ``.npy``), checked."""
    if name == "all":
        return torch.arange(ds.data.num_nodes)
    if name in SPLITS:
        return {"train": ds.train_idx, "val": ds.val_idx, "test": ds.test_idx}[name]
    if not os.path.isfile(name):
        raise FileNotFoundError(f"predict_nodes file {name} does not exist")
    try:
        ids = torch.load(name, weights_only=True) if name.endswith(".pt") else \
            torch.from_numpy(np.load(name, allow_pickle=False))
    except Exception as e:
        raise ValueError(f"predict_nodes file {name} could not be read as node ids: {e}") from None
    ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"predict_nodes file {name} must hold a 1-D integer tensor of node ids, "
                         f"got {tuple(ids.shape)} {ids.dtype}")
    ids = ids.long()
    bad = (ids < 0) | (ids >= ds.data.num_nodes)
    if bool(bad.any()):
        raise ValueError(f"predict_nodes file {name}: {int(bad.sum())} node ids outside 0..{ds.data.num_nodes - 1}, "
                         f"the first {int(ids[bad][0])}")
    return ids
