"""``import prefcurate`` behaves like a library: its names stay what they are, call after call."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import subprocess
import sys

import prefcurate


def _every_data_module() -> list[str]:
    """Every module of the data floor (the CLI, recipes and integrations need more than it)."""
    skip = ("prefcurate.cli", "prefcurate.recipes", "prefcurate.integrations")
    names = []
    for info in pkgutil.walk_packages(prefcurate.__path__, "prefcurate."):
        if not info.name.startswith(skip) and info.name != "prefcurate.__main__":
            names.append(info.name)
    return names


def _call_every_export(tmp_path, round_: int) -> set[str]:
    """Call each exported function (and build each exported class) once; return the names."""
    pairs = tmp_path / "pairs.jsonl"
    prefcurate.write_synth(pairs, n=60, seed=1, force=True)
    frame = prefcurate.synth(60, seed=1)
    source = prefcurate.open_pairs(pairs)
    assert prefcurate.read_pairs(pairs).height == prefcurate.scan_pairs(pairs).collect().height
    report = prefcurate.analyze(source, threshold=0.5)
    narrow = prefcurate.inspect_source(source, threshold=0.5)
    prefcurate.analyze_frame(narrow.report.frame, layout=report.layout, threshold=0.5)
    prefcurate.write_page(narrow, tmp_path / f"page{round_}.html")
    plan = prefcurate.plan_routes(source, threshold=prefcurate.threshold_for_fraction(
        frame["score_chosen"] - frame["score_rejected"], 0.2))  # fmt: skip
    prefcurate.write_route(plan, tmp_path / "split", force=True)
    assert isinstance(prefcurate.InputError("a what", fix="a fix"), Exception)
    assert isinstance(report, prefcurate.Report) and isinstance(plan, prefcurate.RoutePlan)
    assert isinstance(source, prefcurate.PairSource)
    return set(prefcurate._EXPORTS)


def test_every_exported_name_is_the_same_object_after_every_import_and_call(tmp_path):
    before = {name: getattr(prefcurate, name) for name in prefcurate._EXPORTS}
    for module in _every_data_module():
        importlib.import_module(module)
    for round_ in range(2):  # a notebook cell run twice
        covered = _call_every_export(tmp_path, round_)
    after = {name: getattr(prefcurate, name) for name in prefcurate._EXPORTS}
    assert covered == set(before)
    changed = [name for name in before if after[name] is not before[name]]
    assert changed == [], f"names replaced by a module of the same name: {changed}"
    assert all(not isinstance(v, type(prefcurate)) for v in after.values())


def test_no_subpackage_shares_a_name_with_an_exported_function():
    subpackages = {info.name for info in pkgutil.iter_modules(prefcurate.__path__)}
    assert subpackages & set(prefcurate._EXPORTS) == set()


def test_the_readme_snippet_runs_twice_in_one_process(uf1k):
    code = (
        "import prefcurate\n"
        f"s = prefcurate.open_pairs({str(uf1k)!r})\n"
        "a = prefcurate.analyze(s, threshold=0.5)\n"
        "b = prefcurate.analyze(s, threshold=1.0)\n"
        "print(a.routing.sft, b.routing.sft)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["110", "302"]


def test_library_warnings_go_through_logging_and_can_be_silenced(tmp_path, caplog):
    """A torn last metrics line is a logged warning under ``prefcurate``, not a print."""
    from prefcurate.data.runs import metrics_rows

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "lo')
    with caplog.at_level(logging.WARNING, logger="prefcurate"):
        rows = metrics_rows(path)
    assert [r["step"] for r in rows] == [1]
    [record] = [r for r in caplog.records if r.name.startswith("prefcurate")]
    assert record.levelno == logging.WARNING and "torn final line" in record.getMessage()
    caplog.clear()
    logging.getLogger("prefcurate").setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.ERROR, logger="prefcurate"):
            metrics_rows(path)
        assert [r for r in caplog.records if r.name.startswith("prefcurate")] == []
    finally:
        logging.getLogger("prefcurate").setLevel(logging.NOTSET)


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.out.strip() == f"prefcurate {prefcurate.__version__}"
