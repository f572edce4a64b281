"""``X @ W_masked.T`` that computes only the kept weight entries.

torch's CPU CSR matmul is slower than a dense GEMM even at 90% sparsity on the machines we
measured (``benchmarks/layer_speed.py``), so on CPU we use a numba kernel that walks the CSR
rows of ``W`` over blocks of 64 nodes held transposed in cache: one vector multiply-add per
kept entry and block. On CUDA, torch's CSR matmul (cuSPARSE) is used when asked for
(``backend="sparse"``); it never beat a dense GEMM on the H100 we measured, so ``auto`` does not.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # numba is a declared dependency; keep the dense fallback if a platform lacks it
    import numba as _nb
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _nb = None

_BLOCK = 64
_kernel = None
_IMPORT_PID = os.getpid()
_layer_checked_pid = None


def numba_available() -> bool:
    return _nb is not None


def _choose_threading_layer() -> None:
    """Use numba's own thread pool in a process forked from the one that imported us.

    numba's default parallel backend here is GNU OpenMP, which is not fork-safe: a child forked
    after its parent ran any OpenMP region (torch does, for most CPU ops) hangs in its first
    parallel region. Lightning's ``ddp_fork`` ranks are such children. The ``workqueue`` layer
    is slower (about 1.7x on a 20000x256 block at 90% sparsity) but fork-safe, so it is chosen
    only there, and never over an explicit ``NUMBA_THREADING_LAYER``."""
    global _layer_checked_pid
    pid = os.getpid()
    if _layer_checked_pid == pid:
        return
    _layer_checked_pid = pid
    if pid != _IMPORT_PID and "NUMBA_THREADING_LAYER" not in os.environ:
        _nb.config.THREADING_LAYER = "workqueue"


def _get_kernel():
    global _kernel
    _choose_threading_layer()
    if _kernel is None:
        if _nb is None:
            raise RuntimeError("the CPU sparse transform needs numba: pip install numba")
        B = _BLOCK

        @_nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
        def csr_rows_times_x(x, crow, col, val, nout):  # y = x @ W.T, W given as CSR [nout, fin]
            n, fi = x.shape
            y = _np.empty((n, nout), dtype=x.dtype)
            nblk = (n + B - 1) // B
            for b in _nb.prange(nblk):
                s = b * B
                m = min(B, n - s)
                xt = _np.zeros((fi, B), dtype=x.dtype)
                yt = _np.zeros((nout, B), dtype=x.dtype)
                for r in range(m):
                    for j in range(fi):
                        xt[j, r] = x[s + r, j]
                for i in range(nout):
                    for p in range(crow[i], crow[i + 1]):
                        w = val[p]
                        j = col[p]
                        for r in range(B):
                            yt[i, r] += w * xt[j, r]
                for r in range(m):
                    for i in range(nout):
                        y[s + r, i] = yt[i, r]
            return y

        _kernel = csr_rows_times_x
    return _kernel


def _csr(weight: Tensor, mask: Tensor):
    idx = mask.nonzero()  # row-major order: CSR order
    rows, cols = idx[:, 0], idx[:, 1]
    vals = weight[rows, cols]
    crow = torch.zeros(weight.size(0) + 1, dtype=torch.long, device=weight.device)
    crow[1:] = torch.bincount(rows, minlength=weight.size(0)).cumsum(0)
    return crow, cols, vals


def _spmm(x: Tensor, crow: Tensor, col: Tensor, val: Tensor, nout: int) -> Tensor:
    """``x @ W.T`` for ``W`` given in CSR form (rows = outputs)."""
    if x.is_cuda:
        w = torch.sparse_csr_tensor(crow, col, val, (nout, x.size(1)), device=x.device)
        return (w @ x.t()).t()
    x = x.detach().contiguous()
    if x.dtype != torch.float32 or val.dtype != torch.float32:
        raise TypeError(f"the CPU sparse transform supports float32, got {x.dtype}")
    y = _get_kernel()(x.numpy(), crow.numpy(), col.numpy(), val.detach().contiguous().numpy(), nout)
    return torch.from_numpy(y)


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mask):
        crow, col, vals = _csr(weight.detach(), mask)
        ctx.save_for_backward(x, weight, mask)
        return _spmm(x, crow, col, vals, weight.size(0))

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # grad_x = grad_out @ W_masked: the same kernel on W.T
            wt, mt = weight.detach().t(), mask.t()
            crow, col, vals = _csr(wt, mt)
            grad_x = _spmm(grad_out, crow, col, vals, weight.size(1))
        if ctx.needs_input_grad[1]:  # only kept entries get a gradient
            grad_w = (grad_out.t() @ x) * mask
        return grad_x, grad_w, None


def sparse_linear(x: Tensor, weight: Tensor, mask: Tensor) -> Tensor:
    """``x @ (weight * mask).T`` computing only the kept entries (differentiable in x and weight)."""
    return _SparseLinearFn.apply(x, weight, mask)
