from .gnn import LayerStats, UnifewsGNN

__all__ = ["UnifewsGNN", "LayerStats"]
