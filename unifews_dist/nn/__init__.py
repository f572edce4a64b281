"""Sparsified layers and the layer stack."""
from .conv import (CONVS, UnifewsConv, UnifewsGATv2Conv, UnifewsGCNConv, UnifewsGCNIIConv,
                   UnifewsGINConv, UnifewsSAGEConv)
from .linear import UnifewsLinear
from .models import InferenceWorkspace, LayerStats, UnifewsGNN
from .selection import LayerPlan, Selection

__all__ = ["CONVS", "UnifewsConv", "UnifewsGATv2Conv", "UnifewsGCNConv", "UnifewsGCNIIConv",
           "UnifewsGINConv", "UnifewsSAGEConv", "UnifewsLinear", "LayerStats", "UnifewsGNN",
           "InferenceWorkspace", "LayerPlan", "Selection"]
