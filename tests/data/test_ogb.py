"""OGB datasets read from OGB's on-disk layout (no download here), through the ogb package."""
import pytest
import torch

pytest.importorskip("ogb")

from ogb_tiny import write_tiny_ogb  # noqa: E402
from unifews_dist.data import UnifewsDataModule, load_dataset  # noqa: E402


def test_ogbn_arxiv_from_disk_with_official_splits_and_evaluator(tmp_path):
    x, y, edges, splits = write_tiny_ogb(tmp_path)
    ds = load_dataset("ogbn-arxiv", str(tmp_path))
    assert ds.source == str(tmp_path / "ogbn_arxiv")
    assert ds.num_classes == 40 and ds.data.num_nodes == 60
    assert torch.equal(ds.data.x, torch.from_numpy(x))
    assert ds.data.y.dtype == torch.long and ds.data.y.shape == (60,)
    assert torch.equal(ds.data.y, torch.from_numpy(y[:, 0]).long())
    assert torch.equal(ds.data.edge_index, torch.from_numpy(edges))
    for got, part in zip((ds.train_idx, ds.val_idx, ds.test_idx), ("train", "valid", "test")):
        assert torch.equal(got, torch.from_numpy(splits[part]))
    target = ds.data.y[ds.test_idx]
    pred = target.clone()
    pred[:5] = (pred[:5] + 1) % 40
    assert ds.evaluator(pred, target) == pytest.approx(1 - 5 / target.numel())
    # a second load reads the processed copy (torch.load of PyG objects under weights_only)
    again = load_dataset("ogbn-arxiv", str(tmp_path))
    assert torch.equal(again.data.y, ds.data.y)


def test_ogbn_papers100m_binary_layout_unlabelled_nodes(tmp_path):
    write_tiny_ogb(tmp_path, "ogbn-papers100M", n=80, num_classes=172, binary=True, unlabelled=20)
    ds = load_dataset("ogbn-papers100m", str(tmp_path))
    assert ds.num_classes == 172 and ds.data.y.dtype == torch.long
    assert int((ds.data.y == -1).sum()) == 20  # NaN labels become -1 ...
    labelled = torch.cat([ds.train_idx, ds.val_idx, ds.test_idx])
    assert labelled.numel() == 60 and bool((ds.data.y[labelled] >= 0).all())  # ... and no split has them
    dm = UnifewsDataModule(name="ogbn-papers100m", root=str(tmp_path), num_neighbors=[3, 2], batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.batch_size == 16 and bool((batch.y[:16] >= 0).all())
    assert dm.num_features == 8 and dm.num_classes == 172


def test_incomplete_ogb_folder_is_refused_clearly(tmp_path):
    write_tiny_ogb(tmp_path, release=False)
    with pytest.raises(ValueError, match=r"RELEASE_v\*\.txt.*remove it to download ogbn-arxiv"):
        load_dataset("ogbn-arxiv", str(tmp_path))
