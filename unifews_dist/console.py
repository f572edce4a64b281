"""The ``unifews-dist`` command (and ``python -m unifews_dist``): Ctrl-C at any moment ends it
with one line, also while torch, PyG and Lightning are imported (seconds, before the CLI exists)."""
from __future__ import annotations

import os
import sys


def main() -> None:
    try:
        from .cli import main as cli_main  # the runtime's imports, inside the Ctrl-C guard

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("unifews-dist: interrupted during start-up, before training: nothing to resume; "
                         "run the command again\n")
        sys.stderr.flush()
        sys.stdout.flush()
        # not SystemExit: an import interrupted halfway can turn the interpreter's shutdown into a
        # death by SIGINT (seen here when WANDB_MODE was set); nothing was made that needs cleaning up
        os._exit(130)
