"""Subcommands that are not Lightning's (``prepare``, ``report``, ``sweep-table``, ``compare``), and the
arguments of Lightning's (:mod:`.arguments`)."""
from .compare import main as compare
from .prepare import main as prepare
from .report import main as report
from .sweep import main as sweep_table

#: each takes its arguments (after the subcommand's name) and returns an exit code
COMMANDS = {"prepare": prepare, "report": report, "sweep-table": sweep_table, "compare": compare}
