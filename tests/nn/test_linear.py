import os
import subprocess
import sys

import pytest
import torch

from close import assert_close
from unifews_dist.nn import UnifewsLinear
from unifews_dist.sparsify import weight_keep_mask
from unifews_dist.sparsify.spmm import numba_available, sparse_linear

# The CPU sparse kernel is float32: its results are compared with the masked dense product's
# relative to the size of what they compute (close.py), never with an absolute tolerance


def _same_with_grads(y, y2, pairs):
    """``y`` equals ``y2``, and after one backward of each the gradients of each pair match."""
    assert_close(y, y2, rtol=1e-5)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    for a, b in pairs:
        assert_close(a.grad, b.grad, rtol=1e-5)


@pytest.mark.skipif(not numba_available(), reason="numba missing")
@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_sparse_kernel_equals_masked_dense_with_gradients(density):
    torch.manual_seed(0)
    x = torch.randn(150, 33, requires_grad=True)  # not a multiple of the 32-row tile
    w = torch.randn(17, 33, requires_grad=True)
    mask = torch.rand(17, 33) < density
    y = sparse_linear(x, w, mask)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y2 = x2 @ (w2 * mask).t()
    assert_close(y, y2, rtol=1e-5)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    assert_close(x.grad, x2.grad, rtol=1e-5)
    assert_close(w.grad, w2.grad, rtol=1e-5)
    assert (w.grad[~mask] == 0).all()


@pytest.mark.skipif(not numba_available(), reason="numba missing")
def test_sparse_kernel_adds_bias_and_a_term_as_it_writes():
    """``x W_m^T + b + add`` in one kernel (a conv's sum of two maps), gradients to all four."""
    torch.manual_seed(0)
    x, w = torch.randn(70, 33, requires_grad=True), torch.randn(17, 33, requires_grad=True)
    b, add = torch.randn(17, requires_grad=True), torch.randn(70, 17, requires_grad=True)
    mask = torch.rand(17, 33) < 0.2
    leaves = (x, w, b, add)
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    y = sparse_linear(x, w, mask, b, add)
    y2 = twins[0] @ (twins[1] * mask).t() + twins[2] + twins[3]
    assert_close(y, y2, rtol=1e-5)
    assert_close(sparse_linear(x, w, mask, b), y2 - twins[3], rtol=1e-5)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    for t, u in zip(leaves, twins):
        assert_close(t.grad, u.grad, rtol=1e-5)
    with pytest.raises(ValueError, match="add must have shape"):
        sparse_linear(x, w, mask, b, add[:5])


@pytest.mark.gpu
def test_cuda_sparse_transform_equals_masked_dense_with_gradients():
    torch.manual_seed(0)
    x = torch.randn(150, 33, device="cuda", requires_grad=True)
    w = torch.randn(17, 33, device="cuda", requires_grad=True)
    mask = torch.rand(17, 33, device="cuda") < 0.1
    y = sparse_linear(x, w, mask)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y2 = x2 @ (w2 * mask).t()
    _same_with_grads(y, y2, [(x, x2), (w, w2)])
    lin = UnifewsLinear(33, 17, thr_w=1.0, backend="sparse").cuda()
    lin(x.detach())
    assert lin.last_backend == "sparse" and lin.weight_mask.is_cuda


def test_linear_modes_and_backends():
    torch.manual_seed(0)
    lin = UnifewsLinear(20, 10, thr_w=1.0)
    x = torch.randn(64, 20)
    dense = UnifewsLinear(20, 10)
    dense.load_state_dict(lin.state_dict())
    assert dense.thr_w == 1.0  # the threshold is state: it checkpoints with the mask
    dense.thr_w = 0.0
    y = lin(x)
    mask = weight_keep_mask(lin.weight, x.norm(dim=0), 1.0)
    assert torch.equal(lin.weight_mask, mask)
    assert_close(y, x @ (lin.weight * mask).t() + lin.bias, rtol=1e-5)
    for backend in ("dense", "sparse") if numba_available() else ("dense",):
        lin.backend = backend
        assert_close(lin(x), y, rtol=1e-5)
        assert lin.last_backend == backend
    # keep: a new input does not change the mask; recompute does
    lin.mask_mode = "keep"
    lin(x * torch.linspace(0.01, 5, 20))
    assert torch.equal(lin.weight_mask, mask)
    lin.mask_mode = "recompute"
    lin(x * torch.linspace(0.01, 5, 20))
    scaled = lin.weight_mask.clone()
    assert not torch.equal(scaled, mask)
    # refine: the new rule AND the mask already there; nothing pruned comes back
    lin.mask_mode = "refine"
    lin.thr_w = 1.3
    lin(x * torch.linspace(5, 0.01, 20))
    new = weight_keep_mask(lin.weight, (x * torch.linspace(5, 0.01, 20)).norm(dim=0), 1.3)
    assert torch.equal(lin.weight_mask, new & scaled)
    assert not torch.equal(lin.weight_mask, new) and not torch.equal(lin.weight_mask, scaled)
    lin.thr_w = 1.0
    lin.mask_mode = "dense"
    assert_close(lin(x), dense(x), rtol=1e-5)
    assert lin.weight_density() == 1.0


@pytest.mark.skipif(not numba_available(), reason="numba missing")
def test_auto_backend_follows_the_cpu_crossover():
    from unifews_dist.nn.linear import SPARSE_CROSSOVER
    torch.manual_seed(0)
    lin = UnifewsLinear(40, 40, thr_w=1.0, mask_mode="keep")
    x = torch.randn(64, 40)
    lin(x)  # builds a mask; then set densities either side of the crossover by hand
    for density, expected in ((SPARSE_CROSSOVER["cpu"] - 0.05, "sparse"), (SPARSE_CROSSOVER["cpu"] + 0.05, "dense")):
        lin.weight_mask.copy_(torch.rand(40, 40) < density)
        y = lin(x)
        assert lin.last_backend == expected, (density, lin.weight_density())
        assert_close(y, x @ (lin.weight * lin.weight_mask).t() + lin.bias, rtol=1e-5)


def test_mask_is_a_checkpointed_buffer():
    lin = UnifewsLinear(8, 4, thr_w=1.5)
    lin(torch.randn(32, 8))
    sd = lin.state_dict()
    assert "weight_mask" in sd and sd["mask_ready"]
    other = UnifewsLinear(8, 4, thr_w=0.2, mask_mode="keep")
    other.load_state_dict(sd)
    assert torch.equal(other.weight_mask, lin.weight_mask) and other.thr_w == 1.5


def test_linear_bad_arguments():
    with pytest.raises(ValueError, match="mask_mode must be one of"):
        UnifewsLinear(3, 3, mask_mode="sometimes")
    with pytest.raises(ValueError, match="backend must be one of .* got 'gpu'"):
        UnifewsLinear(3, 3, backend="gpu")
    with pytest.raises(ValueError, match="thr_w must be a finite number >= 0, got -2"):
        UnifewsLinear(3, 3, thr_w=-2)


FORK_SCRIPT = r"""
import os, torch
from unifews_dist.sparsify.spmm import sparse_linear, numba_available
x, w = torch.randn(1000, 32), torch.randn(16, 32)
m = torch.rand(16, 32) > 0.5
expected = x @ (w * m).t()
(torch.randn(1500, 1500) @ torch.randn(1500, 1500)).sum()  # the parent runs OpenMP regions
pid = os.fork()
if pid == 0:  # (no torch GEMM here: MKL's own OpenMP region would hang a forked child too)
    ok = float((sparse_linear(x, w, m) - expected).abs().max()) < 1e-4
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or not numba_available(), reason="needs fork and numba")
def test_sparse_kernel_runs_in_a_child_forked_after_openmp_use():
    """ddp_fork ranks are forked after torch used OpenMP; numba's OpenMP layer hung there."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT], env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(not numba_available(), reason="numba missing")
def test_sparse_kernel_uses_no_more_threads_than_torch():
    """torchrun gives each rank one torch thread; numba's pool must not take every core anyway."""
    import numba

    before = torch.get_num_threads()
    x, w = torch.randn(64, 16), torch.randn(8, 16)
    try:
        torch.set_num_threads(1)
        sparse_linear(x, w, torch.rand(8, 16) < 0.3)
        assert numba.get_num_threads() == 1
        torch.set_num_threads(numba.config.NUMBA_NUM_THREADS + 5)  # more than numba's pool: capped
        sparse_linear(x, w, torch.rand(8, 16) < 0.3)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        torch.set_num_threads(before)


THREADS_SCRIPT = """
import torch
from unifews_dist.sparsify.spmm import sparse_linear
before = torch.get_num_threads()
sparse_linear(torch.randn(64, 16), torch.randn(8, 16), torch.rand(8, 16) < 0.3)
print(before, torch.get_num_threads())
"""


@pytest.mark.skipif(not numba_available(), reason="numba missing")
def test_sparse_kernel_leaves_torchs_thread_count_alone():
    """numba's OpenMP layer, started by the first sparse transform, set torch's thread count to
    the core count (1 -> 2 under torchrun's OMP_NUM_THREADS=1): ranks oversubscribed the CPU and
    a resumed run rounded differently from an uninterrupted one. A fresh process: numba starts
    its layer once per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "1"]


def _pruned_sage_stack():
    from unifews_dist.nn import UnifewsGNN
    torch.manual_seed(0)
    model = UnifewsGNN("sage", 16, 32, 5, num_layers=3, thr_a=0.5, thr_w=1.0, dropout=0.0, weight_backend="dense")
    x = torch.randn(60, 16)
    ei = torch.randint(0, 60, (2, 300))
    model(x, ei)  # masks made
    for lin in model.weight_layers():
        lin.mask_mode = "keep"
    return model, x, ei


def test_premasked_weights_compute_what_each_map_does_alone(monkeypatch):
    """The stack applies every fixed mask in one foreach op: same outputs and gradients as each
    map multiplying its own, and pruned entries get no gradient."""
    import unifews_dist.nn.models.gnn as gnn
    model, x, ei = _pruned_sage_stack()
    assert all(lin.mask_fixed_dense() for lin in model.weight_layers())

    def run(premask):
        model.zero_grad()
        with monkeypatch.context() as m:
            if not premask:
                m.setattr(gnn, "premask_weights", lambda layers: None)
            out = model(x, ei)
        out.square().sum().backward()
        return out, [lin.weight.grad.clone() for lin in model.weight_layers()]

    out_f, grads_f = run(True)
    out_s, grads_s = run(False)
    assert_close(out_f, out_s, rtol=1e-5)
    for gf, gs, lin in zip(grads_f, grads_s, model.weight_layers()):
        assert_close(gf, gs, rtol=1e-5)
        assert (gf[~lin.weight_mask] == 0).all()
    assert all(lin._premasked is None for lin in model.weight_layers())  # nothing left behind


def test_premasked_weight_is_one_op_and_never_stale():
    from op_counter import OpCounter
    from unifews_dist.nn.linear import premask_weights
    model, x, ei = _pruned_sage_stack()
    lins = model.weight_layers()
    with OpCounter() as c:
        premask_weights(lins)
    assert c.op_names and dict(c.op_names) == {"all:_foreach_mul": 1}
    lin = lins[0]
    with torch.no_grad():
        lin.weight.add_(1.0)  # the weight changed after the masked copy was made: not used
    xin = torch.randn(4, lin.in_features)
    assert_close(lin(xin), xin @ (lin.weight * lin.weight_mask).t() + lin.bias, rtol=1e-5)
    premask_weights(lins)
    lins[1].update_mask(torch.randn(7, lins[1].in_features) * 5)  # a new mask: the old copy is dropped
    xin = torch.randn(4, lins[1].in_features)
    assert_close(lins[1](xin), xin @ (lins[1].weight * lins[1].weight_mask).t(), rtol=1e-5)
    lins[1].mask_mode = "recompute"  # a map that recomputes its mask gets no copy
    premask_weights(lins)
    assert lins[1]._premasked is None and lins[0]._premasked is not None


def test_cached_constants_are_what_they_stand_for():
    from unifews_dist.nn.constants import ones, slot_ids
    for n in (3, 5000, 10):  # grows, then slices
        assert torch.equal(ones(n, "cpu"), torch.ones(n))
        ids = slot_ids(n, "cpu")
        assert ids.numel() == n and ids[0] == torch.iinfo(torch.long).max
        assert torch.equal(ids[1:], torch.arange(1, n))
        r = torch.arange(n)
        assert torch.equal(slot_ids(n, "cpu") <= 2, (r >= 1) & (r <= 2))  # slot 0 never set


def test_a_graph_sized_constant_is_not_kept(monkeypatch):
    """Above MAX_CACHED elements (a whole graph's edges in layer-wise inference) the tensor is the
    caller's alone: nothing graph-sized stays in the cache for the life of the process."""
    from unifews_dist.nn import constants
    monkeypatch.setattr(constants, "MAX_CACHED", 1000)
    monkeypatch.setattr(constants, "_CACHE", {})
    small = constants.ones(600, "cpu")
    big = constants.ones(5000, "cpu")
    assert torch.equal(big, torch.ones(5000)) and big.untyped_storage().nbytes() == 5000 * 4
    assert [t.numel() for t in constants._CACHE.values()] == [1200]  # the small one's (doubled), not grown
    assert constants.ones(600, "cpu").data_ptr() == small.data_ptr()


@pytest.mark.skipif(not numba_available(), reason="numba missing")
@pytest.mark.parametrize("given", ["all", "columns"])
def test_sparse_kernel_reads_only_columns_with_kept_entries(given):
    """Whole columns pruned (as the weight rule's per-column threshold does): the kernel loads
    only the columns with a kept entry, from an input of every column or of ``columns`` alone
    (a superset of those), with the gradients of the masked dense product."""
    torch.manual_seed(0)
    x_all, w = torch.randn(70, 40), torch.randn(9, 40, requires_grad=True)
    mask = torch.rand(9, 40) < 0.4
    mask[:, ::3] = False  # every third column read by no output
    cols = torch.arange(40)[mask.any(0) | (torch.arange(40) % 6 == 0)]  # the read ones and some more
    x = (x_all if given == "all" else x_all[:, cols]).clone().requires_grad_()
    y = sparse_linear(x, w, mask, columns=None if given == "all" else cols)
    w2 = w.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    full = x2 if given == "all" else torch.zeros(70, 40).index_copy(1, cols, x2)
    y2 = full @ (w2 * mask).t()
    _same_with_grads(y, y2, [(x, x2), (w, w2)])
    with pytest.raises(ValueError, match="must include every input column"):
        sparse_linear(x_all[:, 1:3], w, mask, columns=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="x must have 3 columns"):
        sparse_linear(x_all, w, mask, columns=torch.tensor([1, 2, 4]))


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_a_map_given_only_the_columns_it_reads_computes_the_same(backend):
    """``used_inputs``: the columns with a kept entry, ``None`` when all are read or the map
    does not prune; ``forward(x[:, cols], columns=cols)`` equals ``forward(x)``; the sparse
    backend's CSR is made once for many evaluation batches, again after a weight change."""
    if backend == "sparse" and not numba_available():
        pytest.skip("numba missing")
    torch.manual_seed(0)
    lin = UnifewsLinear(40, 9, thr_w=1.5, backend=backend, mask_mode="keep")
    x = torch.randn(64, 40)
    x[:, 5:15] *= 0.01  # small columns: their thresholds reach the cap, pruned whole
    assert lin.used_inputs() is None  # no mask yet
    lin.train()
    lin(x)
    lin.eval()
    cols = lin.used_inputs()
    assert cols is not None and 0 < cols.numel() < 40
    assert torch.equal(cols, lin.weight_mask.any(0).nonzero().view(-1))
    assert lin.used_inputs() is cols  # (one read per mask version)
    add = torch.randn(64, 9)
    with torch.no_grad():
        full = lin(x, add=add)
        part = lin(x[:, cols], add=add, columns=cols)
        assert_close(part, full, rtol=1e-5)
        if backend == "sparse":
            made = lin._csr[2]
            lin(x[:, cols], add=add, columns=cols)
            assert lin._csr[2] is made
            lin.weight.mul_(2)
            assert_close(lin(x[:, cols], columns=cols), lin(x), rtol=1e-5)
            assert lin._csr[2] is not made
    with pytest.raises(ValueError, match="expects 40"):
        lin(x[:, cols])
    dense = UnifewsLinear(40, 9)
    assert dense.used_inputs() is None
    with pytest.raises(ValueError, match="need a pruned map"):
        dense(x[:, cols], columns=cols)


def test_the_cuda_sparse_kernel_runs_on_the_cpu():
    """The sparse transform's CUDA branch (torch's CSR product) asked for on the CPU equals the
    numba kernel's, bias and added rows included."""
    from unifews_dist.sparsify.spmm import _spmm, weight_csr

    torch.manual_seed(0)
    w, x = torch.randn(24, 40), torch.randn(50, 40)
    mask = torch.rand(24, 40) < 0.2
    mask[:, 5:9] = False  # input columns no kept entry reads
    b, add = torch.randn(24), torch.randn(50, 24)
    csr = weight_csr(w, mask)
    numba = _spmm(x, csr, 24, b, add, torch_kernel=False)
    cusparse_path = _spmm(x, csr, 24, b, add, torch_kernel=True)
    assert_close(cusparse_path, numba, rtol=1e-5)
    assert_close(numba, x @ (w * mask).t() + b + add, rtol=1e-5)
