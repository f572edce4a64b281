"""Callbacks: one per file."""
from .at_target_checkpoint import AtTargetCheckpoint
from .evaluation_thresholds import EvaluationThresholds
from .prediction_writer import PredictionWriter
from .sparsity_monitor import SparsityMonitor, sparsity_metrics
from .slurm_requeue import Requeued, SlurmRequeue
from .sparsity_schedule import SparsitySchedule
from .target_sparsity import TargetSparsity
from .throughput_monitor import ThroughputMonitor

__all__ = [
    "AtTargetCheckpoint",
    "EvaluationThresholds",
    "PredictionWriter",
    "Requeued",
    "SlurmRequeue",
    "SparsityMonitor",
    "SparsitySchedule",
    "TargetSparsity",
    "ThroughputMonitor",
    "sparsity_metrics",
]
