"""A reader of a W&B run's ``.wandb`` file, kept in this one module: wandb ships no public reader
for it, so this one parses its transaction log (leveldb-style blocks) into wandb's own protobuf
``Record`` messages. The tests read every offline run through it, so a change of the format in a
wandb release fails them loudly. :class:`~unifews_dist.loggers.wandb.RunWandbLogger` uses it.

wandb is imported only inside functions: W&B enters through Lightning's ``WandbLogger``.
"""
from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any, Dict, Iterator, List, Tuple


BLOCK = 32 * 1024
HEADER = 7
STEP_KEY = "trainer/global_step"
#: what W&B adds to a logged row
W_AND_B_KEYS = frozenset({"_step", "_runtime", "_timestamp", STEP_KEY})


class TransactionLog:
    """Reads a ``.wandb`` file as it grows: a leveldb-style log, a 7-byte file header (``:W&B``,
    magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32,
    little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of a serialized
    ``wandb_internal_pb2.Record``. :meth:`read_new` returns the records completed since the
    last call (a record cut off by a write in progress is read on a later call)."""

    def __init__(self, path: str):
        self.path = path
        self._pos = HEADER  # the next chunk's offset
        self._pieces = b""

    def read_new(self) -> list:
        from wandb.proto import wandb_internal_pb2

        try:
            with open(self.path, "rb") as f:
                if self._pos == HEADER and f.read(4) not in (b":W&B", b""):
                    raise ValueError(f"{self.path} is not a .wandb file")
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return []
        out, pos = [], 0
        while True:
            at = self._pos + pos
            left = BLOCK - at % BLOCK
            if left < HEADER:  # block trailer padding
                if pos + left > len(data):
                    break
                pos += left
                continue
            if pos + HEADER > len(data):
                break
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
            if kind == 0 and length == 0:  # zero padding to the block's end
                if pos + left > len(data):
                    break
                pos += left
                continue
            if pos + HEADER + length > len(data):  # a chunk still being written
                break
            payload = data[pos + HEADER:pos + HEADER + length]
            pos += HEADER + length
            if kind == 1:
                out.append(payload)
            elif kind == 2:
                self._pieces = payload
            elif kind == 3:
                self._pieces += payload
            elif kind == 4:
                out.append(self._pieces + payload)
                self._pieces = b""
            else:
                raise ValueError(f"{self.path}: bad chunk type {kind} at byte {at}")
        self._pos += pos
        return [wandb_internal_pb2.Record.FromString(p) for p in out]


def read_records(path: str) -> list:
    """Every record of a ``.wandb`` file."""
    return TransactionLog(path).read_new()


def history_rows(records) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(_step, {key: value})`` of each logged history row."""
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            row = {(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item}
            yield rec.history.step.num, row


def run_files(wandb_dir: str, run_id: str) -> List[str]:
    """The ``.wandb`` files of run ``run_id`` under ``wandb_dir``, oldest first (one per
    attempt: ``offline-run-<time>-<id>`` offline, ``run-<time>-<id>`` online)."""
    files = glob.glob(os.path.join(wandb_dir, "*run-*", f"run-{run_id}.wandb"))
    return sorted(files, key=lambda p: os.path.basename(os.path.dirname(p)).split("run-", 1)[1])
