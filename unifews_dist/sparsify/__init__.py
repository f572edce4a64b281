"""Pure tensor functions of the Unifews method: scores, keep rules, MAC counts."""
from .edge import check_threshold, edge_keep_mask, edge_scores, node_norms
from .macs import propagation_macs, transform_macs
from .weight import column_sq_sums, column_thresholds, weight_keep_mask

__all__ = [
    "check_threshold", "edge_keep_mask", "edge_scores", "node_norms",
    "propagation_macs", "transform_macs", "column_sq_sums", "column_thresholds", "weight_keep_mask",
]
