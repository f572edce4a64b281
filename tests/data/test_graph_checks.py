"""A graph that would train silently wrong is refused at load, in one line naming the count and
the first offender; a diverged model is never written over the last good checkpoint."""
import pytest
import torch
from torch_geometric.data import Data

from unifews_dist.data.graph import GraphDataset, check_graph


def _ds(n=20, classes=3, multilabel=False):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n, classes), generator=g) if multilabel else torch.randint(0, classes, (n,), generator=g)
    data = Data(x=torch.randn(n, 4, generator=g), y=y, edge_index=torch.randint(0, n, (2, 60), generator=g))
    idx = torch.arange(n)
    return GraphDataset("toy", data, idx[:10], idx[10:15], idx[15:], classes, "test")


def test_a_clean_graph_passes():
    check_graph(_ds())
    check_graph(_ds(multilabel=True))


def test_non_finite_features_are_refused():
    ds = _ds()
    ds.data.x[7, 2] = float("inf")
    ds.data.x[9, 0] = float("nan")
    with pytest.raises(
        ValueError, match=r"2 non-finite feature values \(of 80\), the first at node 7, feature 2 \(inf\)"
    ):
        check_graph(ds)


@pytest.mark.parametrize("bad", [-1, 20])
def test_edges_outside_the_nodes_are_refused(bad):
    ds = _ds()
    ds.data.edge_index[1, 5] = bad
    with pytest.raises(ValueError, match=rf"1 edges refer to nodes outside 0..19, the first is edge 5: .* -> {bad}"):
        check_graph(ds)


def test_labels_outside_the_classes_are_refused():
    ds = _ds()
    ds.data.y[12] = 3
    with pytest.raises(ValueError, match=r"1 labelled nodes have labels outside 0..2, the first is node 12"):
        check_graph(ds)
    ds = _ds()
    ds.data.y[3] = -1  # unlabelled, as papers100M marks them: fine outside the split, not inside
    with pytest.raises(ValueError, match="node 3"):
        check_graph(ds)
    ds.train_idx = ds.train_idx[ds.train_idx != 3]
    check_graph(ds)
    ds = _ds(multilabel=True)
    ds.data.y[16, 1] = 2
    with pytest.raises(ValueError, match=r"outside 0 / 1, the first is node 16"):
        check_graph(ds)


def test_a_diverged_model_is_not_checkpointed(tmp_path):

    import pytorch_lightning as pl

    from cb_helpers import make

    model, dm = make(thr_a=0.0, thr_w=0.0)

    class Diverge(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    next(pl_module.parameters()).fill_(float("nan"))

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Diverge(), ckpt],
    )
    with pytest.raises(ValueError, match="training diverged: non-finite weights .* the last good one is kept"):
        trainer.fit(model, dm)
    good = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert good["epoch"] == 0 and all(
        torch.isfinite(v).all()
        for v in good["state_dict"].values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    )


def test_a_failed_download_leaves_no_folders(tmp_path, monkeypatch):
    from unifews_dist.data import sources as datasets

    def half_download(name, root):  # makes the folders a download makes, then the network fails
        import os

        os.makedirs(os.path.join(root, "Cora", "raw"))
        raise ConnectionError("Cannot connect to host")

    monkeypatch.setattr(datasets, "load_planetoid", half_download)
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError, match="could not be downloaded: ConnectionError"):
        datasets.load_dataset("cora", str(tmp_path / "new" / "root"))
    with pytest.raises(ValueError, match="could not be downloaded"):
        datasets.load_dataset("cora", str(tmp_path / "kept"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not list((tmp_path / "kept").iterdir())


def test_garbage_dataset_files_are_reported_as_unreadable_not_missing(tmp_path):
    from unifews_dist.data.sources import load_dataset

    raw = tmp_path / "Cora" / "raw"
    raw.mkdir(parents=True)
    for name in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index"):
        (raw / f"ind.cora.{name}").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"dataset 'cora' in .*Cora cannot be read \(.*\); replace or remove"):
        load_dataset("cora", str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "Cora").iterdir()) == ["raw"]  # no processed/ left


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
def test_a_bad_batch_size_names_its_key(key):
    from unifews_dist.data import UnifewsDataModule

    with pytest.raises(ValueError, match=rf"^data.{key} must be >= 1, got 0$"):
        UnifewsDataModule(name="synthetic-tiny", **{key: 0})


def test_fewer_training_nodes_than_ranks_is_one_clear_error():
    from types import SimpleNamespace
    from unifews_dist.data import UnifewsDataModule

    dm = UnifewsDataModule(name="synthetic-tiny", num_neighbors=[2], batch_size=4)
    dm.setup("fit")
    dm.load().train_idx = dm.load().train_idx[:1]
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ValueError, match="has 1 training nodes, fewer than the 2 ranks"):
        dm.train_dataloader()
