"""``X @ W_masked.T`` that computes only the kept weight entries.

torch's CPU CSR matmul is slower than a dense GEMM even at 90% sparsity on the machines we
measured (``benchmarks/layer_speed.py``), so on CPU we use a numba kernel. It walks the CSR rows
of ``W`` over tiles of 32 nodes held transposed in L1 cache, of the input columns that hold a
kept entry only (the Unifews weight rule's per-column threshold empties most columns of a
sparse map, and loading the tile was much of the kernel's time): each output row of the tile is
summed in vector registers over that row's kept entries (one broadcast multiply-add of 32 nodes
per kept entry) and stored once. The register accumulation is written as a small LLVM intrinsic
(``_row_fma``) because numba's loops kept the sum in memory (a store-to-load chain per entry,
4-5x slower) or turned it into gathers. The output is allocated by numpy, which asks for huge
pages on large arrays; first-touch page faults of a 100 MB output otherwise cost as much as the
arithmetic. On CUDA, torch's CSR matmul (cuSPARSE) is used when asked for
(``backend="sparse"``); it never beat a dense GEMM on the H100 we measured, so ``auto`` does not.
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple, Optional

import torch
from torch import Tensor

try:  # numba is a declared dependency; keep the dense fallback if a platform lacks it
    import numba as _nb
    import numpy as _np
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.extending import intrinsic as _intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _nb = None

_TILE = 32  # nodes per tile: a 32 x 256 float tile of X is 32 KiB, it stays in L1
_LANES = 16  # floats per vector register the intrinsic asks LLVM for (it splits them if narrower)
_IMPORT_PID = os.getpid()
_layer_checked_pid = None


def numba_available() -> bool:
    return _nb is not None


def _choose_threading_layer() -> None:
    """Use numba's own thread pool in a process forked from the one that imported us.

    numba's default parallel backend here is GNU OpenMP, which is not fork-safe: a child forked
    after its parent ran any OpenMP region (torch does, for most CPU ops) hangs in its first
    parallel region. Lightning's ``ddp_fork`` ranks are such children. The ``workqueue`` layer
    is slower (BENCHMARKS.md) but fork-safe, so it is chosen
    only there, and never over an explicit ``NUMBA_THREADING_LAYER``."""
    global _layer_checked_pid
    pid = os.getpid()
    if _layer_checked_pid == pid:
        return
    _layer_checked_pid = pid
    if pid != _IMPORT_PID and "NUMBA_THREADING_LAYER" not in os.environ:
        _nb.config.THREADING_LAYER = "workqueue"


if _nb is not None:

    @_intrinsic
    def _row_fma(typingctx, xt, col, val, p0, p1, yt, out_at):
        """``yt[out_at : out_at + T] = sum_p val[p] * xt[col[p] * T : col[p] * T + T]`` over
        ``p0 <= p < p1``, with ``T = _TILE`` and the running sum in registers."""
        f32 = _nb.types.float32
        for name, arr in (("xt", xt), ("val", val), ("yt", yt)):
            if not (isinstance(arr, _nb.types.Array) and arr.dtype == f32 and arr.ndim == 1):
                raise _nb.core.errors.TypingError(f"_row_fma: {name} must be a 1-d float32 array, got {arr}")
        if not (isinstance(col, _nb.types.Array) and isinstance(col.dtype, _nb.types.Integer)):
            raise _nb.core.errors.TypingError(f"_row_fma: col must be an integer array, got {col}")
        intp = _nb.types.intp
        sig = _nb.types.void(xt, col, val, intp, intp, yt, intp)

        def codegen(context, builder, signature, args):
            xt_a, col_a, val_a, p0_v, p1_v, yt_a, at_v = args
            xt_d = context.make_array(signature.args[0])(context, builder, xt_a).data
            col_d = context.make_array(signature.args[1])(context, builder, col_a).data
            val_d = context.make_array(signature.args[2])(context, builder, val_a).data
            yt_d = context.make_array(signature.args[5])(context, builder, yt_a).data
            i_t = context.get_value_type(intp)
            v_t = _ir.VectorType(_ir.FloatType(), _LANES)
            splat0 = _ir.Constant(_ir.VectorType(_ir.IntType(32), _LANES), [0] * _LANES)
            zero = _ir.Constant(v_t, [0.0] * _LANES)
            # entry-block allocas: LLVM's mem2reg turns them into registers carried by the loop
            accs = [_cgutils.alloca_once_value(builder, zero) for _ in range(_TILE // _LANES)]
            with _cgutils.for_range_slice(builder, p0_v, p1_v, _ir.Constant(i_t, 1), inc=True) as (p, _):
                j = builder.load(builder.gep(col_d, [p]))
                j = builder.sext(j, i_t) if j.type.width < i_t.width else j
                w = builder.insert_element(_ir.Constant(v_t, _ir.Undefined), builder.load(builder.gep(val_d, [p])),
                                           _ir.Constant(_ir.IntType(32), 0))
                w = builder.shuffle_vector(w, _ir.Constant(v_t, _ir.Undefined), splat0)
                base = builder.mul(j, _ir.Constant(i_t, _TILE))
                for k, acc in enumerate(accs):
                    ptr = builder.gep(xt_d, [builder.add(base, _ir.Constant(i_t, k * _LANES))])
                    xv = builder.load(builder.bitcast(ptr, v_t.as_pointer()), align=4)
                    prod = builder.fmul(w, xv, flags=["fast"])
                    builder.store(builder.fadd(builder.load(acc), prod, flags=["fast"]), acc)
            for k, acc in enumerate(accs):
                ptr = builder.gep(yt_d, [builder.add(at_v, _ir.Constant(i_t, k * _LANES))])
                builder.store(builder.load(acc), builder.bitcast(ptr, v_t.as_pointer()), align=4)

        return sig, codegen

    @_nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
    def _csr_rows_times_x(x, load, crow, col, val, bias, base, y):
        # y[:] = x[:, load] @ W.T (+ bias, a vector, if it has entries) (+ base, y's shape, if it
        # has rows), W given as CSR [nout, len(load)]: only the columns of x that W reads are
        # loaded into a tile, and the sums are added as each output entry is written
        n = x.shape[0]
        nout, u = y.shape[1], load.shape[0]
        with_bias, with_base = bias.shape[0] > 0, base.shape[0] > 0
        T = _TILE
        for b in _nb.prange((n + T - 1) // T):
            s = b * T
            m = min(T, n - s)
            xt = _np.zeros(u * T, dtype=x.dtype)  # the tile, transposed: xt[k * T + r] = x[s + r, load[k]]
            yt = _np.empty(nout * T, dtype=x.dtype)
            for r in range(m):
                for k in range(u):
                    xt[k * T + r] = x[s + r, load[k]]
            for i in range(nout):
                _row_fma(xt, col, val, crow[i], crow[i + 1], yt, i * T)
            for r in range(m):
                for i in range(nout):
                    v = yt[i * T + r]
                    if with_bias:
                        v += bias[i]
                    if with_base:
                        v += base[s + r, i]
                    y[s + r, i] = v


def _get_kernel(torch_threads: int):
    _choose_threading_layer()
    if _nb is None:
        raise RuntimeError("the CPU sparse transform needs numba: pip install numba")
    # numba sizes its pool from the core count and ignores OMP_NUM_THREADS, so without this
    # every torchrun/DDP rank (torch: one thread each) would start one numba thread per core
    # and the ranks would oversubscribe the CPU. Follow torch's setting (thread-local in numba).
    _nb.set_num_threads(max(1, min(torch_threads, _nb.config.NUMBA_NUM_THREADS)))
    return _csr_rows_times_x


class WeightCSR(NamedTuple):
    """``weight * mask`` as CSR over the input columns that hold a kept entry: ``crow``, ``col``
    (positions in ``load``), ``val``, and ``load``: the columns of the input to read (of an input
    holding every column, or only the ``columns`` it was made for)."""
    load: Tensor
    crow: Tensor
    col: Tensor
    val: Tensor


def weight_csr(weight: Tensor, mask: Tensor, columns: Optional[Tensor] = None) -> WeightCSR:
    """:class:`WeightCSR` of ``weight * mask`` (``[out, in]``); ``columns``: the input will hold
    only these of the ``in`` columns, which must include every column with a kept entry."""
    weight = weight.detach()
    used = mask.any(0)
    idx = mask.nonzero()  # row-major order: CSR order
    rows, cols = idx[:, 0], idx[:, 1]
    crow = torch.zeros(weight.size(0) + 1, dtype=torch.long, device=weight.device)
    crow[1:] = torch.bincount(rows, minlength=weight.size(0)).cumsum(0)
    load = used.nonzero().view(-1)
    if columns is not None:
        where = torch.full((weight.size(1),), -1, dtype=torch.long, device=weight.device)
        where[columns] = torch.arange(columns.numel(), device=weight.device)
        load = where.index_select(0, load)
        if bool((load < 0).any()):
            raise ValueError("columns must include every input column with a kept weight entry")
    return WeightCSR(load, crow, (used.cumsum(0) - 1).index_select(0, cols), weight[rows, cols])


def _spmm(x: Tensor, w: WeightCSR, nout: int, bias: Optional[Tensor] = None,
          add: Optional[Tensor] = None, torch_kernel: Optional[bool] = None) -> Tensor:
    """``x[:, w.load] @ W.T (+ bias) (+ add)`` for ``W`` given in CSR form (rows = outputs); ``add``:
    ``[len(x), nout]``. ``torch_kernel`` (default: on CUDA): torch's CSR product (cuSPARSE on a
    GPU); else the numba kernel, which makes the sums as it writes its output."""
    if x.is_cuda if torch_kernel is None else torch_kernel:
        csr = torch.sparse_csr_tensor(w.crow, w.col, w.val, (nout, w.load.numel()), device=x.device)
        out = (csr @ x.index_select(1, w.load).t()).t()
        out = out if bias is None else out + bias
        return out if add is None else out + add
    x = x.detach().contiguous()
    extras = [t for t in (bias, add) if t is not None]
    if any(t.dtype != torch.float32 for t in (x, w.val, *extras)):
        raise TypeError(f"the CPU sparse transform supports float32, got {x.dtype}")
    y = _np.empty((x.size(0), nout), dtype=_np.float32)  # numpy: huge pages for large outputs
    b = _np.empty(0, dtype=_np.float32) if bias is None else bias.detach().contiguous().numpy()
    a = _np.empty((0, nout), dtype=_np.float32) if add is None else add.detach().contiguous().numpy()
    torch_threads = torch.get_num_threads()
    _get_kernel(torch_threads)(x.numpy(), w.load.numpy(), w.crow.numpy(), w.col.numpy(), w.val.contiguous().numpy(),
                               b, a, y)
    # numba's OpenMP threading layer, started by the first parallel call, sets the OpenMP
    # thread count that torch's own CPU kernels follow too (torch.get_num_threads() went from
    # torchrun's 1 to the core count): the ranks then oversubscribed the CPU, and ops such as
    # BatchNorm's reductions rounded differently after the first sparse transform than before
    # it, so a run resumed in a fresh process did not repeat an uninterrupted one bit for bit.
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return torch.from_numpy(y)


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mask, bias, add, columns, csr):
        ctx.save_for_backward(x, weight, mask, columns)
        return _spmm(x, weight_csr(weight, mask, columns) if csr is None else csr, weight.size(0), bias, add)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask, columns = ctx.saved_tensors
        grad_x = grad_w = grad_b = grad_add = None
        if ctx.needs_input_grad[0]:  # grad_x = grad_out @ W_masked[:, columns]: the same kernel on its transpose
            wt, mt = weight.detach().t(), mask.t()
            if columns is not None:
                wt, mt = wt.index_select(0, columns), mt.index_select(0, columns)
            grad_x = _spmm(grad_out, weight_csr(wt, mt), wt.size(0))
        if ctx.needs_input_grad[1]:  # only kept entries get a gradient
            g = grad_out.t() @ x
            if columns is not None:
                g = g.new_zeros(weight.shape).index_copy_(1, columns, g)
            grad_w = g * mask
        if ctx.needs_input_grad[3]:
            grad_b = grad_out.sum(0)
        if ctx.needs_input_grad[4]:
            grad_add = grad_out
        return grad_x, grad_w, None, grad_b, grad_add, None, None


def sparse_linear(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor] = None,
                  add: Optional[Tensor] = None, columns: Optional[Tensor] = None,
                  csr: Optional[WeightCSR] = None) -> Tensor:
    """``x @ (weight * mask).T (+ bias) (+ add)`` computing only the kept entries (differentiable in
    x, weight, bias and add; ``add``: one row per row of ``x``). ``columns``: ``x`` holds only these
    input columns (every column with a kept entry among them). ``csr``: :func:`weight_csr` of the
    same weight, mask and columns, made once for many calls (it is not checked)."""
    width = weight.size(1) if columns is None else columns.numel()
    if x.size(-1) != width:
        raise ValueError(f"x must have {width} columns, got {x.size(-1)}")
    if add is not None and add.shape != (x.size(0), weight.size(0)):
        raise ValueError(f"add must have shape {(x.size(0), weight.size(0))}, got {tuple(add.shape)}")
    return _SparseLinearFn.apply(x, weight, mask, bias, add, columns, csr)


def csr_adjacency(edge_index: Tensor, edge_weight: Optional[Tensor], num_src: int, num_dst: int,
                  dtype: torch.dtype, canonical: Optional[bool] = None) -> Tensor:
    """The edges as a sparse ``[num_dst, num_src]`` CSR matrix of their weights (``None``: 1), for
    a sparse-dense product that sums each target's messages.

    ``canonical`` (default: on CUDA), as cuSPARSE requires it: in each row the columns sorted and
    distinct (edges out of that order are sorted, and a repeated edge becomes one entry of the
    summed weights: the same sum of messages; in order, nothing is copied but the row pointers).
    Otherwise (torch's CPU kernel, MKL's or its own loop, sums a row's entries in any order,
    repeated ones too) only edges out of target order are sorted (stably, by target alone)."""
    dst, src = edge_index[1], edge_index[0]
    w = edge_weight.to(dtype) if edge_weight is not None else torch.ones(src.numel(), dtype=dtype,
                                                                        device=src.device)
    if src.is_cuda if canonical is None else canonical:
        key = dst * num_src + src
        step = key[1:] - key[:-1]
        unsorted, repeated = torch.stack([(step < 0).any(), (step == 0).any()]).tolist()  # (one device read)
        if unsorted or repeated:  # (in order, a repeated edge follows its first: merged without a sort)
            key, inv = (torch.unique if unsorted else torch.unique_consecutive)(key, return_inverse=True)
            w = w.new_zeros(key.numel()).index_add_(0, inv, w)
            dst = torch.div(key, num_src, rounding_mode="floor")
            src = key - dst * num_src
    elif bool((dst[1:] < dst[:-1]).any()):
        order = torch.argsort(dst, stable=True)
        dst, src, w = dst.index_select(0, order), src.index_select(0, order), w.index_select(0, order)
    crow = torch.searchsorted(dst, torch.arange(num_dst + 1, device=dst.device))
    with warnings.catch_warnings():  # (torch says once that its CSR tensors are in beta)
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, src, w, (num_dst, num_src), check_invariants=False)
