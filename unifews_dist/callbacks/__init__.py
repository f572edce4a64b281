"""Callbacks: one per file."""
from .sparsity_monitor import SparsityMonitor, sparsity_metrics
from .sparsity_schedule import SparsitySchedule
from .target_sparsity import TargetSparsity
from .throughput_monitor import ThroughputMonitor

__all__ = ["SparsityMonitor", "SparsitySchedule", "TargetSparsity", "ThroughputMonitor", "sparsity_metrics"]
