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


def test_every_exported_name_is_the_same_object_after_every_import_and_call(tmp_path):
    before = {name: getattr(prefcurate, name) for name in prefcurate._EXPORTS}
    for module in _every_data_module():
        importlib.import_module(module)
    pairs = tmp_path / "pairs.jsonl"
    for _ in range(2):  # a notebook cell run twice
        frame = prefcurate.synth(50, seed=1)
        prefcurate.write_synth(pairs, n=50, seed=1, force=True)
        source = prefcurate.open_pairs(pairs)
        prefcurate.analyze(source, threshold=0.5)
        prefcurate.plan_routes(source, threshold=0.5)
    after = {name: getattr(prefcurate, name) for name in prefcurate._EXPORTS}
    assert frame.height == 50
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
