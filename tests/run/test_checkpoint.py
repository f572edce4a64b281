import os
import time

import pytest
import torch

from unifews_dist.run.checkpoint import AtomicCheckpointIO, newest_readable


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
    assert newest_readable(str(tmp_path)) is None  # first run of a job: starts cleanly
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 4}, last)
    assert newest_readable(str(tmp_path))[0] == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SLURM signal checkpoint, in default_root_dir
    torch.save({"global_step": 6}, hpc)
    t = time.time()
    os.utime(last, (t - 10, t - 10))
    assert newest_readable(str(tmp_path))[0] == str(hpc)


class _Payload:
    """What a crafted checkpoint carries: loading it with weights_only=False runs os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path, marker):
    import pickle
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "hyper_parameters": {}, "x": _Payload(marker)}, f, protocol=2)


DEBUG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                     "debug.yaml")
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1", "--wandb", "false"]


def test_a_crafted_checkpoint_runs_nothing_on_resume_or_test(tmp_path, capsys):
    from unifews_dist.cli import main
    run, marker = tmp_path / "run", tmp_path / "pwned"
    (run / "checkpoints").mkdir(parents=True)
    _crafted(run / "checkpoints" / "last.ckpt", marker)
    for args in (["fit", "--config", DEBUG, "--run_dir", str(run), *SHORT],
                 ["test", "--config", DEBUG, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *SHORT]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "refused, nothing in a checkpoint is run" in err[-1] and "last.ckpt" in err[-1]
        assert not marker.exists()


def test_loading_is_weights_only_and_our_checkpoints_pass(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "c.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"thr_a": [1.0, 0.5], "conv": "sage"},
                        "callbacks": {"SparsitySchedule": {"thr_a": {3: 1.0}}}}, str(path))
    assert io.load_checkpoint(str(path))["hyper_parameters"]["conv"] == "sage"
    _crafted(path, tmp_path / "pwned")
    from unifews_dist.run.checkpoint import UnsafeCheckpoint
    with pytest.raises(UnsafeCheckpoint):
        io.load_checkpoint(str(path))
    assert not (tmp_path / "pwned").exists()


def test_an_unreadable_last_checkpoint_falls_back_to_the_previous(tmp_path):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 4}, str(last))
    io.save_checkpoint({"global_step": 8}, str(last))  # the one it replaced is kept until the next
    assert torch.load(str(last) + ".prev", weights_only=True)["global_step"] == 4
    assert newest_readable(str(tmp_path))[0] == str(last)
    last.write_bytes(b"\x80\x02 a disk fault")
    with pytest.warns(UserWarning, match="cannot be read.*trying an older checkpoint"):
        assert newest_readable(str(tmp_path))[0] == str(last) + ".prev"
    (tmp_path / "checkpoints" / "last.ckpt.prev").write_bytes(b"")  # none readable: stop, overwrite nothing
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no checkpoint of .* can be read"):
        newest_readable(str(tmp_path))
    io.remove_checkpoint(str(last))
    assert not last.exists() and not os.path.exists(str(last) + ".prev")


def test_the_logging_step_is_the_checkpoints_global_step(tmp_path):
    """run_dir.logged_steps reads the public global_step where Lightning logs at its private count
    of batches that stepped the optimizer: equal for UnifewsModule's one optimizer. Fails loudly
    if a Lightning release changes that (the private key is read here only)."""
    from cb_helpers import make, trainer

    model, dm = make()
    t = trainer(tmp_path, [], max_epochs=2, limit_train_batches=3, enable_checkpointing=False)
    t.fit(model, dm)
    t.save_checkpoint(str(tmp_path / "c.ckpt"))
    ckpt = torch.load(str(tmp_path / "c.ckpt"), weights_only=False)
    loop = ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]
    assert ckpt["global_step"] == loop["_batches_that_stepped"] == 6


@pytest.mark.parametrize("content", [b"\x80\x02 a disk fault", b"PK\x03\x04" + b"\x00" * 3000, b"garbage\n"])
def test_a_corrupt_checkpoint_is_said_in_whole_sentences(tmp_path, content):
    """The library's reason is kept whole (up to its first full stop), never cut mid-word."""
    from unifews_dist.run.checkpoint import first_sentence, load_checkpoint_file
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_checkpoint_file(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"checkpoint {str(path)!r} cannot be read"), msg
    assert msg.endswith(("; nothing in it was run", ")")), msg
    reason = msg[msg.index("(") + 1:msg.rindex(")")]
    assert reason.strip() and not reason.endswith(("...", ",", ":")), msg
    long = "word " * 100 + "end. Second sentence."
    assert first_sentence(long, limit=50) == "word " * 9 + "word ..."
    assert first_sentence("Failed reading zip: no central directory. See the docs.") == \
        "Failed reading zip: no central directory"
