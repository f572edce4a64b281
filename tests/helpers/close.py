"""Float comparisons that hold on any CPU: two code paths that sum in different orders agree to
rounding relative to the size of what they compute, never to an absolute tolerance (a quantity
that is analytically zero, such as a bias gradient behind batch norm, is pure rounding noise)."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor


def assert_close(actual: Tensor, expected: Tensor, rtol: float = 1e-9, scale: Optional[float] = None,
                 name: str = "") -> None:
    """``|actual - expected| <= rtol * s`` everywhere, ``s`` the larger of ``max|expected|`` and
    ``scale`` (e.g. the largest gradient of the model, for a gradient that may be ~0). Meant for
    float64, where rounding is ~1e-16 of the scale; the message shows the numbers."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    s = max(float(e.abs().max()) if e.numel() else 0.0, scale or 0.0)
    err = float((a - e).abs().max()) if e.numel() else 0.0
    assert err <= rtol * s or (s == 0 and err == 0), (
        f"{name}: max |difference| {err:.3e} > {rtol:g} x scale {s:.3e} "
        f"(relative {err / s if s else float('inf'):.3e}; dtype {actual.dtype})")


def assert_grads_close(actual: Dict[str, Tensor], expected: Dict[str, Tensor], rtol: float = 1e-9) -> None:
    """Every gradient agrees relative to the largest gradient of the model."""
    assert actual.keys() == expected.keys()
    scale = max(float(g.detach().abs().max()) for g in expected.values() if g is not None and g.numel())
    for name, g in expected.items():
        assert (actual[name] is None) == (g is None), name
        if g is not None:
            assert_close(actual[name], g, rtol, scale, name=name)


def assert_same_forward_and_backward(mine: Callable[[Tensor], Tensor], ref: Callable[[Tensor], Tensor],
                                     x: Tensor) -> None:
    """Two layers (or paths) called on copies of ``x``: the same outputs, and the same input
    gradients for one random output gradient (parameters they share then hold the sum of both)."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    o1, o2 = mine(x1), ref(x2)
    assert_close(o1, o2, name="output")
    g = torch.randn_like(o1)
    (o1 * g).sum().backward()
    (o2 * g).sum().backward()
    assert_close(x1.grad, x2.grad, name="input gradient")
