"""A dataset prepared once as plain arrays on disk, memory-mapped read-only by every process.

Every rank of a job (and every DataLoader worker) maps the same files, so the processes on a
node share one copy of the graph through the page cache: nothing graph-sized is copied per
rank. The folder holds what training reads, no more: the CSC the sampler walks (``colptr``,
``row``: the in-edges of node ``v`` are ``row[colptr[v]:colptr[v + 1]]``; no ``edge_index``),
the features ``x``, the labels ``y`` and the split, as ``.npy`` files, and ``manifest.json``
(written last) with each array's dtype, shape, size and digest, the source, and the source's
fingerprint. ``row`` is int32 when the node count allows.

A folder is read only when its manifest says it is complete, its arrays have the sizes and
digests the manifest gives, and the source it was made from is unchanged (the source's files,
or a synthetic graph's generator settings); otherwise it is rebuilt. One process per node
builds it, under the dataset's file lock, into a temporary folder renamed into place when
complete, so a prepare killed midway leaves nothing that is ever read.

Why not PyG's own: a PyG dataset's ``processed/`` file is one pickle, read whole into every
process; the remote-backend interfaces (:class:`~torch_geometric.data.FeatureStore`,
:class:`~torch_geometric.data.GraphStore`) are what we serve the mapped arrays through
(:meth:`PreparedGraph.stores`), so a partitioned store (cuGraph-PyG, WholeGraph) can replace
this one at the same seam.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from torch_geometric.data import Data

from ..checks import check_choice
from ..sparsify import node_norms
from .graph import DatasetError, GraphDataset, check_graph
from .custom import load_custom
from .sources import OGB, PLANETOID, is_custom, load_dataset, ogb_evaluator, unknown_dataset
from .synthetic import SYNTHETIC
from .storage import cache_dir, csc_arrays, data_dir, dataset_lock, writable

FORMAT = 1
#: the synthetic generator's version: a change to :func:`synthetic_graph` must raise it
GENERATOR_VERSION = 1
FEATURE_DTYPES = ("float32", "float16", "bfloat16")
ARRAYS = ("colptr", "row", "x", "y", "train_idx", "val_idx", "test_idx")
_CHUNK, _SAMPLES = 1 << 16, 64  # the load-time digest reads 64 chunks of 64 KiB of each file


def _files_fingerprint(paths: List[str]) -> List[list]:
    """``[relative path, size, mtime_ns]`` of every file under ``paths`` (a changed, added or
    removed source file changes it)."""
    out = []
    for top in paths:
        if os.path.isfile(top):
            st = os.stat(top)
            out.append([os.path.basename(top), st.st_size, st.st_mtime_ns])
            continue
        for d, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(d, f)
                st = os.stat(p)
                out.append([os.path.relpath(p, os.path.dirname(top)), st.st_size, st.st_mtime_ns])
    return out


def _digest(path: str, full: bool) -> str:
    """sha256 of the file (``full``), or of its size and 64 chunks spread evenly over it: what
    every start checks (4 MiB read per file, whatever its size). Both detect a truncated or
    resized file; the full one also a changed byte anywhere."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if full or size <= _CHUNK * _SAMPLES:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        else:
            for k in range(_SAMPLES):
                f.seek((size - _CHUNK) * k // (_SAMPLES - 1))
                h.update(f.read(_CHUNK))
    return h.hexdigest()


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def write_prepared(folder: str, arrays: Dict[str, Tensor], meta: dict) -> None:
    """Write ``arrays`` (the names of :data:`ARRAYS`) and the manifest into ``folder``: into a
    temporary sibling first, renamed into place when complete (a folder already there is
    replaced, and temporary ones a killed prepare left are removed). The caller holds the
    dataset's lock. ``meta``: what the manifest says besides the arrays (source, fingerprint, ...)."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{folder}.tmp-{os.getpid()}"
    base = os.path.basename(folder) + ".tmp-"
    for left in os.listdir(parent):  # what a killed prepare left (the caller holds the lock: none runs now)
        if left.startswith(base):
            shutil.rmtree(os.path.join(parent, left), ignore_errors=True)
    os.makedirs(tmp)
    try:
        entries = {}
        for name in ARRAYS:
            t = arrays[name].detach().cpu().contiguous()
            dtype = str(t.dtype).replace("torch.", "")
            a = t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()  # numpy has no bf16
            path = os.path.join(tmp, f"{name}.npy")
            np.save(path, a, allow_pickle=False)
            entries[name] = {"file": f"{name}.npy", "dtype": dtype, "shape": list(t.shape),
                             "bytes": os.path.getsize(path), "digest": _digest(path, full=False),
                             "sha256": _digest(path, full=True)}
        manifest = {"format": FORMAT, **meta, "arrays": entries}
        with open(os.path.join(tmp, "manifest.json.tmp"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(tmp, "manifest.json.tmp"), os.path.join(tmp, "manifest.json"))
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(folder: str) -> Optional[dict]:
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def check_prepared(folder: str, fingerprint: Optional[dict], full: bool = False) -> Optional[str]:
    """Why ``folder`` must not be read (``None``: it may). ``fingerprint``: the source's now
    (``None``: not checked). ``full``: every byte's digest, not the sampled one."""
    m = read_manifest(folder)
    if m is None:
        return "no complete manifest" if os.path.isdir(folder) else "not prepared yet"
    if m.get("format") != FORMAT:
        return f"format {m.get('format')!r}, this version writes {FORMAT}"
    if fingerprint is not None and m.get("fingerprint") != fingerprint:
        return "the source changed since it was prepared"
    arrays = m.get("arrays", {})
    for name in ARRAYS:
        e = arrays.get(name)
        path = os.path.join(folder, f"{name}.npy")
        if e is None or not os.path.isfile(path):
            return f"{name}.npy is missing"
        if os.path.getsize(path) != e["bytes"]:
            return f"{name}.npy has {os.path.getsize(path)} bytes, the manifest says {e['bytes']}"
        if _digest(path, full) != e["sha256" if full else "digest"]:
            return f"{name}.npy does not match its digest"
    return None


def map_array(folder: str, entry: dict) -> Tensor:
    """One prepared array, memory-mapped copy-on-write (``MAP_PRIVATE``): pages come from the
    page cache, shared by every process that maps the file; a write stays in the writer."""
    a = np.load(os.path.join(folder, entry["file"]), mmap_mode="c", allow_pickle=False)
    if list(a.shape) != list(entry["shape"]):
        raise ValueError(f"{entry['file']} in {folder} has shape {list(a.shape)}, the manifest says {entry['shape']}")
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if entry["dtype"] == "bfloat16" else t


def synthetic_fingerprint(spec, seed: int) -> dict:
    return {"kind": "synthetic", "spec": asdict(spec), "seed": int(seed), "generator": GENERATOR_VERSION}


def files_fingerprint(kind: str, paths: List[str]) -> Optional[dict]:
    """The fingerprint of a dataset read from files (``None``: none of them exists yet)."""
    files = _files_fingerprint([p for p in paths if os.path.exists(p)])
    return {"kind": kind, "files": files} if files else None


def _prepared_home(source: str, key: str, suffix: str) -> str:
    """Next to the data: ``SOURCE/prepared`` for a dataset's folder, ``SOURCE.prepared`` for a
    graph file, where that can be written; else in the cache, named after the source's path."""
    home = os.path.join(source, f"prepared{suffix}") if not os.path.isfile(source) else f"{source}.prepared{suffix}"
    if writable(home):
        return home
    tag = hashlib.sha1(os.path.abspath(source).encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), "prepared", f"{key}-{tag}{suffix}")


def locate(name: str, root: str, seed: int, feature_dtype: str):
    """``(folder, fingerprint, build)``: where ``name``'s prepared arrays live, a function giving
    its source's fingerprint now (``None``: a prepared folder given as is, nothing to build it
    from) and one loading the source (a :class:`GraphDataset` in memory)."""
    check_choice("feature_dtype", feature_dtype, FEATURE_DTYPES)
    suffix = "" if feature_dtype == "float32" else f"-{feature_dtype}"
    key = str(name).lower()
    if key in SYNTHETIC:
        folder = os.path.join(cache_dir(), "prepared", f"{key}-seed{seed}{suffix}")
        return folder, lambda: synthetic_fingerprint(SYNTHETIC[key], seed), lambda: load_dataset(key, root, seed)
    if key in PLANETOID or key in OGB:
        root = data_dir(root)
        top = os.path.join(root, PLANETOID.get(key) or OGB[key].replace("-", "_"))
        src = [os.path.join(top, "raw")] if key in PLANETOID else \
            [os.path.join(top, d) for d in ("raw", "split")]
        return (_prepared_home(top, key, suffix), lambda: files_fingerprint(key, src),
                lambda: load_dataset(key, root, seed))
    if key == "custom" or is_custom(name):
        if key == "custom" and not root:
            raise ValueError("--data.name custom reads the graph at --data.root PATH; give that path")
        path = os.path.abspath(os.path.expanduser(root if key == "custom" else name))
        if read_manifest(path) is not None:  # a prepared folder itself
            return path, None, None
        tag = os.path.basename(path.rstrip(os.sep))
        return (_prepared_home(path, f"custom-{tag}", suffix), lambda: files_fingerprint(f"custom {tag}", [path]),
                lambda: load_custom(path, seed))
    raise ValueError(unknown_dataset(name))


def _arrays(ds, feature_dtype: str) -> Dict[str, Tensor]:
    colptr, row = csc_arrays(ds.edge_index(), ds.data.num_nodes)
    return {"colptr": colptr, "row": row, "x": ds.data.x.to(_torch_dtype(feature_dtype)), "y": ds.data.y,
            "train_idx": ds.train_idx.long(), "val_idx": ds.val_idx.long(), "test_idx": ds.test_idx.long()}


def load_prepared(name: str, root: Optional[str] = None, seed: int = 0, feature_dtype: str = "float32",
                  verify: bool = False, rebuild: bool = False, say=print):
    """The dataset ``name`` as a memory-mapped :class:`GraphDataset` (CSC, no ``edge_index``),
    prepared first when its folder is missing, incomplete, corrupt or older than its source.

    One process per node prepares (the dataset's file lock); the others wait and map what it
    wrote. ``verify``: check every byte's digest, not a sample; ``rebuild``: prepare again
    whatever is there. ``say``: where the one line about a (re)build goes (called only then)."""
    folder, fingerprint, build = locate(name, root, seed, feature_dtype)
    with dataset_lock(folder):
        if build is None:  # a prepared folder given as is
            reason = check_prepared(folder, None, full=verify)
            if reason is not None:
                raise DatasetError(
                    f"prepared graph {folder} cannot be read: {reason}; prepare it again from its source"
                )
        else:
            reason = "a rebuild was asked for" if rebuild else check_prepared(folder, fingerprint(), full=verify)
            if reason is not None:
                if say is not None:
                    say(f"[unifews_dist] preparing {name} in {folder} ({reason})", flush=True)
                ds = build()
                check_graph(ds)
                meta = {
                    "name": ds.name,
                    "source": ds.source,
                    "fingerprint": fingerprint(),  # (after a download)
                    "num_nodes": int(ds.data.num_nodes),
                    "num_edges": ds.num_edges,
                    "num_classes": int(ds.num_classes),
                    "feature_dtype": feature_dtype,
                    "evaluator": OGB.get(str(name).lower()),
                }
                write_prepared(folder, _arrays(ds, feature_dtype), meta)
                del ds
        m = read_manifest(folder)
        t = {k: map_array(folder, m["arrays"][k]) for k in ARRAYS}
    data = Data(x=t["x"], y=t["y"], num_nodes=int(m["num_nodes"]))
    return GraphDataset(
        m["name"],
        data,
        t["train_idx"],
        t["val_idx"],
        t["test_idx"],
        int(m["num_classes"]),
        f"{m['source']}, prepared in {folder}",
        ogb_evaluator(m["evaluator"]) if m.get("evaluator") else None,
        colptr=t["colptr"],
        row=t["row"],
        folder=folder,
    )


def feature_norms(ds: GraphDataset, chunk: int = 1 << 16) -> Tensor:
    """Every node's input feature norm (``[N]``, float32, of the features as the model takes them:
    half precision made float32 first), by :func:`~unifews_dist.sparsify.node_norms`, the
    function a layer scores its sources with. Computed once: a prepared graph keeps them next to
    its arrays (``x_norm-DIGEST.npy``, named after the features' digest, so a rebuilt folder
    never reads stale ones; written atomically, mapped by every process), else in memory."""
    x = ds.data.x
    path = None
    if ds.folder is not None:
        m = read_manifest(ds.folder) or {}
        digest = m.get("arrays", {}).get("x", {}).get("digest")
        path = os.path.join(ds.folder, f"x_norm-{digest[:16]}.npy") if digest else None
    if path is not None and os.path.isfile(path):
        a = np.load(path, mmap_mode="c", allow_pickle=False)
        if a.shape == (x.size(0),) and a.dtype == np.float32:
            return torch.from_numpy(a)
    norms = torch.cat([node_norms(x[a:a + chunk].float()) for a in range(0, x.size(0), chunk)]) if x.size(0) else \
        torch.zeros(0)
    if path is not None and writable(path):
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, norms.numpy(), allow_pickle=False)
        os.replace(tmp, path)
    return norms
