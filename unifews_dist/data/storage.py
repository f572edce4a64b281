"""Where prepared data lives and how processes share it: the cache folder, a per-dataset file
lock, and the graph's int64 edge index mapped once per node. No other module of ``data/`` is
imported here."""
from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import index_sort
from torch_geometric.utils.sparse import index2ptr


def cache_dir() -> str:
    """Where prepared arrays of graphs without a folder of their own go: ``$UNIFEWS_CACHE``, or
    ``~/.cache/unifews_dist``."""
    return os.environ.get("UNIFEWS_CACHE", os.path.expanduser("~/.cache/unifews_dist"))


def data_dir(root: Optional[str] = None) -> str:
    """The dataset root: ``root`` when given (``--data.root``), else ``$UNIFEWS_DATA``, else
    ``data/`` in :func:`cache_dir` (Planetoid and OGB download there when online)."""
    if root:
        return os.path.expanduser(root)
    return os.path.expanduser(os.environ.get("UNIFEWS_DATA") or os.path.join(cache_dir(), "data"))


def writable(path: str) -> bool:
    """Whether ``path`` (or, if it does not exist, the nearest folder above it) may be written:
    by permission *and* by its mode bits, so that a folder marked read-only (``r-x``) is left
    alone also by root, whom ``os.access`` lets write anywhere."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)


@contextlib.contextmanager
def dataset_lock(path: str):
    """Hold an exclusive lock for a dataset folder while it is downloaded, processed or read:
    every rank of a job reads the dataset when the config is resolved (its feature and class
    counts size the model), before Lightning's ``prepare_data`` runs on one process, so ranks on
    one node would otherwise download and process into the same folder at once. The lock file
    lives in the system's temporary folder (``/tmp``), named after the folder's absolute path,
    so nothing is written next to the data before it exists."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock_dir = "/tmp/unifews-dataset-locks"
    name = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16] + ".lock"
    try:
        if not os.path.isdir(lock_dir):
            try:
                os.mkdir(lock_dir)  # in /tmp only: no folder is made where there is none
                os.chmod(lock_dir, 0o1777)  # shared by every user, like /tmp
            except FileExistsError:  # another rank made it just now
                pass
        f = open(os.path.join(lock_dir, name), "a")
    except OSError:  # no /tmp, a read-only one, another user's lock file: go on without the lock
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def csc_arrays(edge_index: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    """``(colptr, row)`` of a graph's in-edges, sorted by target (stable: a target's sources keep
    their order), ``row`` int32 when the node count allows."""
    col, perm = index_sort(edge_index[1], max_value=num_nodes)
    row = edge_index[0].index_select(0, perm)
    if num_nodes <= torch.iinfo(torch.int32).max:
        row = row.to(torch.int32)
    return index2ptr(col, num_nodes), row

def edge_index_of(colptr: Tensor, row: Tensor) -> Tensor:
    """The ``[2, E]`` edge index (int64) of a CSC graph, targets ascending: a private copy, for
    what needs a COO graph (layer-wise inference)."""
    n = colptr.numel() - 1
    deg = colptr[1:] - colptr[:-1]
    col = torch.repeat_interleave(torch.arange(n, device=colptr.device), deg, output_size=row.numel())
    return torch.stack([row.long(), col])

def shared_edge_index(folder: str, colptr: Tensor, row: Tensor) -> Tensor:
    """A prepared graph's ``[2, E]`` int64 edge index (sources, targets ascending), for what needs
    a COO graph in int64 (layer-wise inference; pyg-lib and torch-sparse, whose kernels take int64
    indices only, read its first row): kept beside the prepared arrays (``edge_index_int64.npy``),
    written once per node under the dataset's lock and memory-mapped by every rank, instead of a
    private copy in each (16 bytes per edge: papers100M 26 GB a rank).

    The file is derived, not listed in the manifest: a rebuilt folder starts without it, a file
    of the wrong shape or whose sampled entries disagree with ``(colptr, row)`` is written again,
    and a folder that cannot be written gives a private copy (:func:`edge_index_of`)."""
    path = os.path.join(folder, "edge_index_int64.npy")
    n, e = colptr.numel() - 1, row.numel()
    probe = torch.linspace(0, max(e - 1, 0), steps=min(e, 1024)).long()
    expect = torch.stack([row[probe].long(), torch.searchsorted(colptr, probe, right=True) - 1])

    def mapped() -> Optional[Tensor]:
        try:
            a = np.load(path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError):
            return None
        t = torch.from_numpy(a)
        same = a.dtype == np.int64 and tuple(a.shape) == (2, e)
        return t if same and torch.equal(t[:, probe], expect) else None

    with dataset_lock(folder):
        t = mapped()
        if t is None:
            for left in os.listdir(folder):  # what a killed writer left (none writes now: the lock)
                if left.startswith("edge_index_int64.npy.tmp-"):
                    os.remove(os.path.join(folder, left))
            tmp = f"{path}.tmp-{os.getpid()}"
            try:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(2, e))
                src, ptr, step = row.numpy(), colptr.numpy(), 1 << 22
                for a in range(0, n, step):  # in chunks of targets: nothing graph-sized in memory
                    b = min(a + step, n)
                    lo, hi = int(ptr[a]), int(ptr[b])
                    out[0, lo:hi] = src[lo:hi]
                    out[1, lo:hi] = np.repeat(np.arange(a, b, dtype=np.int64), np.diff(ptr[a:b + 1]))
                out.flush()
                del out
                os.replace(tmp, path)
            except OSError:  # a read-only folder
                if os.path.exists(tmp):
                    os.remove(tmp)
                return edge_index_of(colptr, row)
            t = mapped()
    return t if t is not None else edge_index_of(colptr, row)
