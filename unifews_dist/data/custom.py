"""A graph of the user's own: a ``torch.save``'d PyG ``Data`` or a folder of ``.npy`` arrays."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .graph import DatasetError, GraphDataset
from .split import random_split


#: the split of a custom graph that brings none: the Unifews reference code's fractions
CUSTOM_SPLIT = (0.5, 0.25)

def load_custom(path: str, seed: int = 0) -> GraphDataset:
    """A graph of the user's: a PyG ``Data`` (or a dict of tensors) saved with ``torch.save``
    (read with ``weights_only=True``), or a folder of ``.npy`` arrays (read without pickles):
    ``x`` ``[N, F]``, ``y`` ``[N]`` (or multi-hot ``[N, C]``), ``edge_index`` ``[2, E]``, and
    optionally boolean ``train_mask`` / ``val_mask`` / ``test_mask``. Without masks the split is
    drawn at random (stratified, 0.5 / 0.25 / rest, from ``seed``)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        missing = [k for k in ("x", "y", "edge_index") if not os.path.isfile(os.path.join(path, f"{k}.npy"))]
        if missing:
            raise DatasetError(f"graph folder {path} needs x.npy, y.npy and edge_index.npy (missing: "
                               f"{', '.join(m + '.npy' for m in missing)}), optionally train/val/test_mask.npy")
        fields = {}
        for f in os.listdir(path):
            k = f[:-4]
            if f.endswith(".npy") and k in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
                try:
                    fields[k] = torch.from_numpy(np.load(os.path.join(path, f), allow_pickle=False))
                except ValueError as e:
                    raise DatasetError(f"{os.path.join(path, f)} cannot be read as a numeric array: {e}") from None
    elif os.path.isfile(path):
        from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
        from torch_geometric.data.storage import GlobalStorage

        try:
            with torch.serialization.safe_globals([Data, DataEdgeAttr, DataTensorAttr, GlobalStorage]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DatasetError(f"graph file {path} cannot be read as a torch.save'd PyG Data or dict of tensors "
                               f"(weights_only: no code is run from it): {' '.join(str(e).split())[:200]}") from None
        if isinstance(obj, Data):
            fields = {k: v for k, v in obj.to_dict().items() if isinstance(v, Tensor)}
        elif isinstance(obj, dict):
            fields = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        else:
            raise DatasetError(f"graph file {path} holds a {type(obj).__name__}, not a PyG Data or a dict of tensors")
    else:
        raise DatasetError(f"graph {path} does not exist (give a torch.save'd PyG Data, a folder of .npy arrays, "
                           f"or a prepared folder)")
    for k in ("x", "y", "edge_index"):
        if k not in fields:
            raise DatasetError(f"graph {path} has no {k!r} (it needs x, y and edge_index)")
    x, y, ei = fields["x"], fields["y"], fields["edge_index"]
    if x.dim() != 2 or not x.is_floating_point():
        raise DatasetError(f"graph {path}: x must be a [N, F] float array, got {tuple(x.shape)} {x.dtype}")
    n = x.size(0)
    if ei.dim() != 2 or ei.size(0) != 2 or ei.is_floating_point() or ei.dtype == torch.bool:
        raise DatasetError(f"graph {path}: edge_index must be a [2, E] integer array, got {tuple(ei.shape)} {ei.dtype}")
    if y.size(0) != n or y.dim() > 2 or y.is_complex():
        raise DatasetError(f"graph {path}: y must be [N] class ids or [N, C] multi-hot labels for its {n} nodes, "
                           f"got {tuple(y.shape)}")
    if y.dim() == 1 and y.is_floating_point():
        if not bool(torch.all(y == y.round())):
            raise DatasetError(f"graph {path}: y holds non-integer class ids")
    y = y.long() if y.dim() == 1 else y.float()
    num_classes = int(y.max()) + 1 if y.dim() == 1 and y.numel() else int(y.size(1)) if y.dim() == 2 else 0
    masks = [fields.get(f"{s}_mask") for s in ("train", "val", "test")]
    source = path
    if all(m is not None for m in masks):
        for s, m in zip(("train", "val", "test"), masks):
            if m.dtype != torch.bool or m.shape != (n,):
                raise DatasetError(f"graph {path}: {s}_mask must be a bool [{n}] array, got {tuple(m.shape)} {m.dtype}")
        idx = torch.arange(n)
        split = tuple(idx[m] for m in masks)
    elif any(m is not None for m in masks):
        raise DatasetError(f"graph {path} has only some of train_mask, val_mask, test_mask: give all three or none")
    else:
        split = random_split(y, CUSTOM_SPLIT, seed)
        source += f" (no split given: random split {CUSTOM_SPLIT[0]:g} / {CUSTOM_SPLIT[1]:g} / rest, seed {seed})"
    name = os.path.basename(path.rstrip(os.sep))
    return GraphDataset(name, Data(x=x.float() if x.dtype == torch.float64 else x, y=y, edge_index=ei.long(),
                                   num_nodes=n), *split, num_classes, source)
