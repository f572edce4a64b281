"""How layer-wise inference runs (:class:`InferenceOptions`) and its large buffers, kept from one
call to the next (:class:`InferenceWorkspace`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from torch import Tensor


class InferenceWorkspace:
    """The large buffers of :func:`layerwise_inference`, kept from one call to the next: every
    hidden layer's output rows (``N x hidden``), the channels a layer propagates and the edges it
    keeps (the next layer's). Pass the same workspace to calls on the same graph (a model
    evaluated or deployed again and again): each call then writes into memory it already holds.
    Fresh memory costs its first-touch page faults, a large share of a CPU inference's time
    (BENCHMARKS.md); on a GPU torch's caching allocator already reuses memory. What the call
    returns is never one of these buffers. Holds the memory until dropped (:meth:`clear`)."""

    def __init__(self):
        self._buffers = {}

    def get(self, role: tuple, shape: Tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device: a view of the
        buffer kept for ``role`` when it is large enough (else a new one, kept in its place).
        A role's tensor is valid until the role is asked for again."""
        numel = math.prod(shape)
        t = self._buffers.get(role)
        if t is None or t.numel() < numel or t.dtype != like.dtype or t.device != like.device:
            self._buffers[role] = None  # (the old one freed before the new one is made)
            t = self._buffers[role] = like.new_empty(numel)
        return t[:numel].view(shape)

    def clear(self) -> None:
        self._buffers.clear()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._buffers.values())


# The workspace's roles, by lifetime: a layer's propagated channels die with the layer (one buffer
# for all layers); its outputs and kept edges are the next layer's input (two buffers, alternate
# layers)
SOURCES = ("sources",)


def next_input_role(kind: str, i: int) -> tuple:
    return (kind, i % 2)


@dataclass
class InferenceOptions:
    """How :func:`~unifews_dist.nn.models.layerwise.layerwise_inference` runs.

    Args:
        batch_size: target nodes per batch (their in-edges and sources are what one batch holds).
        output_nodes: the nodes whose outputs are returned; ``None``: every node.
        progress: called with the number of target nodes after each batch (a progress bar).
        distributed: called on every rank of the initialised process group at once (each with
            its own ``output_nodes``): the ranks split the work instead of each doing all of it.
            Each rank computes every layer for a contiguous share of the nodes (the last layer:
            for the output nodes of every rank in its share) and holds the in-edges of its share
            only, the kept ones after each layer; the rows are all-gathered (one buffer), and the
            rule's mean is the ranks' sums added up. Every rank then holds the same
            representations and means as one process would (with ``"outputs"``, the locked nodes
            are every rank's output nodes), and returns its own output nodes' rows. Its
            statistics are this rank's share (a sum over ranks is one process's for every rank's
            output nodes). With ``"each"``, each rank computes its own outputs' locked rows.
        lock_scope: ``"outputs"`` or ``"each"`` (:func:`~unifews_dist.nn.models.layerwise.layerwise_inference`).
        workspace: an :class:`InferenceWorkspace` to take the large buffers from and leave them
            in for the next call (``None``: the call's own, freed when it ends).
        canonical: the edges sorted by target and source and each batch's sum in cuSPARSE's
            canonical CSR (default: on CUDA; asked for on the CPU, the GPU's path runs there).
    """

    batch_size: int = 4096
    output_nodes: Optional[Tensor] = None
    progress: Optional[Callable[[int], None]] = None
    distributed: bool = False
    lock_scope: str = "outputs"
    workspace: Optional[InferenceWorkspace] = None
    canonical: Optional[bool] = None
