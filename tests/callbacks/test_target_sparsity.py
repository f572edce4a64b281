import math

import pytest

from unifews_dist.callbacks import SparsitySchedule, TargetSparsity
from unifews_dist.callbacks.target_sparsity import control_step

from cb_helpers import Recorder, make, trainer


def test_control_step_moves_towards_target():
    assert control_step(1.0, 0.9, 0.5, 2.0, 1e-3, 1e3) == pytest.approx(math.exp(0.8))  # too dense: raise
    assert control_step(1.0, 0.5, 0.9, 2.0, 1e-3, 1e3) == pytest.approx(math.exp(-0.8))  # too sparse: lower
    assert control_step(900.0, 0.9, 0.0, 5.0, 1e-3, 1e3) == 1e3  # clipped


@pytest.mark.parametrize("kw,pattern", [
    (dict(edge_sparsity=1.0), "edge_sparsity must be in"),
    (dict(weight_sparsity=[0.5, -0.1]), "weight_sparsity must be in"),
    (dict(edge_sparsity=None, weight_sparsity=None), "needs edge_sparsity or weight_sparsity"),
    (dict(gain=0), "gain"),
    (dict(update_every_n_steps=0), "update_every_n_steps"),
    (dict(min_thr=2.0, max_thr=1.0), "min_thr < max_thr"),
])
def test_bad_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        TargetSparsity(**kw)


def test_converges_within_30_steps(tmp_path):
    """SAGE, 2 layers, synthetic-tiny: from thresholds 0.5 to 90% edge and 90% weight sparsity
    per layer. Sampled batches differ, so single steps scatter by a few points around the target."""
    model, dm = make(lock_target_edges="never")
    rec = Recorder()
    target = TargetSparsity(edge_sparsity=0.9, weight_sparsity=0.9)
    trainer(tmp_path, [target, rec], max_steps=80).fit(model, dm)
    assert rec.stats[0][0][0] < 0.5  # it starts far from the target
    late = rec.stats[30:]
    for layer in range(2):
        edge = [s[layer][0] for s in late]
        weight = [s[layer][1] for s in late]
        assert abs(sum(edge) / len(edge) - 0.9) < 0.03, edge
        assert abs(sum(weight) / len(weight) - 0.9) < 0.02, weight
        assert max(abs(e - 0.9) for e in edge) < 0.15
    assert target.measured["edge"] and len(target.thr_a) == 2
    assert rec.rows[-1][1] == pytest.approx(target.thr_a, rel=0.5)


def test_refuses_a_schedule_beside_it(tmp_path):
    model, dm = make()
    with pytest.raises(ValueError, match="use one of them"):
        trainer(tmp_path, [TargetSparsity(), SparsitySchedule(thr_a=1.0)], max_steps=2).fit(model, dm)


def test_state_round_trip():
    t = TargetSparsity()
    t.load_state_dict({"thr_a": [1.5, 2.0], "thr_w": [0.7, 0.8]})
    assert t.state_dict() == {"thr_a": [1.5, 2.0], "thr_w": [0.7, 0.8]}
