"""Where graphs come from: Planetoid, OGB node property prediction, a seeded synthetic generator,
and the user's own files; the registry of names and the random split."""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .graph import DatasetError, GraphDataset, check_graph
from .storage import cache_dir, data_dir, dataset_lock, writable


PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}

OGB = {"ogbn-arxiv": "ogbn-arxiv", "ogbn-products": "ogbn-products", "ogbn-papers100m": "ogbn-papers100M"}

@dataclass(frozen=True)
class SyntheticSpec:
    num_nodes: int
    num_edges: int
    num_features: int
    num_classes: int
    homophily: float = 0.7  # fraction of edges inside a class
    signal: float = 1.0  # class-mean separation of the features, in noise standard deviations
    power: float = 2.5  # power-law exponent of the expected degrees
    extra_labels: float = 0.0  # > 0: multi-label; each other class is also a label with this probability
    num_train: int = 0  # training seeds (0: half the nodes)
    num_val: int = 0  # validation seeds (0: a quarter); the rest are test nodes

SYNTHETIC: Dict[str, SyntheticSpec] = {
    "synthetic-tiny": SyntheticSpec(2_000, 20_000, 32, 5),
    "synthetic-tiny-multilabel": SyntheticSpec(2_000, 20_000, 32, 5, extra_labels=0.2),
    "synthetic-small": SyntheticSpec(20_000, 300_000, 64, 10),
    "synthetic-medium": SyntheticSpec(200_000, 4_000_000, 100, 47),
    # ogbn-products' sizes and split sizes (196,615 train / 39,323 valid seeds): an epoch is 193
    # batches of 1024 (the last one partial), as in the published per-epoch figures
    "synthetic-products": SyntheticSpec(2_449_029, 61_859_140, 100, 47, num_train=196_615, num_val=39_323),
}

KNOWN = sorted([*PLANETOID, *OGB, *SYNTHETIC])

def load_planetoid(name: str, root: str) -> GraphDataset:
    from torch_geometric.datasets import Planetoid

    pname = PLANETOID[name]
    raw = os.path.join(root, pname, "raw")
    source = os.path.abspath(raw)
    if os.path.isdir(raw) and not writable(os.path.join(root, pname)):
        # a read-only dataset mount: process a copy of the raw files in a cache we can write
        cache = os.path.join(cache_dir(), "planetoid")
        if not os.path.isdir(os.path.join(cache, pname, "raw")):
            shutil.copytree(raw, os.path.join(cache, pname, "raw"))
        root = cache
    elif not os.path.isdir(raw):
        source = f"downloaded to {os.path.abspath(raw)}"
    ds = Planetoid(root, pname)
    data = ds[0]
    idx = torch.arange(data.num_nodes)
    return GraphDataset(name, Data(x=data.x, y=data.y, edge_index=data.edge_index), idx[data.train_mask],
                        idx[data.val_mask], idx[data.test_mask], ds.num_classes, source)

def load_ogb(name: str, root: str) -> GraphDataset:
    """An OGB node property prediction dataset through ``ogb``'s PyG loader, with its splits
    and evaluator. A folder already under ``root`` is read (processed once into
    ``processed/``); otherwise it is downloaded, without ogb's interactive size prompt."""
    try:
        from ogb.nodeproppred import PygNodePropPredDataset
        from ogb.nodeproppred import dataset_pyg
    except ImportError as e:  # pragma: no cover
        raise DatasetError(f"dataset {name!r} needs the ogb package: pip install 'unifews_dist[ogb]'") from e
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    oname = OGB[name]
    folder = os.path.join(root, oname.replace("-", "_"))
    if os.path.isdir(folder):
        if not any(f.startswith("RELEASE_v") for f in os.listdir(folder)):
            # ogb would stop and ask on stdin whether to replace it
            raise DatasetError(f"{folder} has no RELEASE_v*.txt, so it is not a complete OGB download; "
                             f"remove it to download {oname} again, or complete it")
        source = os.path.abspath(folder)
    else:
        source = f"downloaded to {os.path.abspath(folder)}"
    # ogb saves its processed graph as PyG objects (with numpy scalars for the node count) and
    # reads it back with torch.load, whose weights_only default (torch >= 2.6) refuses them:
    # allow exactly those types.
    safe = [DataEdgeAttr, DataTensorAttr, GlobalStorage, np.dtype, type(np.dtype(np.int64)),
            (np._core if hasattr(np, "_core") else np.core).multiarray.scalar]
    with torch.serialization.safe_globals(safe), _no_download_prompt(dataset_pyg):
        ds = PygNodePropPredDataset(oname, root=root)
    split = ds.get_idx_split()
    data = ds[0]
    y = data.y.view(-1) if data.y.dim() > 1 and data.y.size(1) == 1 else data.y
    if y.is_floating_point():  # papers100M stores labels as float, NaN for unlabelled nodes
        y = torch.nan_to_num(y, nan=-1)
    y = y.long()
    evaluate = ogb_evaluator(oname)
    edge_index = data.edge_index
    return GraphDataset(name, Data(x=data.x, y=y, edge_index=edge_index), split["train"], split["valid"],
                        split["test"], int(ds.num_classes), source, evaluate)

@contextlib.contextmanager
def _no_download_prompt(dataset_pyg):
    """ogb asks on stdin before a download over 1 GB (``decide_download``) and has no option to
    skip the question; a job has no stdin. Its module's function is answered "yes" while the
    dataset is made, and put back after."""
    asked = dataset_pyg.decide_download
    dataset_pyg.decide_download = lambda url: True
    try:
        yield
    finally:
        dataset_pyg.decide_download = asked


def ogb_evaluator(oname: str) -> Callable[[Tensor, Tensor], float]:
    """OGB's official ``Evaluator`` for ``oname``, as ``(pred, target) -> accuracy``."""
    from ogb.nodeproppred import Evaluator

    evaluator = Evaluator(oname)

    def evaluate(pred: Tensor, target: Tensor) -> float:
        return float(evaluator.eval({"y_true": target.view(-1, 1).cpu(), "y_pred": pred.view(-1, 1).cpu()})["acc"])

    return evaluate

def synthetic_graph(spec: SyntheticSpec, seed: int = 0) -> Data:
    """A contextual stochastic block model with power-law (Chung-Lu) expected degrees.

    Labels are uniform; features are a class mean plus unit Gaussian noise; a fraction
    ``homophily`` of the edges join two nodes of the same class. Vectorised: products-sized
    graphs build in well under a minute.
    """
    g = torch.Generator().manual_seed(seed)
    n, e, c = spec.num_nodes, spec.num_edges, spec.num_classes
    y = torch.randint(0, c, (n,), generator=g)
    means = torch.randn(c, spec.num_features, generator=g) * (spec.signal / math.sqrt(spec.num_features)) * 3
    x = torch.randn(n, spec.num_features, generator=g).add_(means[y])
    # Chung-Lu weights ~ rank^(-1/(power-1)), shuffled over nodes
    w = torch.arange(1, n + 1, dtype=torch.float64).pow(-1.0 / (spec.power - 1))
    w = w[torch.randperm(n, generator=g)]
    order = torch.argsort(y, stable=True)  # nodes grouped by class
    cum = torch.cumsum(w[order], 0)
    counts = torch.bincount(y, minlength=c)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    lo = torch.where(starts > 0, cum[(starts - 1).clamp(min=0)], torch.zeros(c, dtype=torch.float64))
    hi = cum[ends - 1]
    src = order[torch.searchsorted(cum, torch.rand(e, generator=g, dtype=torch.float64) * cum[-1]).clamp(max=n - 1)]
    intra = torch.rand(e, generator=g) < spec.homophily
    yc = y[src]
    u = torch.rand(e, generator=g, dtype=torch.float64)
    target_cum = torch.where(intra, lo[yc] + u * (hi[yc] - lo[yc]), u * cum[-1])
    dst = order[torch.searchsorted(cum, target_cum).clamp(max=n - 1)]
    del target_cum, u, intra, yc
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])
    if spec.extra_labels > 0:  # multi-hot: the node's class plus random others
        multi = torch.rand(n, c, generator=g) < spec.extra_labels
        multi[torch.arange(n), y] = True
        y = multi.float()
    return Data(x=x, y=y, edge_index=edge_index, num_nodes=n)

def load_synthetic(name: str, seed: int = 0) -> GraphDataset:
    spec = SYNTHETIC[name]
    data = synthetic_graph(spec, seed)
    perm = torch.randperm(spec.num_nodes, generator=torch.Generator().manual_seed(seed + 1))
    a = spec.num_train or spec.num_nodes // 2
    b = a + (spec.num_val or spec.num_nodes // 4)
    return GraphDataset(name, data, perm[:a], perm[a:b], perm[b:], spec.num_classes, f"generated ({spec}, seed {seed})")

def unknown_dataset(name) -> str:
    return (f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN)}, or a path to your graph "
            f"(a torch.save'd PyG Data, a folder of .npy arrays, a prepared folder)")

def is_custom(name: str) -> bool:
    """Whether ``--data.name`` names a graph of the user's (a path) rather than a built-in one."""
    return str(name).lower() not in KNOWN and (os.sep in str(name) or str(name).endswith(".pt") or os.path.exists(name))

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

def load_dataset(name: str, root: Optional[str] = None, seed: int = 0) -> GraphDataset:
    """Load a dataset by name: one of :data:`KNOWN` (case-insensitive)."""
    key = str(name).lower()
    if key in SYNTHETIC:
        return load_synthetic(key, seed)
    if key not in PLANETOID and key not in OGB:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN)}")
    root = data_dir(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"data root {root!r} is not a directory; give --data.root a folder for {name!r}")
    loader = load_planetoid if key in PLANETOID else load_ogb
    folder = PLANETOID.get(key) or OGB[key].replace("-", "_")
    # what a failed attempt must not leave behind: folders it made (a download's, a processing's)
    with dataset_lock(os.path.join(root, folder)):  # one download / processing at a time per node
        created = _missing_top(os.path.join(root, folder))
        made = created if created is not None else _missing_top(os.path.join(root, folder, "processed"))
        try:
            ds = _load_or_explain(name, key, root, loader, folder, existed=created is None)
        except BaseException:
            if made is not None and os.path.isdir(made):
                shutil.rmtree(made, ignore_errors=True)
            raise
    check_graph(ds)
    return ds

def _missing_top(path: str) -> Optional[str]:
    """The top-most folder on the way to ``path`` that does not exist yet (``None``: it exists)."""
    path, top = os.path.abspath(path), None
    while not os.path.exists(path):
        top, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return top

def _load_or_explain(name: str, key: str, root: str, loader, folder: str, existed: bool) -> GraphDataset:
    try:
        return loader(key, root)
    except DatasetError:  # our own, already one clear line
        raise
    except ImportError as e:  # a reader's dependency, not the data, is missing
        raise ValueError(f"reading dataset {name!r} needs the Python package {e.name or e}, which is not installed "
                         f"(pip install {e.name or 'it'})") from e
    except Exception as e:
        where = os.path.join(os.path.abspath(root), folder)
        if existed:  # the files are there but cannot be read
            raise ValueError(f"dataset {name!r} in {where} cannot be read ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}); replace or remove those files") from e
        raise ValueError(f"dataset {name!r} is not under data root {os.path.abspath(root)!r} (expected "
                         f"{where}) and could not be downloaded: {type(e).__name__}: {e}") from e
