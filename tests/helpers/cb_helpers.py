import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from unifews_dist.data import UnifewsDataModule
from unifews_dist.lit import UnifewsModule


class Recorder(Callback):
    """Records the model's thresholds and mask mode as each training step starts (put it after
    the callback under test) and the layer stats after it."""

    def __init__(self):
        self.rows, self.stats = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        m = pl_module.model
        self.rows.append((trainer.global_step, list(m.thr_a), list(m.thr_w), m.weight_layers()[0].mask_mode))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stats.append([(s.edge_sparsity, s.weight_sparsity) for s in pl_module.model.layer_stats])


def make(seed=0, **model_kw):
    pl.seed_everything(seed, workers=True)
    dm = UnifewsDataModule(name="synthetic-tiny", num_neighbors=[5, 5], batch_size=64, seed=seed)
    dm.prepare_data()
    dm.setup("fit")
    kw = dict(conv="sage", hidden_channels=32, num_layers=2, lr=0.01)
    kw.update(model_kw)
    return UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, **kw), dm


def trainer(tmp_path, callbacks, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=str(tmp_path), limit_val_batches=0,
                num_sanity_val_steps=0)
    args.update(kw)
    return pl.Trainer(callbacks=callbacks, **args)


@pytest.fixture
def recorder():
    return Recorder()
