"""The graph a data module serves: :class:`GraphDataset` (in memory or memory-mapped as a CSC), the
PyG remote-backend stores it is read through, and the checks that refuse a graph that would train
silently wrong."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, FeatureStore, TensorAttr
from torch_geometric.distributed import LocalGraphStore

from .storage import csc_arrays, edge_index_of, shared_edge_index


class DatasetError(ValueError):
    """A dataset problem already said in one line (the loaders' own checks)."""

@dataclass
class GraphDataset:
    """One graph with its split: ``data`` has ``x``, ``y`` (and ``edge_index``, unless the graph
    is given as a CSC in ``colptr`` / ``row``: a prepared, memory-mapped graph); the index
    tensors hold node ids. ``source`` says where it was read from, ``folder`` the prepared
    folder it is mapped from (``None``: in memory)."""
    name: str
    data: Data
    train_idx: Tensor
    val_idx: Tensor
    test_idx: Tensor
    num_classes: int
    source: str
    evaluator: Optional[Callable[[Tensor, Tensor], float]] = None
    colptr: Optional[Tensor] = None
    row: Optional[Tensor] = None
    folder: Optional[str] = None

    @property
    def num_features(self) -> int:
        return self.data.x.size(1)

    @property
    def multilabel(self) -> bool:
        """Labels are multi-hot rows ``[N, num_classes]`` (a binary task per class)."""
        return self.data.y.dim() == 2

    @property
    def num_edges(self) -> int:
        return int(self.row.numel()) if self.row is not None else int(self.data.edge_index.size(1))

    def edge_index(self) -> Tensor:
        """The ``[2, E]`` edges (layer-wise inference needs them; sampling reads the CSC). Of a
        prepared graph on the host: the int64 edge index mapped from its folder, shared by the
        ranks of a node (:func:`~unifews_dist.data.prepared.shared_edge_index`); of a CSC graph
        elsewhere (on a GPU): a new copy. Neither is kept here: a rank holds them only while it
        uses them."""
        if self.row is None:
            return self.data.edge_index
        if self.folder is not None and self.row.device.type == "cpu":
            return shared_edge_index(self.folder, self.colptr, self.row)
        return edge_index_of(self.colptr, self.row)

    def stores(self):
        """``(feature_store, graph_store)``: the graph through PyG's remote-backend interfaces
        (what :class:`~torch_geometric.loader.NodeLoader` and PyG's samplers accept as a pair),
        over the same tensors (no copy). PyG's in-memory implementations serve them, the
        features through :class:`GatherFeatureStore` (rows gathered by ``index_select``)."""
        fs = GatherFeatureStore()
        fs.put_tensor(self.data.x, group_name=None, attr_name="x", index=None)
        fs.put_tensor(self.data.y, group_name=None, attr_name="y", index=None)
        if self.row is not None:
            return fs, csc_graph_store(self.colptr, self.row)
        return fs, csc_graph_store(*csc_arrays(self.data.edge_index, self.data.num_nodes))

class GatherFeatureStore(FeatureStore):
    """An in-memory :class:`~torch_geometric.data.FeatureStore` over tensors held as they are (no
    copy), whose rows for a tensor of node ids are gathered by ``torch.index_select``.

    PyG's own in-memory store (``LocalFeatureStore``) gathers them by advanced indexing
    (``tensor[index]``), markedly slower than ``index_select`` (``benchmarks/store_speed.py``,
    BENCHMARKS.md); subclassing it to change that meant reading its private dict. This one
    implements :class:`FeatureStore`'s abstract methods, PyG's documented interface for a store, and nothing else."""

    def __init__(self):
        super().__init__()
        self._tensors: Dict[Tuple, Tensor] = {}

    @staticmethod
    def _key(attr: TensorAttr) -> Tuple:
        return attr.group_name, attr.attr_name

    def _put_tensor(self, tensor: Tensor, attr: TensorAttr) -> bool:
        if attr.index is not None:
            raise ValueError("GatherFeatureStore holds whole tensors: put_tensor with index=None")
        self._tensors[self._key(attr)] = tensor
        return True

    def _get_tensor(self, attr: TensorAttr) -> Optional[Tensor]:
        tensor = self._tensors.get(self._key(attr))
        index = attr.index
        if tensor is None or index is None:
            return tensor
        if isinstance(index, Tensor) and index.dim() == 1:
            return torch.index_select(tensor, 0, index.to(device=tensor.device, dtype=torch.long))
        return tensor[index]

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        return self._tensors.pop(self._key(attr), None) is not None

    def _get_tensor_size(self, attr: TensorAttr) -> Optional[Tuple[int, ...]]:
        tensor = self._tensors.get(self._key(attr))
        return None if tensor is None else tuple(tensor.shape)

    def get_all_tensor_attrs(self) -> List[TensorAttr]:
        return [TensorAttr(group_name=g, attr_name=n) for g, n in self._tensors]


def csc_graph_store(colptr: Tensor, row: Tensor):
    """A :class:`~torch_geometric.data.GraphStore` holding one homogeneous graph as CSC."""
    gs = LocalGraphStore()
    gs.meta = {"is_hetero": False}  # what a partition's metadata says; GraphStore.csc reads it
    n = colptr.numel() - 1
    gs.put_edge_index((row, colptr), edge_type=None, layout="csc", size=(n, n), is_sorted=True)
    return gs

def check_graph(ds: GraphDataset) -> None:
    """Refuse, in one line naming the count and the first offender, a graph that would train
    silently wrong: non-finite features (one ``inf`` made a weight rule prune every entry),
    labels of split nodes outside the classes, edge indices outside the nodes (negative ones
    too: index arithmetic would wrap them)."""
    data, name = ds.data, ds.name
    x, n = data.x, data.num_nodes
    bad = ~torch.isfinite(x)
    if bad.any():
        node, feat = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"dataset {name!r}: {int(bad.sum())} non-finite feature values (of {x.numel()}), the first "
                         f"at node {node}, feature {feat} ({float(x[node, feat])}); fix the features first")
    ei = ds.edge_index()
    out = (ei < 0) | (ei >= n)
    if out.any():
        col = int(out.any(0).nonzero()[0])
        raise ValueError(
            f"dataset {name!r}: {int(out.any(0).sum())} edges refer to nodes outside 0..{n - 1}, the first "
            f"is edge {col}: {int(ei[0, col])} -> {int(ei[1, col])}"
        )
    split = torch.cat([ds.train_idx, ds.val_idx, ds.test_idx])
    if split.numel() and (split.min() < 0 or split.max() >= n):
        raise ValueError(
            f"dataset {name!r}: split node ids must lie in 0..{n - 1}, got {int(split.min())}..{int(split.max())}"
        )
    y = data.y[split]
    wrong = (y != 0) & (y != 1) if ds.multilabel else (y < 0) | (y >= ds.num_classes)
    if wrong.any():
        i = int(wrong.reshape(len(split), -1).any(1).nonzero()[0])
        raise ValueError(
            f"dataset {name!r}: {int(wrong.reshape(len(split), -1).any(1).sum())} labelled nodes have "
            f"labels outside {'0 / 1' if ds.multilabel else f'0..{ds.num_classes - 1}'}, the first is node "
            f"{int(split[i])} (label {data.y[split[i]].tolist()})"
        )
