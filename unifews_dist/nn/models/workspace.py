"""Layer-wise inference's large buffers, kept from one call to the next (:class:`InferenceWorkspace`)."""
from __future__ import annotations

import math
from typing import Dict, Tuple

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

    def held(self) -> Dict[tuple, Tensor]:
        """The buffers held now, by role (a new dict; the tensors are the buffers themselves)."""
        return dict(self._buffers)


# The workspace's roles, by lifetime: a layer's propagated channels die with the layer (one buffer
# for all layers); its outputs and kept edges are the next layer's input (two buffers, alternate
# layers)
SOURCES = ("sources",)


def next_input_role(kind: str, i: int) -> tuple:
    return (kind, i % 2)
