"""Read back an offline W&B run with the library's reader (``unifews_dist.loggers.wandb_records``)."""
from __future__ import annotations

import glob
import json
import os

from unifews_dist.loggers.wandb_records import read_records  # noqa: F401  (the library's reader)


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
