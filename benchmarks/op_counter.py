"""Count the aten ops a piece of code dispatches, and those that make the host wait for a GPU.

On a GPU every aten op is at least one kernel launch (~10-20 us of host time), and some ops
block the host until the device has caught up. Both are exact on a CPU: a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every op that reaches the
dispatcher, so the counts have no noise and need no GPU.

Sync ops, counted as a GPU would see them whatever device the tensors are on:
``_local_scalar_dense`` (``.item()``, ``int(t)``, ``bool(t)``, ``if t.any()``), ``nonzero``,
``unique`` (all variants), ``masked_select``, ``index`` / ``index_put_`` with a boolean mask,
``repeat_interleave`` without ``output_size``, ``bincount``, ``equal``, and a tensor copied to
the host (``.tolist()``, ``.cpu()``, ``.numpy()``: patched while counting, as on a CPU tensor
they dispatch nothing).

Some tensors live on the host in a GPU run too: a loader's seed nodes (PyG keeps sampler inputs
on the CPU), an optimizer's step counts, tensors made from Python numbers. Reading those is no
sync. They are marked (:meth:`OpCounter.host`), and so is every op's output whose tensor
inputs are all marked.
"""
from __future__ import annotations

import weakref
from collections import Counter
from typing import Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNC_PACKETS = {"_local_scalar_dense", "nonzero", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                 "unique_dim_consecutive", "masked_select", "bincount", "equal"}
# ops that dispatch nothing of their own meaning: views and metadata (no kernel on a GPU)
_FREE = {"view", "_unsafe_view", "reshape", "alias", "detach", "t", "expand", "unsqueeze", "squeeze", "select",
         "slice", "as_strided", "permute", "transpose", "split", "split_with_sizes", "unbind", "narrow",
         "size", "stride", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size",
         "_reshape_alias", "lift_fresh", "set_", "_has_compatible_shallow_copy_type", "result_type",
         "resolve_conj", "resolve_neg", "_conj", "_neg_view", "view_as_real", "view_as_complex",
         # profiler annotations (Lightning's optimizer step): no kernel
         "_record_function_enter", "_record_function_enter_new", "_record_function_exit"}


def _is_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def is_sync(func, args, kwargs) -> bool:
    name = func._overloadpacket.__name__
    if name in _SYNC_PACKETS:
        return True
    if name in ("index", "_index_put_impl_", "index_put", "index_put_"):
        return _is_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if name == "repeat_interleave":  # the Tensor-repeats overloads size their output on the host
        return func._overloadname != "self_int" and kwargs.get("output_size") is None
    return False


class OpCounter(TorchDispatchMode):
    """Counts ops (``ops``, free views excluded) and host syncs (``syncs``) under a phase label.

    Use as a context manager; set :attr:`phase` to attribute what follows to another phase.
    ``by_phase[phase]`` holds ``{"ops": n, "syncs": n}``; :attr:`sync_ops` names the syncs.
    """

    def __init__(self, phase: str = "all"):
        super().__init__()
        self.phase = phase
        self.active = True  # False: pass ops through uncounted
        self.by_phase: Dict[str, Counter] = {}
        self.sync_ops: Counter = Counter()
        self.op_names: Counter = Counter()
        self._patched = []
        self._host = {}  # id -> weakref of tensors that live on the host in a GPU run

    def host(self, *tensors) -> None:
        """Mark tensors that live on the host in a GPU run: reading them is no device sync."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._host[id(t)] = weakref.ref(t)

    def is_host(self, t) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def host_tensors(self, optimizer) -> None:
        """Tensors that live on the host on a GPU too: an optimizer's step counts (unless fused or
        capturable), so reading them is no device sync."""
        for state in optimizer.state.values():
            step = state.get("step") if isinstance(state, dict) else None
            if isinstance(step, torch.Tensor) and step.dim() == 0 and not step.is_cuda:
                self.host(step)

    def _add(self, what: str, name: str) -> None:
        if not self.active:
            return
        c = self.by_phase.setdefault(self.phase, Counter())
        c[what] += 1
        if what == "syncs":
            self.sync_ops[f"{self.phase}:{name}"] += 1
        else:
            self.op_names[f"{self.phase}:{name}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        for a in list(args) + list(kwargs.values()):  # index lists
            if isinstance(a, (list, tuple)):
                tensors += [t for t in a if isinstance(t, torch.Tensor)]
        on_host = name in ("lift_fresh", "lift_fresh_copy") or (
            bool(tensors) and all(self.is_host(t) for t in tensors))
        if name not in _FREE:
            self._add("ops", name)
            if is_sync(func, args, kwargs) and not on_host:
                self._add("syncs", name)
        out = func(*args, **kwargs)
        if on_host:
            for t in out if isinstance(out, (list, tuple)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.host(t)
        return out

    def __enter__(self):
        counter = self
        for meth in ("tolist", "cpu", "numpy"):
            orig = getattr(torch.Tensor, meth)

            def wrapped(t, *a, _orig=orig, _meth=meth, **k):
                if not counter.is_host(t):
                    counter._add("syncs", _meth)
                out = _orig(t, *a, **k)
                if isinstance(out, torch.Tensor):
                    counter.host(out)
                return out
            setattr(torch.Tensor, meth, wrapped)
            self._patched.append((meth, orig))
        return super().__enter__()

    def __exit__(self, *exc):
        for meth, orig in self._patched:
            setattr(torch.Tensor, meth, orig)
        self._patched = []
        return super().__exit__(*exc)

    def counts(self, phase: Optional[str] = None) -> Dict[str, int]:
        if phase is None:
            total = Counter()
            for c in self.by_phase.values():
                total.update(c)
            return {"ops": total["ops"], "syncs": total["syncs"]}
        c = self.by_phase.get(phase, Counter())
        return {"ops": c["ops"], "syncs": c["syncs"]}


def count(fn, *args, **kwargs):
    """``(result, {"ops": n, "syncs": n}, counter)`` of one call."""
    with OpCounter() as c:
        out = fn(*args, **kwargs)
    return out, c.counts(), c
