import os
import shutil

import pytest
import torch
import torch.multiprocessing as mp

from unifews_dist.data import ShardedSeedSampler, UnifewsDataModule, load_dataset
from conftest import SHARED_CORA, free_port


@pytest.mark.parametrize("n,world", [(103, 2), (100, 3), (7, 7), (1000, 4)])
def test_shards_equal_disjoint_and_cover(n, world):
    for epoch in (0, 1):
        shards = []
        for r in range(world):
            s = ShardedSeedSampler(n, world, r, shuffle=True, seed=3)
            s.set_epoch(epoch)
            shards.append(list(s))
        assert len({len(x) for x in shards}) == 1 and len(shards[0]) == len(ShardedSeedSampler(n, world, 0))
        flat = [i for x in shards for i in x]
        assert len(set(flat)) == len(flat) >= n - (world - 1)  # disjoint; drops < world seeds
    e0 = ShardedSeedSampler(n, world, 0, seed=3)
    e1 = ShardedSeedSampler(n, world, 0, seed=3)
    e1.set_epoch(1)
    assert list(e0) != list(e1)  # reshuffled each epoch


def test_eval_shards_keep_every_seed():
    shards = [list(ShardedSeedSampler(10, 3, r, shuffle=False, drop=False)) for r in range(3)]
    assert sorted(i for x in shards for i in x) == list(range(10))


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = UnifewsDataModule("synthetic-tiny", num_neighbors=[3, 2], batch_size=64, seed=1)
        dm.setup("fit")
        loader = dm.train_dataloader()
        res = {}
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            seeds = [b.n_id[: b.batch_size] for b in loader]
            res[epoch] = (len(seeds), torch.cat(seeds).tolist())
        out[rank] = res
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_data_module():
    """2 real gloo processes: same batch count for 1000 train seeds / 64, disjoint shards."""
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
    train = load_dataset("synthetic-tiny", seed=1).train_idx
    for epoch in (0, 1):
        (n0, s0), (n1, s1) = out[0][epoch], out[1][epoch]
        assert n0 == n1 == 8  # 1000 seeds -> 500 per rank -> 8 batches of <= 64
        assert not set(s0) & set(s1)
        assert set(s0) | set(s1) == set(train.tolist())  # 1000 is even: nothing dropped
    assert out[0][0][1] != out[0][1][1]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_CORA, "Cora")), reason="../shared/data (real Cora) missing")
def test_planetoid_from_disk_and_bad_names(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(SHARED_CORA, "Cora"), root / "Cora")
    ds = load_dataset("Cora", str(root))
    assert ds.data.num_nodes == 2708 and ds.data.edge_index.size(1) == 10556 and ds.num_classes == 7
    assert (ds.train_idx.numel(), ds.val_idx.numel(), ds.test_idx.numel()) == (140, 500, 1000)
    assert ds.source == os.path.abspath(root / "Cora" / "raw")
    with pytest.raises(ValueError, match="unknown dataset 'cora2'; known datasets: citeseer, cora"):
        load_dataset("cora2", str(root))
    with pytest.raises(ValueError, match="unknown dataset"):
        UnifewsDataModule("imagenet")
    with pytest.raises(ValueError, match="sampler must be one of"):
        UnifewsDataModule("cora", sampler="dgl")


def test_random_split_is_stratified_seeded_and_checked():
    from unifews_dist.data.split import random_split
    y = torch.arange(7).repeat_interleave(torch.tensor([351, 217, 418, 818, 426, 298, 180]))  # Cora's classes
    tr, va, te = random_split(y, [0.5, 0.25], seed=3)
    assert tr.numel() + va.numel() + te.numel() == y.numel()
    assert torch.equal(torch.cat([tr, va, te]).sort().values, torch.arange(y.numel()))  # disjoint, covering
    counts = torch.bincount(y, minlength=7)
    assert (torch.bincount(y[tr], minlength=7) - counts * 0.5).abs().max() <= 0.5  # half of every class
    assert (torch.bincount(y[va], minlength=7) - counts * 0.25).abs().max() <= 1
    again, other = random_split(y, [0.5, 0.25], seed=3), random_split(y, [0.5, 0.25], seed=4)
    assert torch.equal(again[0], tr) and not torch.equal(other[0], tr)
    multi = (torch.rand(100, 3) < 0.5).long()  # multi-label: drawn over all nodes
    assert [t.numel() for t in random_split(multi, [0.6, 0.2])] == [60, 20, 20]
    for bad in ([0.5], [0.7, 0.4], [0.0, 0.2], [float("nan"), 0.1], "ab"):
        with pytest.raises(ValueError, match="random_split needs \\[train, val\\] fractions"):
            UnifewsDataModule("cora", random_split=bad)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_CORA, "Cora")), reason="../shared/data (real Cora) missing")
def test_data_module_random_split_replaces_the_public_one(tmp_path):
    shutil.copytree(os.path.join(SHARED_CORA, "Cora"), tmp_path / "Cora")
    ds = UnifewsDataModule("cora", root=str(tmp_path), random_split=[0.5, 0.25], seed=1).load()
    assert (ds.train_idx.numel(), ds.val_idx.numel(), ds.test_idx.numel()) == (1354, 675, 679)  # per-class rounding
    assert "random split 0.5 / 0.25 / rest, seed 1" in ds.source
    public = UnifewsDataModule("cora", root=str(tmp_path)).load()
    assert public.train_idx.numel() == 140


def test_synthetic_is_seeded_and_learnable():
    a, b = load_dataset("synthetic-tiny", seed=0), load_dataset("synthetic-tiny", seed=0)
    assert torch.equal(a.data.edge_index, b.data.edge_index) and torch.equal(a.data.x, b.data.x)
    ei, y = a.data.edge_index, a.data.y
    homophily = (y[ei[0]] == y[ei[1]]).float().mean()
    assert homophily > 0.6  # structure predicts labels
    deg = torch.bincount(ei[1], minlength=a.data.num_nodes).float()
    assert deg.max() > 8 * deg.mean()  # heavy-tailed degrees
    centroid_acc = ((a.data.x @ torch.stack([a.data.x[y == c].mean(0) for c in range(5)]).t()).argmax(1) == y)
    assert centroid_acc.float().mean() > 0.5  # features predict labels


@pytest.mark.parametrize("kind", ["torch", "torch_sparse"])
def test_sampler_backends(kind):
    pytest.importorskip("torch_sparse") if kind == "torch_sparse" else None
    dm = UnifewsDataModule("synthetic-tiny", num_neighbors=[3, 2], batch_size=32, sampler=kind)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    if kind == "torch":
        assert len(b.num_sampled_nodes) == 3
    assert b.batch_size == 32 and b.edge_index.size(1) > 0


def test_pyg_lib_refused_with_clear_error_when_missing():
    from unifews_dist.data.samplers import has_module, make_sampler
    if has_module("pyg_lib"):
        pytest.skip("pyg-lib is installed")
    with pytest.raises(ValueError, match="pyg-lib, which is not installed"):
        make_sampler("pyg_lib", load_dataset("synthetic-tiny").data, [2], 0)


def test_gpu_sampling_refuses_what_it_cannot_do():
    for kw, what in (({"num_workers": 2}, "num_workers=0 .got 2"), ({"pin_memory": True}, "pin_memory=false"),
                     ({"sampler": "torch_sparse"}, "got 'torch_sparse'")):
        with pytest.raises(ValueError, match=what):
            UnifewsDataModule("synthetic-tiny", gpu_sampling=True, **kw)
    if not torch.cuda.is_available():
        dm = UnifewsDataModule("synthetic-tiny", gpu_sampling=True)
        with pytest.raises(ValueError, match="gpu_sampling needs the trainer on a CUDA device, got cpu"):
            dm.setup("fit")


@pytest.mark.gpu
def test_gpu_sampling_trains_on_gpu_resident_batches():
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback
    from unifews_dist.lit import UnifewsModule

    class Seen(Callback):
        devices, steps = set(), 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            Seen.devices |= {batch.x.device.type, batch.edge_index.device.type, batch.y.device.type}
            ei, n_id = batch.edge_index, batch.n_id  # every sampled edge is an edge of the graph
            g = dm.load().edge_index()
            pairs = set(map(tuple, g.t().tolist()))
            assert all((a, b) in pairs for a, b in zip(n_id[ei[0]].tolist(), n_id[ei[1]].tolist()))
            assert torch.equal(batch.x.cpu(), dm.load().data.x[n_id.cpu()])

    dm = UnifewsDataModule("synthetic-tiny", num_neighbors=[4, 3], batch_size=64, gpu_sampling=True)
    host_x = dm.load().data.x
    module = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv="sage",
                           hidden_channels=32, num_layers=2, thr_a=0.5, thr_w=0.5)
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=2, callbacks=[Seen()])
    trainer.fit(module, dm)
    assert Seen.devices == {"cuda"} and trainer.global_step == 6
    assert dm.load().data.x is host_x and not host_x.is_cuda  # the host copy is left where it was
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["train/loss"].item()))


def test_synthetic_split_sizes_follow_the_spec(monkeypatch):
    from unifews_dist.data import synthetic as datasets
    spec = datasets.SyntheticSpec(300, 1500, 8, 3, num_train=40, num_val=25)
    monkeypatch.setitem(datasets.SYNTHETIC, "synthetic-split", spec)
    ds = datasets.load_synthetic("synthetic-split")
    assert (ds.train_idx.numel(), ds.val_idx.numel(), ds.test_idx.numel()) == (40, 25, 235)
    assert torch.cat([ds.train_idx, ds.val_idx, ds.test_idx]).sort().values.equal(torch.arange(300))
    products = datasets.SYNTHETIC["synthetic-products"]  # ogbn-products' split: 192 batches of 1024 + 1
    assert (products.num_train, products.num_val) == (196_615, 39_323)


def test_device_side_gather_gives_the_loader_gathers_batches(tmp_path, monkeypatch):
    """``feature_gather: device``: the workers' batches hold no features; gathered after the
    transfer they equal the main-process loader's batches for the same seed (every field)."""
    monkeypatch.setenv("UNIFEWS_CACHE", str(tmp_path))
    ref = UnifewsDataModule("synthetic-tiny", num_neighbors=[4, 3], batch_size=128, seed=2)
    dev = UnifewsDataModule("synthetic-tiny", num_neighbors=[4, 3], batch_size=128, seed=2,
                            feature_gather="device", num_workers=2)
    n = 0
    for a, b in zip(ref.train_dataloader(), dev.train_dataloader()):
        assert "x" not in b  # the workers gathered no features
        b = dev.on_after_batch_transfer(b, 0)
        for key in ("x", "y", "edge_index", "n_id"):
            assert torch.equal(a[key], b[key]), key
        assert a.num_sampled_nodes == b.num_sampled_nodes and a.num_sampled_edges == b.num_sampled_edges
        n += 1
    assert n == 8  # 1000 training seeds in batches of 128


def test_device_side_gather_trains(tmp_path, monkeypatch):
    """Lightning calls the data module's hook: a fit with workers, the device-side gather and
    half-precision features trains on float32 batches."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback
    from unifews_dist.lit import UnifewsModule

    monkeypatch.setenv("UNIFEWS_CACHE", str(tmp_path))
    seen = []

    class Seen(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((batch.x.dtype, tuple(batch.x.shape), batch.n_id.numel()))

    dm = UnifewsDataModule("synthetic-tiny", num_neighbors=[4, 3], batch_size=64, feature_gather="device",
                           num_workers=2, feature_dtype="float16")
    module = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv="sage",
                           hidden_channels=16, num_layers=2, thr_a=0.5, thr_w=0.5)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=1, callbacks=[Seen()])
    trainer.fit(module, dm)
    assert trainer.global_step == 3 and len(seen) == 3
    assert all(d == torch.float32 and shape == (n, 32) for d, shape, n in seen)


def test_device_side_gather_and_gpu_sampling_exclude_each_other():
    with pytest.raises(ValueError, match="feature_gather 'device' is for host sampling"):
        UnifewsDataModule("synthetic-tiny", feature_gather="device", gpu_sampling=True)
    with pytest.raises(ValueError, match="feature_gather"):
        UnifewsDataModule("synthetic-tiny", feature_gather="gpu")


def test_whole_graph_batch_holds_the_edge_index_only_while_it_is_used():
    """Layer-wise evaluation needs an int64 edge_index (16 bytes per edge, per rank): it is made
    when the loader is read and freed with the batch, not kept by the loader or the dataset
    between evaluations."""
    import gc
    import weakref

    dm = UnifewsDataModule("synthetic-tiny", num_neighbors=[4, 3], batch_size=64, eval_mode="layerwise")
    ds = dm.load()
    assert ds.row is not None  # a prepared (CSC) graph
    loader = dm.val_dataloader()
    batch = next(iter(loader))
    assert batch.layerwise and batch.edge_index.dtype == torch.long
    assert torch.equal(batch.edge_index, ds.edge_index()) and batch.edge_index.size(1) == ds.num_edges
    assert torch.equal(batch.nodes, ds.val_idx)
    gone = weakref.ref(batch.edge_index)
    del batch
    gc.collect()
    assert gone() is None
    assert torch.equal(next(iter(loader)).edge_index, ds.edge_index())  # made again for the next evaluation


def test_no_edge_index_alive_while_training_between_layerwise_validations():
    import gc
    import warnings

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback
    from unifews_dist.lit import UnifewsModule

    dm = UnifewsDataModule("synthetic-tiny", num_neighbors=[4, 3], batch_size=64, eval_mode="layerwise")
    edges = dm.load().num_edges

    class Look(Callback):
        alive, validated = [], 0

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            Look.validated += 1

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            gc.collect()
            with warnings.catch_warnings():  # (isinstance on every object touches deprecated aliases)
                warnings.simplefilter("ignore")
                Look.alive.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.dim() == 2
                                      and o.size(0) == 2 and o.size(1) >= edges))

    module = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv="sage",
                           hidden_channels=16, num_layers=2, thr_a=0.5, thr_w=0.5)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, limit_train_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         callbacks=[Look()])
    trainer.fit(module, dm)
    assert Look.validated == 3 and Look.alive == [0] * 6


@pytest.mark.slow
@pytest.mark.parametrize("use_distributed_sampler", [True, False])
def test_lightning_keeps_the_seed_sharding_whatever_use_distributed_sampler_says(tmp_path, monkeypatch,
                                                                                  use_distributed_sampler):
    """Lightning replaces a loader's sampler with its own DistributedSampler unless the sampler
    already is one: ShardedSeedSampler is, so both ranks keep the even, disjoint shards (and the
    same batch count) with use_distributed_sampler on as off."""
    import json

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from unifews_dist.lit import UnifewsModule

    class Seen(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            path = tmp_path / f"rank{trainer.global_rank}.jsonl"
            sampler = trainer.train_dataloader.sampler
            with open(path, "a") as f:
                f.write(json.dumps([type(sampler).__name__, batch.n_id[: batch.batch_size].tolist()]) + "\n")

    for key in ("MASTER_ADDR", "MASTER_PORT"):  # Lightning's ddp_fork sets them in this process: put back after
        monkeypatch.setenv(key, os.environ.get(key, ""))
        monkeypatch.delenv(key)
    dm = UnifewsDataModule("synthetic-tiny", num_neighbors=[3, 2], batch_size=64, seed=1)
    model = UnifewsModule(in_channels=dm.num_features, out_channels=dm.num_classes, conv="sage", hidden_channels=8)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Seen()],
                         use_distributed_sampler=use_distributed_sampler, default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    rows = [[json.loads(line) for line in open(tmp_path / f"rank{r}.jsonl")] for r in (0, 1)]
    assert {name for r in rows for name, _ in r} == {"ShardedSeedSampler"}
    assert len(rows[0]) == len(rows[1]) == 8  # 1000 seeds, 500 a rank, batches of 64
    seeds = [{s for _, b in r for s in b} for r in rows]
    assert not seeds[0] & seeds[1] and len(seeds[0]) == len(seeds[1]) == 500
