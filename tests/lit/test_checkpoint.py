import os
import time

import pytest
import torch

from unifews_dist.checkpoint import AtomicCheckpointIO, resume_checkpoint


def test_kill_mid_write_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4}, str(path))

    def dies_half_way(obj, f, *a, **k):  # a kill while the new checkpoint is being written
        f.write(b"\x80\x02partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8}, str(path))
    monkeypatch.undo()
    assert torch.load(str(path), weights_only=False)["global_step"] == 4


def test_resume_picks_the_newest_of_last_and_hpc(tmp_path):
    assert resume_checkpoint(str(tmp_path)) is None  # first run of a job: starts cleanly
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 4}, last)
    assert resume_checkpoint(str(tmp_path)) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SLURM signal checkpoint, in default_root_dir
    torch.save({"global_step": 6}, hpc)
    t = time.time()
    os.utime(last, (t - 10, t - 10))
    assert resume_checkpoint(str(tmp_path)) == str(hpc)
