"""The prepared on-disk graph: layout, memory mapping, rebuilds, custom graphs, the CLI."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader

from unifews_dist.data import TorchNeighborSampler, UnifewsDataModule, load_dataset
from unifews_dist.data.prepared import ARRAYS, load_prepared, locate

TINY = "synthetic-tiny"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFEWS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _mapped_files() -> set:
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if line.rstrip().endswith(".npy")}


def _edges(ei: torch.Tensor) -> list:
    return sorted(map(tuple, ei.t().tolist()))


def test_layout_and_mapped_arrays_equal_the_source(cache):
    src = load_dataset(TINY)
    ds = load_prepared(TINY)
    m = json.load(open(os.path.join(ds.folder, "manifest.json")))
    assert sorted(f for f in os.listdir(ds.folder)) == sorted([f"{a}.npy" for a in ARRAYS] + ["manifest.json"])
    assert m["num_nodes"] == 2000 and m["num_edges"] == src.edge_index().size(1) and m["fingerprint"]["seed"] == 0
    assert m["arrays"]["row"]["dtype"] == "int32" and m["arrays"]["x"]["shape"] == [2000, 32]
    assert "edge_index" not in ds.data  # the CSC only
    assert torch.equal(ds.data.x, src.data.x) and torch.equal(ds.data.y, src.data.y)
    for a in ("train_idx", "val_idx", "test_idx"):
        assert torch.equal(getattr(ds, a), getattr(src, a))
    assert _edges(ds.edge_index()) == _edges(src.edge_index())
    deg = ds.colptr.diff()
    assert torch.equal(deg, torch.bincount(src.edge_index()[1], minlength=2000))
    # mapped from the files, not read into this process: the arrays' memory is the files' mapping
    assert {os.path.join(ds.folder, f"{a}.npy") for a in ARRAYS} <= _mapped_files()


def test_a_second_load_maps_what_is_there(cache, capsys):
    ds = load_prepared(TINY)
    assert "preparing synthetic-tiny" in capsys.readouterr().out
    stamp = os.stat(os.path.join(ds.folder, "manifest.json")).st_mtime_ns
    again = load_prepared(TINY)
    assert capsys.readouterr().out == "" and again.folder == ds.folder
    assert os.stat(os.path.join(ds.folder, "manifest.json")).st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["truncated", "byte", "no_manifest", "killed"])
def test_a_partial_or_corrupt_folder_is_rebuilt_never_read(cache, capsys, damage):
    ds = load_prepared(TINY)
    x0 = ds.data.x.clone()
    folder = ds.folder
    del ds
    capsys.readouterr()
    if damage == "truncated":
        with open(os.path.join(folder, "row.npy"), "r+b") as f:
            f.truncate(os.path.getsize(f.name) - 4)
    elif damage == "byte":  # a changed byte where the load-time digest reads (the file's start)
        with open(os.path.join(folder, "x.npy"), "r+b") as f:
            f.seek(200)
            b = f.read(1)
            f.seek(200)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "no_manifest":
        os.remove(os.path.join(folder, "manifest.json"))
    else:  # a prepare killed midway: its temporary folder left, the final one never made
        os.rename(folder, folder + ".tmp-1234")
        os.remove(os.path.join(folder + ".tmp-1234", "manifest.json"))
    ds = load_prepared(TINY)
    out = capsys.readouterr().out
    assert "preparing synthetic-tiny" in out
    assert {
        "truncated": "row.npy has",
        "byte": "x.npy does not match its digest",
        "no_manifest": "no complete manifest",
        "killed": "not prepared yet",
    }[damage] in out
    assert torch.equal(ds.data.x, x0)
    assert sorted(os.listdir(os.path.dirname(folder))) == [os.path.basename(folder)]  # nothing left behind


def test_verify_checks_every_byte(cache, capsys):
    ds = load_prepared(TINY)
    path = os.path.join(ds.folder, "row.npy")
    del ds
    with open(path, "r+b") as f:  # a byte the sampled digest does not read (the file is small: it reads all)
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\x7f")
    capsys.readouterr()
    load_prepared(TINY, verify=True)
    assert "row.npy does not match its digest" in capsys.readouterr().out


def _custom_graph(n=60, seed=0, masks=True):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 300), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    d = dict(x=torch.randn(n, 8, generator=g), y=torch.randint(0, 3, (n,), generator=g), edge_index=ei)
    if masks:
        perm = torch.randperm(n, generator=g)
        for i, s in enumerate(("train", "val", "test")):
            m = torch.zeros(n, dtype=torch.bool)
            m[perm[i * n // 3 : (i + 1) * n // 3]] = True
            d[f"{s}_mask"] = m
    return d


def test_a_custom_graph_file_is_prepared_next_to_it_and_rebuilt_when_it_changes(cache, tmp_path, capsys):
    path = tmp_path / "g.pt"
    d = _custom_graph()
    torch.save(Data(**d), path)
    ds = load_prepared(str(path))
    assert ds.folder == str(path) + ".prepared" and ds.num_classes == int(d["y"].max()) + 1
    assert torch.equal(ds.data.x, d["x"]) and torch.equal(ds.train_idx, d["train_mask"].nonzero().view(-1))
    assert _edges(ds.edge_index()) == _edges(d["edge_index"])
    d2 = _custom_graph(seed=1)
    torch.save(Data(**d2), path)
    os.utime(path, ns=(1, 1))  # a different modification time whatever the clock's resolution
    capsys.readouterr()
    ds = load_prepared(str(path))
    assert "the source changed since it was prepared" in capsys.readouterr().out
    assert torch.equal(ds.data.x, d2["x"])


def test_a_custom_folder_of_arrays_without_masks_gets_a_random_split(cache, tmp_path):
    d = _custom_graph(masks=False)
    folder = tmp_path / "arrays"
    folder.mkdir()
    for k, v in d.items():
        np.save(folder / f"{k}.npy", v.numpy())
    ds = load_prepared(str(folder))
    assert ds.folder == str(folder / "prepared") and "random split 0.5 / 0.25 / rest" in ds.source
    parts = [ds.train_idx, ds.val_idx, ds.test_idx]
    assert sum(p.numel() for p in parts) == 60 and torch.cat(parts).unique().numel() == 60
    again = load_prepared(str(ds.folder))  # the prepared folder itself is a valid name too
    assert torch.equal(again.data.x, ds.data.x)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("missing.pt", "does not exist"),
        ("nox", "needs x.npy, y.npy and edge_index.npy (missing: x.npy"),
        ("code.pt", "weights_only: no code is run from it"),
    ],
)
def test_bad_custom_graphs_are_refused_in_one_line(cache, tmp_path, bad, message):
    path = tmp_path / bad
    if bad == "nox":
        path.mkdir()
        np.save(path / "y.npy", np.zeros(3))
        np.save(path / "edge_index.npy", np.zeros((2, 1), dtype=np.int64))
    elif bad == "code.pt":
        torch.save({"x": torch.zeros(2, 2), "f": os.getcwd}, path)  # a pickled function: never called
    with pytest.raises(ValueError, match=re.escape(message)):
        load_prepared(str(path))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_features_are_stored_half_and_trained_float32(cache, dtype):
    dm = UnifewsDataModule(TINY, num_neighbors=[3, 2], batch_size=64, feature_dtype=dtype)
    ds = dm.load()
    assert ds.data.x.dtype == getattr(torch, dtype) and ds.folder.endswith(f"-{dtype}")
    assert torch.equal(ds.data.x.float(), load_dataset(TINY).data.x.to(getattr(torch, dtype)).float())
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch.x.dtype == torch.float32


def test_loaders_over_the_stores_give_the_in_memory_graphs_batches(cache):
    """The prepared graph through PyG's FeatureStore / GraphStore pair: the same batches as the
    in-memory Data for the same seed (the CSC is in the order PyG's to_csc sorts)."""
    dm = UnifewsDataModule(TINY, num_neighbors=[4, 3], batch_size=100, sampler="torch")
    src = load_dataset(TINY).data
    seeds = dm.load().train_idx[:300]
    mem = NodeLoader(src, TorchNeighborSampler(src, [4, 3], seed=0), input_nodes=seeds, batch_size=100)
    mapped = NodeLoader(dm.graph, dm._sampler([4, 3]), input_nodes=seeds, batch_size=100)
    n = 0
    for a, b in zip(mem, mapped):
        assert torch.equal(a.n_id, b.n_id) and torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert a.num_sampled_nodes == b.num_sampled_nodes and a.batch_size == b.batch_size
        n += 1
    assert n == 3


def test_the_feature_store_gathers_rows_as_the_data_path_does(cache):
    """The store's rows for a batch's node ids come from one ``index_select``, the ``Data``
    path's gather, not PyG's advanced indexing (``tensor[index]``: 12% slower per
    synthetic-medium batch, BENCHMARKS.md); other requests are PyG's."""
    from op_counter import OpCounter

    fs, _ = UnifewsDataModule(TINY).load().stores()
    x = fs.get_tensor(group_name=None, attr_name="x", index=None)
    idx = torch.tensor([5, 0, 5, 17])
    with OpCounter() as seen:
        rows = fs.get_tensor(group_name=None, attr_name="x", index=idx)
    assert torch.equal(rows, x[idx])
    assert "all:index_select" in seen.op_names and "all:index" not in seen.op_names, seen.op_names
    assert torch.equal(
        fs.get_tensor(group_name=None, attr_name="y", index=slice(2, 4)),
        fs.get_tensor(group_name=None, attr_name="y", index=None)[2:4],
    )


@pytest.mark.skipif(not __import__("importlib").util.find_spec("torch_sparse"), reason="needs torch-sparse")
def test_torch_sparse_samples_the_prepared_graph(cache):
    dm = UnifewsDataModule(TINY, num_neighbors=[4, 3], batch_size=100, sampler="torch_sparse")
    edges = set(_edges(load_dataset(TINY).edge_index()))
    batch = next(iter(dm.train_dataloader()))
    ei, n_id = batch.edge_index, batch.n_id
    assert all((int(n_id[a]), int(n_id[b])) in edges for a, b in ei.t().tolist())


def _prepare_in(q, barrier, cache):
    os.environ["UNIFEWS_CACHE"] = cache
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    barrier.wait(120)  # both at once
    with redirect_stdout(buf):
        ds = load_prepared("synthetic-small")
    q.put((buf.getvalue(), ds.folder, float(ds.data.x.sum())))


def test_two_processes_at_once_prepare_once(cache):
    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(2)
    ps = [ctx.Process(target=_prepare_in, args=(q, barrier, str(cache))) for _ in range(2)]
    for p in ps:
        p.start()
    res = [q.get(timeout=240) for _ in ps]
    for p in ps:
        p.join(60)
    assert sum("preparing synthetic-small" in out for out, _, _ in res) == 1
    assert res[0][1:] == res[1][1:]


def _cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "unifews_dist.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_prepare_command(cache, capsys):
    from unifews_dist.commands.prepare import main

    assert main(["--config", "configs/debug.yaml"]) == 0
    out = capsys.readouterr().out
    folder = out.strip().splitlines()[-1]
    assert folder == locate(TINY, "data_root", 0, "float32")[0] and ": prepared in" in out
    assert main(["--config", "configs/debug.yaml", "--verify"]) == 0 and ": verified in" in capsys.readouterr().out
    assert main(["--config", "configs/debug.yaml"]) == 0 and ": up to date in" in capsys.readouterr().out
    # from the console: the subcommand's one line and exit code 2
    bad = _cli(["prepare", "--data.name", "imagenet"], {**os.environ, "UNIFEWS_CACHE": str(cache)})
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown dataset 'imagenet'" in bad.stderr


def test_fit_on_your_own_graph(cache, tmp_path):
    """``--data.name PATH``: a torch.save'd Data trains end to end."""
    path = tmp_path / "mine.pt"
    torch.save(Data(**_custom_graph(n=90)), path)
    env = {**os.environ, "UNIFEWS_CACHE": str(cache)}
    run = tmp_path / "run"
    proc = _cli(
        [
            "fit",
            "--config",
            "configs/debug.yaml",
            "--data.name",
            str(path),
            "--trainer.max_epochs",
            "1",
            "--run_dir",
            str(run),
            "--wandb",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.load(open(run / "summary.json"))
    assert 0 <= s["test_acc"] <= 1 and os.path.isdir(str(path) + ".prepared")


def test_a_folder_marked_read_only_is_not_written_even_by_root(cache, tmp_path):
    """Planetoid raw files in a folder marked r-x (as a read-only data mount): processed and
    prepared in the cache, nothing written next to them, whoever runs it (root may write
    anywhere, so the mode bits are what say read-only)."""
    import shutil
    from conftest import SHARED_CORA

    root = tmp_path / "data"
    shutil.copytree(os.path.join(SHARED_CORA, "Cora", "raw"), root / "Cora" / "raw")
    os.chmod(root / "Cora", 0o555)
    try:
        ds = load_prepared("cora", str(root))
        assert sorted(os.listdir(root / "Cora")) == ["raw"] and ds.folder.startswith(str(cache))
        assert ds.data.num_nodes == 2708
    finally:
        os.chmod(root / "Cora", 0o755)


def _file_at(ptr: int) -> str:
    """The file mapped at address ``ptr`` in this process ("" for anonymous memory)."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return parts[5] if len(parts) > 5 else ""
    return ""


def test_int64_edge_index_is_one_mapped_file_per_node(cache, monkeypatch):
    """What needs int64 indices (layer-wise inference's edge_index; pyg-lib and torch-sparse's
    row) reads one file beside the prepared arrays, written once per node and mapped by every
    rank (not a private copy per rank, 16 bytes per edge); a file whose sampled entries
    disagree with the CSC is written again; a folder that cannot be written gives a private
    copy."""
    pytest.importorskip("torch_sparse")
    from unifews_dist.data import storage as prepared

    def sampler_row():
        dm = UnifewsDataModule(TINY, num_neighbors=[3, 2], batch_size=32, sampler="torch_sparse", eval_mode="layerwise")
        return dm, dm._sampler([3, 2]).row

    dm, row = sampler_row()
    ds = dm.load()
    path = os.path.join(ds.folder, "edge_index_int64.npy")
    ei = ds.edge_index()
    assert ds.row.dtype == torch.int32 and ei.dtype == torch.long and _file_at(ei.data_ptr()) == path
    want = prepared.edge_index_of(ds.colptr, ds.row)  # a private copy: sources, targets ascending
    assert torch.equal(ei, want)
    assert row.dtype == torch.long and torch.equal(row, ds.row.long()) and _file_at(row.data_ptr()) == path
    assert _file_at(next(iter(dm.val_dataloader())).edge_index.data_ptr()) == path  # layer-wise evaluation
    written = os.stat(path).st_mtime_ns
    _, row2 = sampler_row()  # another rank: maps the same file, writes nothing
    assert _file_at(row2.data_ptr()) == path and os.stat(path).st_mtime_ns == written
    for r in (0, 1):  # a wrong source, then a wrong target, at a sampled entry (entry 0 is one)
        bad = np.load(path, mmap_mode="r+")
        bad[r, 0] += 1
        bad.flush()
        del bad
        again = ds.edge_index()
        assert torch.equal(again, want) and _file_at(again.data_ptr()) == path
    open(path + ".tmp-999999", "w").close()  # a killed writer's file
    os.remove(path)
    del row, row2, again, ei
    replace = os.replace

    def read_only(src, dst):
        if str(dst).endswith("edge_index_int64.npy"):
            raise PermissionError(f"read-only file system: {dst}")
        return replace(src, dst)

    monkeypatch.setattr(prepared.os, "replace", read_only)
    _, row4 = sampler_row()
    assert torch.equal(row4, ds.row.long()) and _file_at(row4.data_ptr()) != path and not os.path.exists(path)
    assert torch.equal(ds.edge_index(), want) and not [f for f in os.listdir(ds.folder) if ".tmp-" in f]
