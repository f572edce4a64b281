"""How every command says that it cannot go on: one line on stderr, ``unifews-dist[ COMMAND]:
error: ...``, said by rank 0 alone, and exit code 2 for bad input. The Lightning commands'
parser, the set-up guard and the small commands (``compare``, ``prepare``, ``report``,
``sweep-table``) all print through :func:`fail`."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from pytorch_lightning.utilities import rank_zero_only

#: the exit code of bad input (as argparse's)
BAD_INPUT = 2


def error_line(message: str, command: Optional[str] = None) -> str:
    """The one line: the program (and command), then the message with its whitespace folded."""
    prog = "unifews-dist" if command is None else f"unifews-dist {command}"
    return f"{prog}: error: {' '.join(str(message).split())}"


def say_once(line: str) -> None:
    """A line said by rank 0. The other ranks wait a moment before they go on to exit, because a
    launcher stops every rank as soon as one exits, which could stop rank 0 before it said it."""
    if rank_zero_only.rank == 0:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    else:
        time.sleep(3.0)


def fail(message: str, command: Optional[str] = None) -> int:
    """Say the error line (:func:`error_line`) once; returns the exit code for a command's ``main``."""
    say_once(error_line(message, command))
    return BAD_INPUT


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are :func:`fail`'s one line (the usage stays behind
    ``--help``); ``prog`` is ``unifews-dist COMMAND``."""

    def error(self, message):  # noqa: D401
        raise SystemExit(fail(message, self.prog.split(" ", 1)[1] if " " in self.prog else None))
