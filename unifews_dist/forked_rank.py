"""What a rank forked by :mod:`unifews_dist.launch` runs (torchrun's ``--run-path`` script):
``unifews-dist`` with the arguments the launcher was given.

A forked rank has torch already imported, so what torchrun puts in its environment after the
imports no longer reaches torch on its own: ``OMP_NUM_THREADS`` (torchrun sets it to 1 for
several ranks per node unless the user set it) is applied here, as a fresh interpreter would
have applied it at import.
"""
import os

import torch

from unifews_dist.cli import main

if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
main()
