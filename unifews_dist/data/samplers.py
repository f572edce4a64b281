"""The neighbor sampler backends: the built-in pure-PyTorch one, pyg-lib and torch-sparse."""
from __future__ import annotations

import contextlib
import importlib.util
from typing import List, Literal, Optional, get_args

import torch
import torch_geometric.typing as pyg_typing
from torch_geometric.data import Data
from torch_geometric.sampler import NeighborSampler

from ..checks import check_choice
from .graph import csc_graph_store
from .sampler import TorchNeighborSampler
from .storage import shared_edge_index

Sampler = Literal["auto", "torch", "pyg_lib", "torch_sparse"]
SAMPLERS = get_args(Sampler)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _graph_on_cuda(graph) -> bool:
    if isinstance(graph, Data):
        return graph.edge_index.is_cuda
    return graph[1].csc()[1].is_cuda


def make_sampler(kind: str, data, num_neighbors: List[int], seed: int, folder: Optional[str] = None):
    """The sampler backend: ``auto`` takes pyg-lib when it imports and the graph is on the host,
    else the built-in one. ``data``: a ``Data`` or a ``(FeatureStore, GraphStore)`` pair (a
    prepared graph: every sampler reads its CSC as stored; pyg-lib and torch-sparse need
    ``row`` in int64: with the prepared ``folder`` given, the first row of the int64 edge index
    kept there and mapped, shared by the ranks of a node
    (:func:`~unifews_dist.data.prepared.shared_edge_index`); without it,
    or on a GPU, a private copy when ``row`` is stored in int32).

    ``torch_sparse`` gives no per-hop counts: the model then runs every layer on the whole
    sampled subgraph (correct, but without trimming).
    """
    check_choice("sampler", kind, SAMPLERS)
    if kind == "auto":  # pyg-lib samples on CPU only
        kind = "pyg_lib" if has_module("pyg_lib") and not _graph_on_cuda(data) else "torch"
    if kind == "torch":
        return TorchNeighborSampler(data, num_neighbors, seed=seed)
    if kind == "pyg_lib" and not has_module("pyg_lib"):
        raise ValueError("sampler 'pyg_lib' needs pyg-lib, which is not installed (PyG wheel index only); "
                         "use sampler 'torch' or 'auto'")
    if kind == "torch_sparse" and not has_module("torch_sparse"):
        raise ValueError("sampler 'torch_sparse' needs torch-sparse, which is not installed; use 'torch' or 'auto'")
    if not isinstance(data, Data):
        fs, gs = data
        row, colptr, _ = gs.csc()
        if row.dtype != torch.long:  # their kernels take int64 indices only
            shared = folder is not None and row.device.type == "cpu"
            data = (fs, csc_graph_store(colptr, shared_edge_index(folder, colptr, row)[0] if shared else row.long()))
    if kind == "torch_sparse":
        with _without_pyg_lib():
            return NeighborSampler(data, num_neighbors)
    return NeighborSampler(data, num_neighbors)


@contextlib.contextmanager
def _without_pyg_lib():
    """PyG's ``NeighborSampler`` samples with pyg-lib whenever it imports and has no option to
    choose torch-sparse instead; the flag it reads (``torch_geometric.typing.WITH_PYG_LIB``) is
    turned off while the sampler is made, and put back after."""
    saved = pyg_typing.WITH_PYG_LIB
    pyg_typing.WITH_PYG_LIB = False
    try:
        yield
    finally:
        pyg_typing.WITH_PYG_LIB = saved
