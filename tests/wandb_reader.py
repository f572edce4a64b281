"""Read back an offline W&B run (wandb >= 0.2x ships no Python reader for its ``.wandb`` file).

The file is a leveldb-style log: a 7-byte file header (``:W&B``, magic, version), then 32 KiB
blocks of chunks, each with a 7-byte header (crc32, little-endian length, type: 1 full,
2 first, 3 middle, 4 last) and a piece of a serialized ``wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import glob
import json
import os
import struct

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: str) -> list:
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a .wandb file (header {data[:4]!r})")
    pos, pieces, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding
            pos += left
            continue
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            pieces = payload
        elif kind == 3:
            pieces += payload
        elif kind == 4:
            out.append(pieces + payload)
        else:
            raise ValueError(f"bad chunk type {kind} at byte {pos}")
    return [wandb_internal_pb2.Record.FromString(p) for p in out]


def offline_runs(wandb_dir: str) -> list:
    return sorted(glob.glob(os.path.join(wandb_dir, "offline-run-*", "run-*.wandb")))


def history(path: str) -> list:
    """Every logged history row as a dict ``{key: value}``."""
    rows = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item})
    return rows


def run_info(path: str) -> dict:
    """Run id, config and metric definitions of one offline run."""
    info = {"id": None, "config": {}, "metrics": {}}
    for rec in read_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info["id"] = rec.run.run_id
            for it in rec.run.config.update:
                info["config"][it.key] = json.loads(it.value_json)
        elif kind == "config":
            for it in rec.config.update:
                info["config"][it.key] = json.loads(it.value_json)
        elif kind == "metric":
            m = rec.metric
            info["metrics"][m.name or m.glob_name] = m.step_metric
    return info
