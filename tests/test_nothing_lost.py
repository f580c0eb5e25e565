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
    path.write_bytes(b"this is not a database" * 100)
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
