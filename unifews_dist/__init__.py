"""unifews_dist: entry-wise sparsified GNN training (Unifews) on sampled minibatches, with DDP."""
__version__ = "0.1.0"
