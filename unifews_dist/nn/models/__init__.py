from .gnn import LayerStats, UnifewsGNN
from .layerwise import InferenceWorkspace

__all__ = ["UnifewsGNN", "LayerStats", "InferenceWorkspace"]
