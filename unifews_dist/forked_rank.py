"""What a rank forked by :mod:`unifews_dist.launch` runs (torchrun's ``--run-path`` script):
``unifews-dist`` with the arguments the launcher was given.

A forked rank has torch already imported, so what torchrun puts in its environment after the
imports no longer reaches what read it at import, and is applied here as a fresh interpreter
would have applied it then: ``OMP_NUM_THREADS`` (torchrun sets it to 1 for several ranks per
node unless the user set it) to torch's thread count, and ``RANK`` to Lightning's
``rank_zero_only.rank`` (read from the environment at import, in the launcher: 0), which says
who writes the run's W&B id and a set-up error's line before the Trainer exists.
"""
import os

import torch
from pytorch_lightning.utilities import rank_zero_only

from unifews_dist.cli import main

rank_zero_only.rank = int(os.environ["RANK"])
if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
main()
