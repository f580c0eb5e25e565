"""Every malformed or hostile input, through every command that reads data.

Each case must give one located line on stderr and exit code 2 (or, for odd but valid input, exit
code 0), never a traceback, and must leave nothing behind: no output, no temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from bad_inputs.corpus import CASES, GOOD, Case, jsonl, unreadable

COMMANDS = {
    "analyze": lambda data, out: ["analyze", data, "--threshold", "0.5", "--out", out],
    "route": lambda data, out: ["route", data, "--threshold", "0.5", "--out", out],
    "sql": lambda data, out: ["sql", "select count(*) as n from pairs", "--data", data],
}


def _check(case: Case, result, data: Path, out: Path) -> None:
    assert "Traceback" not in result.err
    if case.message is None:
        assert result.code == 0, result.err
        return
    assert result.code == 2, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ") and case.message in lines[0], lines[0]
    assert data.name in lines[0] or data.parent.name in lines[0]  # where: the file
    if case.line is not None:
        assert f", line {case.line}:" in lines[0] or f", row {case.line}:" in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.message is None for c in CASES) >= 3  # odd but valid inputs are accepted


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(cli, tmp_path, case, command):
    data = case.make(tmp_path)
    out = tmp_path / "out"
    result = cli(*COMMANDS[command](data, out))
    _check(case, result, data, out)
    if case.message is None and command == "sql":
        assert result.out.split()[-1].isdigit()


@pytest.mark.parametrize("command", COMMANDS)
def test_unreadable_path(command):
    """Root reads anything, so the child process drops to 'nobody' before it runs the command.

    The folder is world-readable (unlike pytest's own temporary folders), so the only thing the
    user cannot read is the data file.
    """
    folder = Path(tempfile.mkdtemp(prefix="prefcurate-perm-"))
    try:
        folder.chmod(0o777)
        data = unreadable(folder)
        out = folder / "out"
        args = [str(a) for a in COMMANDS[command](data, out)]
        warm_data = folder / "good.jsonl"
        warm_data.write_text(jsonl(GOOD))
        warm = [str(a) for a in COMMANDS[command](warm_data, folder / "warm")]
        # The child runs the command once as root on a good file (so every module it imports is
        # loaded: 'nobody' cannot read this interpreter's library), then as 'nobody'.
        code = (
            "import os, sys\n"
            "from prefcurate.cli import main\n"
            f"assert main({warm!r}) == 0\n"
            "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
            f"sys.exit(main({args!r}))\n"
        )
        env = {**os.environ, "PREFCURATE_CATALOG": "off"}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env
        )
        assert result.returncode == 2, result.stderr
        last = result.stderr.splitlines()[-1]
        assert last.startswith("error: ") and "permission denied" in last and data.name in last
        assert not out.exists()
    finally:
        shutil.rmtree(folder)
