"""``unifews-dist prepare``: prepare a dataset's memory-mapped arrays ahead of training.

Training prepares a dataset on first use by itself (one process per node); this runs that step
on its own, on a login node or in a job before the training job, and checks a prepared folder
(``--verify``: every byte against its digest). It reads the ``data:`` section of the same config
files ``fit`` takes, and the same ``--data.*`` arguments::

    unifews-dist prepare --config configs/ogbn-products.yaml
    unifews-dist prepare --data.name my_graph.pt --data.feature_dtype float16
"""
from __future__ import annotations

import argparse
import time
from typing import List, Optional

import yaml

from ..data.prepared import FEATURE_DTYPES, load_prepared
from ..errors import OneLineArgumentParser, fail


def _parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="unifews-dist prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=[], help="a fit config (its data: section is read); repeatable")
    p.add_argument("--data.name", dest="name", help="dataset name, or a path to your graph")
    p.add_argument("--data.root", dest="root", help="folder holding the datasets")
    p.add_argument("--data.seed", dest="seed", type=int, help="seed (synthetic graphs, random splits)")
    p.add_argument("--data.feature_dtype", dest="feature_dtype", help=f"one of {', '.join(FEATURE_DTYPES)}")
    p.add_argument("--verify", action="store_true", help="check every byte of a prepared folder, not a sample")
    p.add_argument("--rebuild", action="store_true", help="prepare again whatever is there")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    data = {"name": "cora", "root": None, "seed": 0, "feature_dtype": "float32"}
    for path in args.config:
        try:
            with open(path) as f:
                cfg = yaml.safe_load(f) or {}
        except OSError as e:
            return fail(f"config {path} cannot be read: {e.strerror}", "prepare")
        section = cfg.get("data") or {} if isinstance(cfg, dict) else {}
        data.update({k: section[k] for k in data if k in section})
    for k in data:
        if getattr(args, k) is not None:
            data[k] = getattr(args, k)
    t0 = time.perf_counter()
    try:
        built = []  # the line said when it (re)builds: the folder's check is load_prepared's, done once

        def say(line, **kwargs):
            built.append(line)
            print(line, **kwargs)

        ds = load_prepared(data["name"], data["root"], int(data["seed"]), data["feature_dtype"], verify=args.verify,
                           rebuild=args.rebuild, say=say)
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e), "prepare")
    state = "prepared" if built else ("verified" if args.verify else "up to date")
    print(f"{ds.name}: {ds.data.num_nodes} nodes, {ds.num_edges} edges, {ds.num_features} features "
          f"({data['feature_dtype']}): {state} in {time.perf_counter() - t0:.1f} s")
    print(ds.folder, flush=True)
    return 0
