"""``prefcurate inspect``: one page for data, a split directory or a run directory.

Reads the target (the pairs, a split with its plan.json, a run with its metrics and split),
computes the figures (:mod:`prefcurate.reporting.inspection`, :mod:`prefcurate.reporting.runstats`)
and writes the page (:mod:`prefcurate.reporting.page`). The ``--out`` guard runs first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.base.outdir import check_place
from prefcurate.data.io import open_pairs
from prefcurate.data.runs import is_run_dir, read_run
from prefcurate.reporting import runstats
from prefcurate.reporting.inspection import SAMPLES_PER_BIN, Inspection, inspect_source
from prefcurate.reporting.page import GENERATOR, write_page


def is_split_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "train.parquet").is_file() and (path / "plan.json").is_file()


def build_page(
    target: str | Path,
    out: str | Path,
    *,
    source=None,
    threshold: float | None = None,
    sft_fraction: float | None = None,
    samples_per_bin: int | None = None,
    seed: int = 0,
) -> tuple[Inspection, dict[str, Any] | None]:
    """Inspect ``target`` (data, a split directory or a run directory) and write the page.

    ``source`` is the :class:`~prefcurate.data.io.PairSource` to read for plain data (the CLI opens
    it with the column flags); a split is read from its train.parquet with plan.json's τ unless one
    is given; a run directory adds its curves and reward accuracy per margin bin to its split's
    page.
    """
    k = SAMPLES_PER_BIN if samples_per_bin is None else samples_per_bin
    target = Path(target)
    view = read_run(target) if is_run_dir(target) else None
    split_dir = view.split_dir if view is not None else (target if is_split_dir(target) else None)
    header = None
    if split_dir is not None:
        plan = json.loads((split_dir / "plan.json").read_text(encoding="utf-8"))
        if threshold is None and sft_fraction is None:
            threshold = plan.get("threshold")
        counts = plan.get("counts", {})
        header = (
            f"routed split {split_dir}/: mode {plan.get('mode')}, order {plan.get('order')}, "
            f"{counts.get('dpo', 0):,} dpo / {counts.get('sft', 0):,} sft "
            f"({counts.get('dropped', 0):,} dropped) as plan.json records"
        )
        source = open_pairs(split_dir / "train.parquet")
    elif source is None and view is None:
        source = open_pairs(target)
    run = None
    if source is None:  # a run whose split is gone: the run's figures only
        seen = None
    else:
        seen = inspect_source(
            source, threshold=threshold, sft_fraction=sft_fraction, samples_per_bin=k, seed=seed
        )
        if header:
            seen.extra["header"] = header
    if view is not None:
        split = None
        if split_dir is not None:
            split = pl.read_parquet(
                split_dir / "train.parquet", columns=["rank", "margin", "route"]
            )
        hist = seen.report.histogram if seen is not None else None
        run = runstats.run_figures(view, split=split, hist=hist)
    if seen is None:
        raise InputError(
            "the run's split was not found, so there are no pairs to show",
            where=target,
            fix="keep the split directory next to the run, or inspect the split directly",
        )
    write_page(seen, out, run=run)
    return seen, run


def check_page_out(out: str | Path, *, force: bool, inputs: list[str | Path] = ()) -> None:
    """Refuse an ``--out`` that is a directory, an input, or a file prefcurate did not write.

    Runs before any data is read. A page written by ``inspect`` (it carries
    ``<meta name="generator" content="prefcurate inspect">``) is replaced; any other file needs
    ``force``; an input is never replaced.
    """
    out = Path(out)
    fix = "pass another --out"
    check_place(out, inputs, "--out")  # never an input, a link, a system folder, / or home
    if out.is_dir():
        raise InputError("--out is a directory", where=out, fix="pass a file name ending in .html")
    if not out.exists():
        return
    if force:
        return
    try:
        with out.open("rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace")
    except OSError as exc:
        raise InputError(f"cannot read the existing --out ({exc})", where=out, fix=fix) from None
    if f'<meta name="generator" content="{GENERATOR}">' not in head:
        raise InputError(
            "--out exists and was not written by prefcurate inspect",
            where=out,
            fix="pass --force to replace it, or another --out",
        )
