"""Argument checks shared by the layers, the module, the data module and the callbacks."""
from __future__ import annotations

from typing import Sequence


def check_choice(name: str, value, allowed: Sequence) -> None:
    """Raise ``ValueError`` naming ``value`` and the allowed values unless ``value in allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
