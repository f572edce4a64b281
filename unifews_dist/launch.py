"""``python -m unifews_dist.launch [torchrun options] fit --config ...``: torchrun whose ranks
share one copy of the Python runtime per node.

torchrun starts each rank as a new interpreter, and each imports torch, PyG, Lightning and
this package on its own: private memory per rank before it reads any graph (BENCHMARKS.md,
"Host memory"). This launcher is torchrun itself (``torch.distributed.run``:
every option, rendezvous, restarts and environment variable the same), run after those imports
are done, with two options set: ``--start-method fork`` and ``--run-path`` on
:mod:`unifews_dist.forked_rank`. Its agent then forks the ranks, which start with the imported
modules already in memory and share those pages with the agent and with each other until one
writes to them (``gc.freeze()`` keeps the collector from writing to all of them).

Why not torchrun's own ``--start-method fork``: it forks only for a script run in-process
(``--run-path``), from torchrun's agent, which has imported torch and nothing else; the ranks
would still import PyG, Lightning and this package each. Lightning's ``ddp_fork`` forks too, but
from the process that built the Trainer, with Lightning's own ``MASTER_ADDR`` / ``NODE_RANK``
set-up: no torchrun rendezvous, restarts or torchelastic environment, which
``launch/torchrun.sh`` and its multi-node runs use.

CUDA must not be initialised before a fork. The launcher asks torch for devices through NVML
(``PYTORCH_NVML_BASED_CUDA_CHECK=1``, as Lightning's import sets it), so the CUDA driver is
not started here, and it stops with one line if torch's CUDA is initialised all the same; each
rank starts its own device after the fork. (Not yet run on a GPU.)

Under SLURM (``launch/slurm/train.sbatch``: one launcher per node, started by ``srun``) the
agent ignores the requeue signals, SIGUSR1 and SIGUSR2: SLURM sends them to every process of
the job step, the forked ranks included, which checkpoint and requeue
(:class:`~unifews_dist.callbacks.SlurmRequeue`); by default the signal would end the agent, and
with it the job, before any rank wrote its checkpoint.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
from typing import List, Optional

_SET_HERE = ("--no-python", "--no_python", "-m", "--module", "--run-path", "--run_path", "--start-method",
             "--start_method")


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)  # the subcommand parses as torchrun's training script
    if args.training_script.startswith("-"):
        print("unifews_dist.launch: error: no subcommand given (e.g. `fit --config configs/X.yaml`)",
              file=sys.stderr)
        raise SystemExit(2)
    for a in argv[:len(argv) - len(args.training_script_args) - 1]:  # torchrun's options
        if a.split("=")[0] in _SET_HERE:
            print(f"unifews_dist.launch: error: {a.split('=')[0]} is set by this launcher (it runs "
                  f"`unifews-dist` in forked ranks); give torchrun's other options, then the subcommand",
                  file=sys.stderr)
            raise SystemExit(2)
    # a device query by NVML, not by the CUDA driver, which cannot be used again after a fork
    # (Lightning sets the same on import)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch
    import torch_geometric  # noqa: F401  (what every rank imports: done once, here)
    import pytorch_lightning  # noqa: F401
    from . import cli  # noqa: F401

    if torch.cuda.is_initialized():
        print("unifews_dist.launch: error: CUDA was initialised before the ranks were forked: "
              "use plain torchrun (launch/torchrun.sh with LAUNCHER=torchrun)", file=sys.stderr)
        raise SystemExit(2)

    args.training_script_args = [args.training_script, *args.training_script_args]
    args.training_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forked_rank.py")
    args.run_path, args.start_method = True, "fork"
    if os.environ.get("SLURM_JOB_ID"):
        for s in (signal.SIGUSR1, signal.SIGUSR2):  # the ranks inherit it until SlurmRequeue sets theirs
            signal.signal(s, signal.SIG_IGN)
    gc.freeze()
    run(args)


if __name__ == "__main__":
    main()
