"""Every command says that it cannot go on in one line, ``unifews-dist[ COMMAND]: error: ...``,
exit code 2, through one printer (unifews_dist/errors.py)."""
import os
import re

import pytest

from unifews_dist.commands import compare, prepare, report, sweep_table
from unifews_dist.errors import error_line, fail

PKG = os.path.join(os.path.dirname(__file__), "..", "unifews_dist")


def test_error_line_names_the_command_and_folds_whitespace():
    assert error_line("bad\n  value\tgiven") == "unifews-dist: error: bad value given"
    assert error_line("x", "report") == "unifews-dist report: error: x"


@pytest.mark.parametrize("main, argv, command, said", [
    (compare, ["--config", "nope.yaml"], "compare", "config nope.yaml does not exist"),
    (sweep_table, ["/no/such/sweep"], "sweep-table", "sweep directory /no/such/sweep does not exist"),
    (report, ["/no/such/run"], "report", "/no/such/run"),
    (prepare, ["--no-such-option"], "prepare", "unrecognized arguments: --no-such-option"),
    (report, [], "report", "the following arguments are required: run_dir"),
])
def test_small_commands_refuse_bad_input_in_one_line(main, argv, command, said, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors exit from the parser
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"unifews-dist {command}: error: ") and said in err[0], err


def test_fail_returns_the_bad_input_code(capsys):
    assert fail("nothing here", "x") == 2
    assert capsys.readouterr().err == "unifews-dist x: error: nothing here\n"


def test_no_module_prints_an_error_line_of_its_own():
    """Only errors.py writes the ``error:`` line (the launcher, which runs before the package's
    runtime is imported, says its own ``unifews_dist.launch: error:``)."""
    own = []
    for root, _, files in os.walk(PKG):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".py") or name in ("errors.py", "launch.py"):
                continue
            for i, line in enumerate(open(path), 1):
                if re.search(r"""["']unifews-dist[^"']*: error:""", line):
                    own.append(f"{os.path.relpath(path, PKG)}:{i}")
    assert not own, own
