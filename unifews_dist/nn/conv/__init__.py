"""One sparsified layer per file."""
from .base import UnifewsConv
from .gatv2 import UnifewsGATv2Conv
from .gcn import UnifewsGCNConv
from .gcnii import UnifewsGCNIIConv
from .gin import UnifewsGINConv
from .sage import UnifewsSAGEConv

CONVS = {
    "gcn": UnifewsGCNConv,
    "sage": UnifewsSAGEConv,
    "gat": UnifewsGATv2Conv,
    "gin": UnifewsGINConv,
    "gcnii": UnifewsGCNIIConv,
}

__all__ = ["UnifewsConv", "UnifewsGCNConv", "UnifewsSAGEConv", "UnifewsGATv2Conv",
           "UnifewsGINConv", "UnifewsGCNIIConv", "CONVS"]
