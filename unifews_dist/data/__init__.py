"""Graphs, their sources and storage, the neighbor samplers and the LightningDataModule.

Modules import one way: ``storage`` <- ``graph`` <- (``split``, ``synthetic``, ``custom``) <- ``sources``
<- ``prepared`` <- ``samplers`` <- ``datamodule`` (``sources``: the registry of names, Planetoid and
OGB; ``synthetic``: the seeded generator; ``custom``: a user's files; ``split``: the random split;
``sampler``: the built-in sampler; ``shard``: the seed sharding).
"""
from .datamodule import UnifewsDataModule
from .graph import GraphDataset
from .samplers import SAMPLERS, make_sampler
from .sampler import TorchNeighborSampler, sample_slots
from .shard import ShardedSeedSampler
from .sources import KNOWN, load_dataset
from .synthetic import SYNTHETIC, synthetic_graph

__all__ = ["SAMPLERS", "UnifewsDataModule", "make_sampler", "KNOWN", "SYNTHETIC", "GraphDataset", "load_dataset",
           "synthetic_graph", "TorchNeighborSampler", "sample_slots", "ShardedSeedSampler"]
