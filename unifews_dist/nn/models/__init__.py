from .gnn import LayerStats, UnifewsGNN
from .workspace import InferenceWorkspace

__all__ = ["UnifewsGNN", "LayerStats", "InferenceWorkspace"]
