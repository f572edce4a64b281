"""A linear map whose weight entries are pruned by the Unifews rule."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice
from ..distributed import world
from ..sparsify import check_threshold, column_sq_sums, weight_keep_mask
from ..sparsify.spmm import WeightCSR, numba_available, sparse_linear, weight_csr

MASK_MODES = ("recompute", "refine", "keep", "dense")
BACKENDS = ("auto", "dense", "sparse")

# Density below which the sparse kernel beats dense on each device type, measured by
# benchmarks/layer_speed.py and a shape sweep (the figures: BENCHMARKS.md). On CUDA torch's CSR
# matmul never beat the dense GEMM on the H100 measured: no crossover, dense-with-mask in auto.
SPARSE_CROSSOVER = {"cpu": 0.3, "cuda": 0.0}


class UnifewsLinear(nn.Module):
    r"""``y = x W_m^T + b`` with ``W_m = W \odot M`` and ``M`` the Unifews weight mask.

    ``M[i, j] = 1`` iff ``|W[i, j]| * ||X[:, j]||_2 >= thr_w * ||c||_2 / F_in`` (``c`` the input
    column norms; each column's threshold capped just below ``max|W|``). The column norms are
    summed over DDP ranks before the mask is computed, so every rank applies the same mask.

    Args:
        in_features, out_features, bias: as :class:`torch.nn.Linear`.
        thr_w: relative weight threshold, ``>= 0``; ``0`` disables pruning.
        mask_mode: ``"recompute"`` the mask on every training forward; ``"refine"``: recompute it
            and AND it with the current one, so pruned entries stay pruned; ``"keep"`` the last
            one (computed once if none yet); or ``"dense"`` (no pruning).
        backend: ``"sparse"`` computes only the kept entries, ``"dense"`` multiplies by the
            masked dense weight, ``"auto"`` picks sparse below the measured density crossover.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, thr_w: float = 0.0,
                 mask_mode: str = "recompute", backend: str = "auto"):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.register_buffer("weight_mask", torch.ones(out_features, in_features, dtype=torch.bool))
        self.register_buffer("mask_ready", torch.zeros((), dtype=torch.bool))
        self._nnz_cache = None  # (mask version, mask address, kept entries): host count, for auto's choice
        self._ready = False  # host copy of mask_ready (the buffer is for checkpoints): read without a sync
        self._nnz: Optional[Tensor] = None  # kept entries as a device tensor, counted at each mask update
        self.register_load_state_dict_post_hook(_mask_loaded)
        self.thr_w = thr_w
        self.mask_mode = mask_mode
        self.backend = backend
        self.last_backend = "dense"
        self.last_rows = 0
        self._premasked: Optional[tuple] = None  # (weight version, W * M) made by premask_weights
        self._used: Optional[tuple] = None  # (mask version, columns with a kept entry): used_inputs
        self._csr: Optional[tuple] = None  # (weight and mask versions, columns, WeightCSR): the sparse backend's
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        self.invalidate_mask()

    def invalidate_mask(self) -> None:
        """Forget the mask: the next forward computes a new one."""
        self.weight_mask.fill_(True)
        self.mask_ready.fill_(False)
        self._ready, self._nnz, self._premasked, self._used, self._csr = False, None, None, None, None

    @property
    def thr_w(self) -> float:
        return self._thr_w

    @thr_w.setter
    def thr_w(self, value: float) -> None:
        self._thr_w = check_threshold("thr_w", value)

    def get_extra_state(self) -> dict:  # the threshold checkpoints with the mask it made
        return {"thr_w": self.thr_w}

    def set_extra_state(self, state: dict) -> None:
        self.thr_w = state["thr_w"]

    @property
    def mask_mode(self) -> str:
        return self._mask_mode

    @mask_mode.setter
    def mask_mode(self, value: str) -> None:
        check_choice("mask_mode", value, MASK_MODES)
        self._mask_mode = value

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        check_choice("backend", value, BACKENDS)
        self._backend = value

    @property
    def pruning(self) -> bool:
        return self.thr_w > 0 and self.mask_mode != "dense"

    @torch.no_grad()
    def update_mask(self, x: Tensor, sync: bool = True, refine: bool = False) -> None:
        """Recompute the mask from input ``x`` (column norms all-reduced across ranks if ``sync``);
        with ``refine``, entries already pruned stay pruned."""
        sq = column_sq_sums(x.detach()).to(self.weight.dtype)
        if sync and world()[0] > 1:
            dist.all_reduce(sq)
        mask = weight_keep_mask(self.weight, sq.sqrt(), self.thr_w)
        if refine and self._ready:
            mask &= self.weight_mask
        self.weight_mask.copy_(mask)
        self._premasked = None
        if not self._ready:  # the buffer follows the host flag (one op saved on every later step)
            self.mask_ready.fill_(True)
        self._ready, self._nnz = True, mask.sum(dtype=torch.float64)

    def _mask_nnz(self) -> int:
        """Kept entries, counted once per mask version (a device sync on GPU): the tensor's
        version counter moves on every in-place change (update, load_state_dict, copy_)."""
        version = self.weight_mask._version
        key = (version, self.weight_mask.data_ptr())
        if self._nnz_cache is None or self._nnz_cache[:2] != key:
            self._nnz_cache = (version, self.weight_mask.data_ptr(), int(self.weight_mask.sum()))
        return self._nnz_cache[2]

    def weight_density(self) -> float:
        if not self.pruning:
            return 1.0
        return self._mask_nnz() / self.weight_mask.numel()

    def weight_nnz(self) -> Union[int, Tensor]:
        """Kept weight entries: an int, or a 0-dim device tensor while pruning (no device read)."""
        if not self.pruning:
            return self.weight.numel()
        return self._nnz if self._nnz is not None else self._mask_nnz()

    def _choose_backend(self, x: Tensor) -> str:
        if self.backend != "auto":
            return self.backend
        if x.device.type == "cpu" and (not numba_available() or x.dtype != torch.float32):
            return "dense"
        crossover = SPARSE_CROSSOVER.get(x.device.type, 0.0)
        return "sparse" if crossover > 0 and self.weight_density() < crossover else "dense"

    def used_inputs(self) -> Optional[Tensor]:
        """The input columns that hold a kept weight entry, the only ones the map reads (the rule's
        per-column threshold empties whole columns: a caller can then compute those alone, see
        ``columns`` in :meth:`forward`); ``None`` when every column is read or the map does not
        prune (or has no mask yet). One device read per mask version."""
        if not self.pruning or not self._ready:
            return None
        key = (self.weight_mask._version, self.weight_mask.data_ptr())
        if self._used is None or self._used[0] != key:
            cols = self.weight_mask.any(0).nonzero().view(-1)
            self._used = (key, cols if 0 < cols.numel() < self.in_features else None)
        return self._used[1]

    def forward(self, x: Tensor, add: Optional[Tensor] = None, columns: Optional[Tensor] = None,
                with_bias: bool = True) -> Tensor:
        """``x W_m^T + b``, plus ``add`` if given (fused into the matmul where it can be: one
        kernel, as a conv's sum of two maps needs). ``columns``: ``x`` holds only these input
        columns, among them every column with a kept entry (:meth:`used_inputs`): the mask must
        be ready (evaluation, or a mask that is kept). ``with_bias=False``: ``x W_m^T`` alone, for
        a conv that adds the bias after propagating the product (GIN)."""
        bias = self.bias if with_bias else None
        width = self.in_features if columns is None else columns.numel()
        if x.size(-1) != width:
            raise ValueError(f"input has {x.size(-1)} features, this layer expects {width}")
        self.last_rows = x.numel() // width
        if not self.pruning:
            if columns is not None:
                raise ValueError("columns need a pruned map (every column of a dense one is read)")
            self.last_backend = "dense"
            return self._affine(x, self.weight, bias, add)
        if self._recomputes_mask() or not self._ready:
            if columns is not None:
                raise ValueError("columns need the map's mask ready and kept (it is made from the whole input)")
            if self._recomputes_mask():
                self.update_mask(x, refine=self.mask_mode == "refine")
            else:  # evaluation of a never-trained pruned layer
                self.update_mask(x, sync=False)
        backend = self._choose_backend(x)
        self.last_backend = backend
        if backend == "sparse":
            shape = (*x.shape[:-1], self.out_features)
            fused = add is not None and add.shape == shape  # (else broadcast after)
            out = sparse_linear(
                x.reshape(-1, width),
                self.weight,
                self.weight_mask,
                bias,
                add.reshape(-1, self.out_features) if fused else None,
                columns,
                self._weight_csr(columns),
            ).reshape(shape)
            return out if add is None or fused else out + add
        weight = self._masked_weight()
        return self._affine(x, weight if columns is None else weight.index_select(1, columns), bias, add)

    def _weight_csr(self, columns: Optional[Tensor]) -> WeightCSR:
        """The sparse backend's CSR of the masked weight. With no gradient taken (evaluation,
        inference: many batches of one weight) made once per weight, mask and columns, as their
        version counters tell (a change through ``.data`` is not counted); in training, every
        forward."""
        w, m = self.weight, self.weight_mask
        if torch.is_grad_enabled():
            self._csr = None
            return weight_csr(w, m, columns)
        key = (w._version, w.data_ptr(), m._version, m.data_ptr())
        if self._csr is None or self._csr[0] != key or self._csr[1] is not columns:
            self._csr = (key, columns, weight_csr(w, m, columns))
        return self._csr[2]

    def _masked_weight(self) -> Tensor:
        pre, self._premasked = self._premasked, None  # used once
        if pre is not None and pre[0] == self.weight._version:
            return pre[1]
        return self.weight * self.weight_mask

    def mask_fixed_dense(self) -> bool:
        """Whether the next forward multiplies the weight by the mask it has now: pruning, a
        mask ready and not recomputed, and the dense backend (as ``auto`` picks for the
        weight's device and dtype)."""
        return (
            self.pruning
            and self._ready
            and not self._recomputes_mask()
            and self._choose_backend(self.weight) == "dense"
        )

    def _recomputes_mask(self) -> bool:
        """Whether a forward (of a pruning map) computes its mask from its input first."""
        return self.training and (self.mask_mode in ("recompute", "refine") or not self._ready)

    def _affine(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], add: Optional[Tensor]) -> Tensor:
        if add is not None and bias is None and x.dim() == 2 and add.shape == (x.size(0), self.out_features):
            return torch.addmm(add, x, weight.t())
        out = F.linear(x, weight, bias)
        return out if add is None else out + add

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, thr_w={self.thr_w}, mask_mode={self.mask_mode}"
        )


def _mask_loaded(module: UnifewsLinear, incompatible_keys) -> None:
    """After ``load_state_dict``: the host copies follow the loaded buffers (one read per load)."""
    module._ready = bool(module.mask_ready)
    module._nnz = module.weight_mask.sum(dtype=torch.float64) if module._ready else None


def premask_weights(layers) -> None:
    """Masked weights ``W * M`` of every map in ``layers`` whose next forward multiplies by a
    fixed mask (:meth:`UnifewsLinear.mask_fixed_dense`), in one foreach op: one kernel launch on
    a GPU for all of them instead of one per map (backward as before, one per map). Each map's
    next forward takes its own, once, if its weight has not changed since; a mask update drops
    it. Call :func:`drop_premasked` when the forward is done."""
    layers = list(layers)
    drop_premasked(layers)
    lins = [m for m in layers if m.mask_fixed_dense()]
    if len(lins) < 2:
        return
    masked = torch._foreach_mul([m.weight for m in lins], [m.weight_mask for m in lins])
    for m, w in zip(lins, masked):
        m._premasked = (m.weight._version, w)


def drop_premasked(layers) -> None:
    """Forget what :func:`premask_weights` made and a forward did not use."""
    for m in layers:
        m._premasked = None
