"""The registry of graphs by name, and the downloadable ones: Planetoid and OGB node property
prediction (the seeded synthetic graphs: ``synthetic.py``; the user's own files: ``custom.py``)."""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .graph import DatasetError, GraphDataset, check_graph
from .storage import cache_dir, data_dir, dataset_lock, writable
from .synthetic import SYNTHETIC, load_synthetic


PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}

OGB = {"ogbn-arxiv": "ogbn-arxiv", "ogbn-products": "ogbn-products", "ogbn-papers100m": "ogbn-papers100M"}

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

def unknown_dataset(name) -> str:
    return (f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN)}, or a path to your graph "
            f"(a torch.save'd PyG Data, a folder of .npy arrays, a prepared folder)")

def is_custom(name: str) -> bool:
    """Whether ``--data.name`` names a graph of the user's (a path) rather than a built-in one."""
    return str(name).lower() not in KNOWN and (os.sep in str(name) or str(name).endswith(".pt") or os.path.exists(name))

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
