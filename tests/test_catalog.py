"""The embedded DuckDB catalog: recording, listing, concurrency, and read-only `sql`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from prefcurate.base.errors import InputError
from prefcurate.catalog import store as catalog

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --------------------------------------------------------------------------------------------------
# location, hashing, recording


def test_catalog_path_flag_beats_env_beats_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFCURATE_CATALOG", str(tmp_path / "env.duckdb"))
    assert catalog.catalog_path("flag.duckdb") == tmp_path / "flag.duckdb"
    assert catalog.catalog_path() == tmp_path / "env.duckdb"
    monkeypatch.delenv("PREFCURATE_CATALOG")
    assert catalog.catalog_path() == tmp_path / ".prefcurate" / "catalog.duckdb"
    monkeypatch.setenv("PREFCURATE_CATALOG", "off")
    assert catalog.catalog_path() is None


def test_content_hash_is_sha256_of_bytes_and_order_free_over_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"x" * 3_000_000)  # several 1 MiB chunks
    b.write_bytes(b"y")
    assert catalog.content_hash([a]) == (hashlib.sha256(a.read_bytes()).hexdigest(), 3_000_000)
    both = catalog.content_hash([a, b])
    assert both == catalog.content_hash([b, a])
    per_file = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b))
    assert both[0] == hashlib.sha256("\n".join(per_file).encode()).hexdigest()


def test_record_and_list_round_trip(tmp_path, uf1k):
    path = tmp_path / "c.duckdb"
    item = catalog.describe_input("../shared/data/ultrafeedback_1k.jsonl", [uf1k], rows=1000)
    run_id = catalog.record_run(
        "train",
        inputs=[item],
        params={"beta": 0.01},
        figures={"loss": 0.5},
        outputs={"dir": "out"},
        summary="one epoch",
        metrics=[
            {"step": 1, "name": "loss", "value": 0.7},
            {"step": 2, "name": "loss", "value": 0.5},
        ],
        path=path,
    )
    assert run_id.startswith("train-")
    (run,) = catalog.list_runs(path)
    assert run["run_id"] == run_id and run["kind"] == "train" and run["status"] == "ok"
    assert run["params"] == {"beta": 0.01} and run["figures"] == {"loss": 0.5}
    assert run["inputs"][0]["sha256"] == hashlib.sha256(uf1k.read_bytes()).hexdigest()
    assert run["inputs"][0]["rows"] == 1000
    with catalog.connect(path, read_only=True) as con:
        assert con.sql("SELECT count(*) FROM runs").fetchall() == [(1,)]
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(catalog.SCHEMA_VERSION),
        )
        assert con.execute("SELECT step, value FROM metrics ORDER BY step").fetchall() == [
            (1, 0.7),
            (2, 0.5),
        ]


def test_list_runs_newest_first_with_kind_and_limit(tmp_path):
    path = tmp_path / "c.duckdb"
    ids = [catalog.record_run(kind, path=path) for kind in ("analyze", "route", "route")]
    assert [r["run_id"] for r in catalog.list_runs(path)] == ids[::-1]
    assert [r["run_id"] for r in catalog.list_runs(path, kind="route", limit=1)] == [ids[2]]
    assert catalog.list_runs(tmp_path / "missing.duckdb") == []


def test_a_catalog_from_a_newer_prefcurate_is_refused(tmp_path):
    path = tmp_path / "c.duckdb"
    catalog.record_run("route", path=path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(InputError, match="schema version 99"):
        catalog.record_run("route", path=path)


# --------------------------------------------------------------------------------------------------
# concurrency


def test_two_processes_recording_at_once_both_succeed(tmp_path):
    path = tmp_path / "busy.duckdb"
    code = f"""
        import sys
        from prefcurate.catalog.store import record_run
        for i in range(10):
            record_run("route", params={{"writer": sys.argv[1], "i": i}}, path={str(path)!r})
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), name],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    runs = catalog.list_runs(path, limit=None)
    assert len(runs) == 20
    assert sorted(r["params"]["writer"] for r in runs) == ["a"] * 10 + ["b"] * 10


def _hold_duckdb_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another program (not prefcurate) holding the file open for writing."""
    proc = _python(
        f"""
        import time, duckdb
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep({seconds})
        con.close()
        """
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_lock_held_briefly_is_waited_out(tmp_path):
    path = tmp_path / "c.duckdb"
    catalog.record_run("analyze", path=path)
    holder = _hold_duckdb_lock(path, 1.0)
    started = time.monotonic()
    catalog.record_run("route", path=path, timeout=30)
    assert time.monotonic() - started >= 0.3  # it waited for the holder
    holder.wait(timeout=30)
    assert len(catalog.list_runs(path)) == 2


def test_a_lock_held_too_long_is_one_clear_line(tmp_path):
    path = tmp_path / "c.duckdb"
    catalog.record_run("analyze", path=path)
    holder = _hold_duckdb_lock(path, 600.0)  # until killed: a slow route must still meet it
    try:
        with pytest.raises(InputError) as info:
            catalog.record_run("route", path=path, timeout=0.5)
    finally:
        holder.kill()
        holder.wait()
    message = str(info.value)
    assert "locked by another process for 0.5 s" in message
    assert "PREFCURATE_CATALOG_TIMEOUT" in message and "\n" not in message


def test_route_still_succeeds_when_the_catalog_stays_locked(cli, uf1k, tmp_path, monkeypatch):
    path = tmp_path / "c.duckdb"
    catalog.record_run("analyze", path=path)
    monkeypatch.setenv("PREFCURATE_CATALOG_TIMEOUT", "0.3")
    holder = _hold_duckdb_lock(path, 600.0)  # until killed: a slow route must still meet it
    try:
        result = cli(
            "route", uf1k, "--threshold", "0.5", "--out", tmp_path / "o", "--catalog", path
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 0
    assert "warning: run not recorded in the catalog" in result.err
    assert (tmp_path / "o" / "train.parquet").exists()


# --------------------------------------------------------------------------------------------------
# the runs and sql commands


def _route(cli, uf1k, tmp_path, *extra):
    result = cli("route", uf1k, "--threshold", "0.5", "--out", tmp_path / "o", "--force", *extra)
    assert result.code == 0, result.err
    return json.loads((tmp_path / "o" / "plan.json").read_text())


def test_route_is_recorded_and_runs_lists_it(cli, uf1k, tmp_path):
    plan = _route(cli, uf1k, tmp_path)
    result = cli("runs", "--json")
    assert result.code == 0
    (run,) = json.loads(result.out)
    assert run["kind"] == "route" and run["status"] == "ok"
    assert run["figures"]["sft"] == 110 and run["figures"]["dpo"] == 885
    assert run["figures"]["threshold"] == 0.5
    assert run["params"]["mode"] == "mixdpo"
    assert run["inputs"][0]["sha256"] == plan["input"]["sha256"]
    assert run["outputs"]["dir"] == str((tmp_path / "o").resolve())
    assert run["command"].startswith("prefcurate route ") and "--threshold 0.5" in run["command"]
    table = cli("runs")
    assert table.code == 0
    assert run["run_id"] in table.out and "885 dpo, 110 sft" in table.out


def test_runs_on_an_empty_catalog(cli):
    result = cli("runs")
    assert result.code == 0 and result.out == "" and "no runs recorded" in result.err
    assert cli("runs", "--json").out.strip() == "[]"


def test_sql_counts_the_ties_of_ultrafeedback(cli, uf1k):
    result = cli("sql", "select count(*) as n from pairs where margin < 0.5", "--data", uf1k)
    assert result.code == 0, result.err
    assert result.out.split() == ["n", "---", "111"]
    as_json = cli(
        "sql", "select count(*) as n from pairs where margin < 0.5", "--data", uf1k, "--json"
    )
    assert json.loads(as_json.out) == [{"n": 111}]


def test_sql_pairs_view_has_the_canonical_columns(cli, uf1k):
    result = cli("sql", "select column_name from (describe pairs)", "--data", uf1k, "--csv")
    assert result.code == 0, result.err
    names = result.out.split()[1:]
    assert names[:9] == [
        "pair_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin",
        "difficulty", "source",
    ]  # fmt: skip
    assert "_row" not in names and "_issue" not in names


def test_sql_over_the_catalog_joins_runs_and_inputs(cli, uf1k, tmp_path):
    _route(cli, uf1k, tmp_path)
    _route(cli, uf1k, tmp_path, "--mode", "filter")
    result = cli(
        "sql",
        "select r.params->>'mode' as mode, (r.figures->>'sft')::int as sft, i.rows "
        "from runs r join inputs i using (run_id) order by mode",
        "--csv",
    )
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["mode,sft,rows", "filter,0,1000", "mixdpo,110,1000"]
    both = cli(
        "sql",
        "select count(*) as n, (select count(*) from runs) as runs from pairs where margin < 0.5",
        "--data",
        uf1k,
        "--json",
    )
    assert both.code == 0, both.err
    assert json.loads(both.out) == [{"n": 111, "runs": 2}]


@pytest.mark.parametrize(
    "query",
    [
        "delete from runs",
        "insert into runs (run_id) values ('x')",
        "create table t as select 1",
        "attach 'other.duckdb' as o",
    ],
)
def test_sql_refuses_writes(cli, uf1k, tmp_path, query):
    _route(cli, uf1k, tmp_path)
    result = cli("sql", query)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "read-only" in result.err
    assert len(json.loads(cli("runs", "--json").out)) == 1


@pytest.mark.parametrize(
    "query",
    [
        "select * from read_csv('{path}')",
        "select * from '{path}'",
        "copy (select 1) to '{path}.out'",
    ],
)
def test_sql_can_reach_no_file(cli, uf1k, tmp_path, query):
    _route(cli, uf1k, tmp_path)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    result = cli("sql", query.format(path=secret), "--data", uf1k)
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert not Path(f"{secret}.out").exists()


def test_sql_errors_are_one_line(cli, uf1k):
    result = cli("sql", "select nope from pairs", "--data", uf1k)
    assert result.code == 2 and result.err.count("\n") == 1
    assert "Binder Error" in result.err and "LINE 1" not in result.err
    missing = cli("sql", "select * from pairs")
    assert missing.code == 2 and "--data" in missing.err


def test_sql_data_goes_through_the_loader(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": \n')
    result = cli("sql", "select count(*) from pairs", "--data", bad)
    assert result.code == 2
    assert "line 2" in result.err and result.err.count("\n") == 1


def test_sql_without_a_catalog_still_queries_data(cli, uf1k, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CATALOG", str(tmp_path / "never-made.duckdb"))
    result = cli("sql", "select max(margin) as m from pairs", "--data", uf1k, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == [{"m": 8.0}]
    assert not (tmp_path / "never-made.duckdb").exists()
