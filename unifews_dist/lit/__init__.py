from .module import UnifewsModule

__all__ = ["UnifewsModule"]
