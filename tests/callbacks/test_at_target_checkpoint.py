import pytest
import torch
from pytorch_lightning.callbacks import Callback

from unifews_dist.callbacks import AtTargetCheckpoint, SparsitySchedule, TargetSparsity

from cb_helpers import make, trainer


def _fit(tmp_path, controller, epochs=6):
    model, dm = make()
    ckpt = AtTargetCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/acc", mode="max", save_top_k=-1,
                              filename="{epoch}")
    callbacks = [controller, ckpt] if controller is not None else [ckpt]
    trainer(tmp_path, callbacks, max_epochs=epochs, limit_train_batches=3, limit_val_batches=2,
            enable_checkpointing=True).fit(model, dm)
    return ckpt, sorted(int(p.stem.split("=")[1]) for p in (tmp_path / "ckpt").glob("*.ckpt"))


def test_ranks_only_epochs_at_the_scheduled_target(tmp_path):
    """Dense warm-up 2 epochs, ramp 2: the thresholds are final from epoch 4 on; the masks are
    refined until the end of training (``reference``), so only the last epoch is final."""
    sched = SparsitySchedule(thr_a=1.0, thr_w=0.5, kind="linear", warmup=2, ramp=2)
    ckpt, epochs = _fit(tmp_path, sched)
    assert epochs == [5]
    state = torch.load(ckpt.best_model_path, weights_only=False)["state_dict"]
    thr = [v for k, v in state.items() if k.endswith("_extra_state")]
    assert {"thr_a": 1.0} in thr and {"thr_w": 0.5} in thr  # the checkpoint holds the sparse model


@pytest.mark.parametrize("kw,ranked", [
    (dict(refine_fraction=4 / 6), [3, 4, 5]),  # masks kept from epoch 4 on: at target once epoch 3 refined them
    (dict(refine_fraction=5 / 6), [4, 5]),
    (dict(mask_update="keep"), [2, 3, 4, 5]),  # one mask, never changed: the thresholds decide
    (dict(mask_update="epoch"), [5]),
])
def test_at_target_waits_for_the_last_mask_update(tmp_path, kw, ranked):
    """A checkpoint ranks only once no later epoch changes a weight mask: the tested model is as
    sparse as the schedule makes it (the refinement went on pruning after the thresholds were final)."""
    sched = SparsitySchedule(thr_a=1.0, thr_w=0.5, kind="constant", warmup=2, **kw)
    _, epochs = _fit(tmp_path, sched)
    assert epochs == ranked


@pytest.mark.parametrize("kw", [dict(thr_a=0.0, thr_w=0.0), dict(thr_a=0.0, thr_w=[0.0, 0.0]),
                                dict(thr_a={3: 0.0}, thr_w={3: 0.0}, kind="table")])
def test_a_dense_schedule_ranks_every_epoch(tmp_path, kw):
    """Nothing to reach (every final threshold 0, the documented dense baseline): every epoch is
    ranked, not only those after the warm-up and ramp."""
    kw = {"kind": "cubic", "warmup": 2, "ramp": 2, **kw}
    _, epochs = _fit(tmp_path, SparsitySchedule(**kw), epochs=5)
    assert epochs == [0, 1, 2, 3, 4]


def test_without_a_controller_it_is_model_checkpoint(tmp_path):
    _, epochs = _fit(tmp_path, None, epochs=3)
    assert epochs == [0, 1, 2]


class _AtTargetLog(Callback):
    def __init__(self, ctl):
        self.ctl, self.rows = ctl, []

    def on_validation_end(self, trainer, pl_module):
        self.rows.append((trainer.current_epoch, self.ctl.at_target, list(self.ctl.measured["weight"])))


def test_target_sparsity_checkpoints_only_once_met(tmp_path):
    ctl = TargetSparsity(edge_sparsity=None, weight_sparsity=0.9, tolerance=0.03, gain=1.0)
    log = _AtTargetLog(ctl)
    assert not ctl.at_target
    model, dm = make()
    ckpt = AtTargetCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/acc", mode="max", save_top_k=-1,
                              filename="{epoch}")
    trainer(tmp_path, [ctl, log, ckpt], max_epochs=8, limit_train_batches=1, limit_val_batches=2,
            enable_checkpointing=True).fit(model, dm)
    saved = sorted(int(p.stem.split("=")[1]) for p in (tmp_path / "ckpt").glob("*.ckpt"))
    met = [e for e, at, weight in log.rows if at]
    assert saved == met and met and len(met) < len(log.rows), log.rows
    for e, at, weight in log.rows:
        assert at == all(abs(0.9 - w) <= 0.03 for w in weight)
