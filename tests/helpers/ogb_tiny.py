"""Write tiny datasets in OGB's on-disk layout (what ogb unpacks from its zip files)."""
import os

import numpy as np
import pandas as pd


def _csv(path, a):
    pd.DataFrame(a).to_csv(path, header=False, index=False, compression="gzip")


def write_tiny_ogb(root, name="ogbn-arxiv", n=60, e=240, f=8, num_classes=40, seed=0, binary=False,
                   unlabelled=0, release=True):
    """``root/<name with _>/{raw, split/time, RELEASE_v1.txt}``; returns (x, y, edge_index, splits).
    ``binary``: papers100M's npz layout; ``unlabelled`` nodes get a NaN label (as papers100M)."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, name.replace("-", "_"))
    raw, split = os.path.join(base, "raw"), os.path.join(base, "split", "time")
    os.makedirs(raw, exist_ok=True)
    os.makedirs(split, exist_ok=True)
    if release:
        with open(os.path.join(base, "RELEASE_v1.txt"), "w") as fh:
            fh.write("tiny test copy\n")
    edges = rng.integers(0, n, (2, e))
    x = rng.standard_normal((n, f)).astype(np.float32)
    y = rng.integers(0, num_classes, (n, 1)).astype(np.float64)
    year = rng.integers(2000, 2020, (n, 1))
    perm = rng.permutation(n)
    labelled, rest = perm[unlabelled:], perm[:unlabelled]
    y[rest] = np.nan
    splits = dict(zip(("train", "valid", "test"), np.split(labelled, [len(labelled) // 2, 3 * len(labelled) // 4])))
    if binary:
        np.savez(os.path.join(raw, "data.npz"), edge_index=edges, node_feat=x, node_year=year,
                 num_nodes_list=np.array([n]), num_edges_list=np.array([e]))
        np.savez(os.path.join(raw, "node-label.npz"), node_label=y.astype(np.float32))
    else:
        _csv(os.path.join(raw, "edge.csv.gz"), edges.T)
        _csv(os.path.join(raw, "node-feat.csv.gz"), x)
        _csv(os.path.join(raw, "node-label.csv.gz"), y.astype(np.int64))
        _csv(os.path.join(raw, "num-node-list.csv.gz"), np.array([[n]]))
        _csv(os.path.join(raw, "num-edge-list.csv.gz"), np.array([[e]]))
        _csv(os.path.join(raw, "node_year.csv.gz"), year)
    for part, idx in splits.items():
        _csv(os.path.join(split, part + ".csv.gz"), idx.reshape(-1, 1))
    return x, y, edges, splits
