"""Datasets, the neighbor sampler and the LightningDataModule."""
from .datamodule import SAMPLERS, UnifewsDataModule, make_sampler
from .datasets import KNOWN, SYNTHETIC, GraphDataset, load_dataset, synthetic_graph
from .sampler import TorchNeighborSampler, sample_slots
from .shard import ShardedSeedSampler

__all__ = ["SAMPLERS", "UnifewsDataModule", "make_sampler", "KNOWN", "SYNTHETIC", "GraphDataset",
           "load_dataset", "synthetic_graph", "TorchNeighborSampler", "sample_slots", "ShardedSeedSampler"]
