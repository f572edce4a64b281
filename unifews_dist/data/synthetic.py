"""Seeded synthetic graphs of a chosen size: class-homophilous power-law degrees, features that
carry the class; for benchmarks and tests at any scale without a download."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
from torch_geometric.data import Data

from .graph import GraphDataset


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
