import pytest
import torch

from unifews_dist.callbacks import SparsitySchedule
from unifews_dist.callbacks.sparsity_schedule import ramp_fraction

from cb_helpers import Recorder, make, trainer


@pytest.mark.parametrize("kind,expected", [
    # t:          0    1    2     3       4      5       6    9
    ("constant", [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
    ("linear", [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0]),
    ("cosine", [0.0, 0.0, 0.0, 2 * (1 - 0.5 ** 0.5) / 2, 1.0, 2 * (1 + 0.5 ** 0.5) / 2, 2.0, 2.0]),
    ("cubic", [0.0, 0.0, 0.0, 2 * (1 - 0.75 ** 3), 2 * (1 - 0.5 ** 3), 2 * (1 - 0.25 ** 3), 2.0, 2.0]),
])
def test_schedule_values(kind, expected):
    sched = SparsitySchedule(thr_a=2.0, thr_w=[1.0, 4.0], kind=kind, warmup=2, ramp=4)
    for t, want in zip([0, 1, 2, 3, 4, 5, 6, 9], expected):
        v = sched.values_at(t)
        assert v["thr_a"] == pytest.approx(want)
        assert v["thr_w"] == pytest.approx([want / 2, want * 2])


def test_table_and_default_ramp():
    sched = SparsitySchedule(thr_a={2: 0.5, 5: [1.0, 3.0]}, kind="table")
    assert [sched.values_at(t)["thr_a"] for t in (0, 1, 2, 4, 5, 50)] == [0.0, 0.0, 0.5, 0.5, [1.0, 3.0], [1.0, 3.0]]
    assert sched.values_at(3)["thr_w"] is None
    # no ramp: from warm-up to the end of training
    lin = SparsitySchedule(thr_w=1.0, kind="linear", warmup=2)
    assert lin.values_at(6, length=12)["thr_w"] == pytest.approx(0.4)
    assert ramp_fraction("cubic", 100, 0, 10) == 1.0


@pytest.mark.parametrize("kw,pattern", [
    (dict(thr_a=1.0, kind="exponential"), "kind must be one of"),
    (dict(thr_a=1.0, interval="batch"), "interval must be one of"),
    (dict(thr_a=1.0, mask_update="sometimes"), "mask_update must be one of"),
    (dict(thr_a=-1.0), "thr_a must be a finite number >= 0"),
    (dict(thr_a=1.0, kind="table"), "takes thr_a as a non-empty"),
    (dict(thr_a={3: 1.0}), "set kind: table"),
    (dict(thr_a={-1: 1.0}, kind="table"), "keys must be integers >= 0"),
    (dict(thr_a=1.0, warmup=-2), "warmup and ramp must be >= 0"),
    (dict(thr_a=1.0, recompute_fraction=1.5), "recompute_fraction"),
])
def test_bad_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        SparsitySchedule(**kw)


def test_mask_update_policy():
    ref = SparsitySchedule(thr_w=1.0, mask_update="reference", recompute_fraction=0.5)
    assert [ref.mask_mode_at(e, b, 10) for e, b in [(0, 0), (0, 3), (4, 0), (5, 0), (9, 0), (9, 1)]] == \
        ["recompute", "keep", "recompute", "refine", "refine", "keep"]
    assert SparsitySchedule(thr_w=1.0, mask_update="step").mask_mode_at(3, 7, 10) == "recompute"
    assert SparsitySchedule(thr_w=1.0, mask_update="epoch").mask_mode_at(9, 0, 10) == "recompute"
    assert SparsitySchedule(thr_w=1.0, mask_update="keep").mask_mode_at(0, 0, 10) == "keep"


def _schedule():
    return SparsitySchedule(thr_a=[1.0, 2.0], thr_w=0.8, kind="cubic", interval="step", warmup=3, ramp=8,
                            mask_update="reference")


def test_trainer_applies_schedule_and_masks(tmp_path):
    model, dm = make()
    rec = Recorder()
    trainer(tmp_path, [_schedule(), rec], max_epochs=4, limit_train_batches=3).fit(model, dm)
    steps = [r[0] for r in rec.rows]
    assert steps == list(range(12))
    for step, thr_a, thr_w, mode in rec.rows:
        want = _schedule().values_at(step)
        assert thr_a == pytest.approx(want["thr_a"]) and thr_w == pytest.approx([want["thr_w"]] * 2)
    assert rec.rows[2][1] == [0.0, 0.0] and rec.rows[11][1] == pytest.approx([1.0, 2.0])
    # reference masks: recompute at each epoch's first batch in the first half, then refine
    assert [r[3] for r in rec.rows[::3]] == ["recompute", "recompute", "refine", "refine"]
    assert {r[3] for i, r in enumerate(rec.rows) if i % 3} == {"keep"}
    # dense during warm-up, pruned after
    assert rec.stats[0][0] == (0.0, 0.0) and rec.stats[-1][0][0] > 0 and rec.stats[-1][0][1] > 0


def test_resume_mid_schedule_matches_uninterrupted(tmp_path):
    model, dm = make()
    full = Recorder()
    trainer(tmp_path / "a", [_schedule(), full], max_epochs=4, limit_train_batches=3).fit(model, dm)

    model, dm = make()
    first = Recorder()
    t1 = trainer(tmp_path / "b", [_schedule(), first], max_epochs=4, max_steps=6, limit_train_batches=3)  # "killed"
    t1.fit(model, dm)
    ckpt = str(tmp_path / "mid.ckpt")
    t1.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["callbacks"]["SparsitySchedule"]["current"]["thr_w"] > 0

    model, dm = make(seed=1)  # fresh weights: everything must come from the checkpoint
    second = Recorder()
    trainer(tmp_path / "c", [_schedule(), second], max_epochs=4, limit_train_batches=3).fit(model, dm, ckpt_path=ckpt)
    assert [r[0] for r in second.rows] == list(range(6, 12))
    resumed = first.rows + second.rows
    assert [(r[0], r[1], r[2], r[3]) for r in resumed] == [(r[0], r[1], r[2], r[3]) for r in full.rows]


def test_a_schedule_without_thresholds_ramps_to_the_models(tmp_path):
    """One source of truth: the model's thresholds (config or command line); 0 / 0 is dense."""
    model, dm = make(thr_a=[1.0, 2.0], thr_w=0.8)
    rec = Recorder()
    sched = SparsitySchedule(kind="linear", interval="step", warmup=2, ramp=4)
    trainer(tmp_path, [sched, rec], max_epochs=3, limit_train_batches=3).fit(model, dm)
    assert rec.rows[0][1:3] == ([0.0, 0.0], [0.0, 0.0]) and rec.rows[-1][1] == pytest.approx([1.0, 2.0])
    assert rec.rows[-1][2] == pytest.approx([0.8, 0.8]) and rec.rows[4][1] == pytest.approx([0.5, 1.0])
    model, dm = make(thr_a=0.0, thr_w=0.0)
    rec = Recorder()
    trainer(tmp_path, [SparsitySchedule(kind="cubic", warmup=1, ramp=1), rec], max_epochs=3,
            limit_train_batches=3).fit(model, dm)
    assert all(s == (0.0, 0.0) for step in rec.stats for s in step)  # dense: nothing pruned anywhere


def test_a_resumed_fit_with_another_schedule_is_told_and_an_evaluation_is_not():
    """``load_state_dict`` runs for test / validate / predict of a checkpoint too: only training
    that continues with another schedule is warned about, when it starts."""
    saved = SparsitySchedule(thr_a=1.0, warmup=2).state_dict()
    same, other = SparsitySchedule(thr_a=1.0, warmup=2), SparsitySchedule(thr_a=1.0, warmup=5)
    for sched in (same, other):
        sched.load_state_dict(saved)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same._check_resumed()
    with pytest.warns(UserWarning, match=r"SparsitySchedule differs from the checkpoint's .*'warmup': \(2, 5\)"):
        other._check_resumed()
    other._check_resumed()  # said once


def test_the_sanity_check_leaves_no_mask_for_training(tmp_path):
    """Lightning's sanity check runs before training: at the schedule's thresholds of step 0 (a
    dense warm-up), it makes no weight mask, so the first pruned steps use one made in training
    from the threshold then in force, and weight sparsity rises with the ramp (it jumped to ~99%
    with a mask made at the final threshold from a validation batch)."""
    model, dm = make(thr_a=0.0, thr_w=2.5)
    rec = Recorder()
    sched = SparsitySchedule(kind="linear", interval="step", warmup=3, ramp=9, mask_update="epoch")
    trainer(tmp_path, [sched, rec], max_epochs=5, limit_train_batches=3, limit_val_batches=2,
            num_sanity_val_steps=2).fit(model, dm)
    weight = [step[0][1] for step in rec.stats]
    assert weight[:4] == [0.0] * 4, weight
    assert all(b >= a - 0.02 for a, b in zip(weight, weight[1:])), weight
    assert 0 < weight[4] < weight[-1] - 0.1, weight
