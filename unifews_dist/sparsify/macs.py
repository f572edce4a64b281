"""Multiply-accumulate counts, as Python ints (unbounded: no 32-bit overflow on papers100M)."""
from __future__ import annotations


def transform_macs(num_rows: int, in_features: int, out_features: int, weight_nnz: int | None = None) -> int:
    """MACs of ``X[num_rows, in] @ W.T``; with ``weight_nnz`` only the kept entries count."""
    nnz = in_features * out_features if weight_nnz is None else int(weight_nnz)
    return int(num_rows) * nnz


def propagation_macs(num_edges: int, channels: int) -> int:
    """MACs of aggregating ``num_edges`` messages of ``channels`` features."""
    return int(num_edges) * int(channels)
