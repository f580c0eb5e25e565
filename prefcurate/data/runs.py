"""Reading a run directory that ``prefcurate train`` wrote: run.json and metrics.jsonl.

The reporting package draws runs from what these functions return; it never opens a run's
files itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefcurate.base.errors import InputError
from prefcurate.base.log import get_logger

RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunView:
    """A run directory, read: its run.json, its per-step metrics and where its split is."""

    path: Path
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    split_dir: Path | None

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def global_batch(self) -> int:
        config = self.info.get("config", {})
        world = int(self.info.get("world_size") or 1)
        return int(config.get("batch_size", 1)) * int(config.get("grad_accum", 1)) * world

    @property
    def shuffled(self) -> bool:
        return bool(self.info.get("config", {}).get("shuffle"))

    def summary(self) -> str:
        config = self.info.get("config", {})
        steps = len(self.metrics)
        parts = [
            f"{self.info.get('status', 'unknown')}",
            f"{steps:,} steps",
            f"loss {config.get('loss')}",
            f"β = {config.get('beta')}",
            f"lr {config.get('lr')}",
            f"batch {self.global_batch}",
            f"model {config.get('model')}",
        ]
        return " · ".join(str(p) for p in parts)


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / RUN_JSON).is_file()


def read_run(run_dir: str | Path) -> RunView:
    """Read ``RUN_DIR``; :class:`InputError` when it is not a run written by ``train``."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read run.json ({exc})", where=run_dir, fix="pass a RUN_DIR written by train"
        ) from None
    metrics = read_metrics(run_dir)
    return RunView(run_dir, info, metrics, _find_split(run_dir, info))


def _find_split(run_dir: Path, info: dict[str, Any]) -> Path | None:
    """The split the run trained on: its path as recorded, else relative to the run's folder."""
    recorded = info.get("split", {}).get("path") or info.get("config", {}).get("split_dir")
    if not recorded:
        return None
    recorded = Path(recorded)
    candidates = [recorded]
    if not recorded.is_absolute():
        candidates += [run_dir.parent / recorded, run_dir.parent / recorded.name]
    for c in candidates:
        if (c / "train.parquet").is_file():
            return c
    return None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``RUN_DIR/metrics.jsonl``, one per optimizer step.

    A torn final line (a run killed mid-write) is skipped with one logged warning; a broken
    line before the last is an :class:`InputError` naming it.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise InputError("no metrics.jsonl", where=run_dir, fix="pass a RUN_DIR written by train")
    rows = metrics_rows(path)
    if not rows:
        raise InputError("metrics.jsonl has no steps yet", where=path)
    return rows


def metrics_rows(path: Path, *, warn: bool = True) -> list[dict]:
    """Parse a metrics.jsonl, ignoring (with a warning) a torn final line."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read metrics ({exc.strerror})", where=path) from exc
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    rows = []
    for i, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row")
        except ValueError as exc:
            if i == len(numbered) - 1:
                if warn:
                    get_logger("runs").warning(
                        "%s, line %d: ignoring a torn final line "
                        "(the run was stopped while writing it)",
                        path,
                        lineno,
                    )
                break
            raise InputError(
                "not a metrics row", where=f"{path}, line {lineno}", fix="remove the broken line"
            ) from exc
        rows.append(row)
    return rows


def read_summary(run_dir: str | Path) -> dict:
    """``run.json``'s result summary (means over the last window), or {} for a run not finished."""
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text())["result"]["summary"] or {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@dataclass(frozen=True)
class RunCurves:
    """What ``prefcurate plot`` draws of a run: its name, per-step metrics and run.json summary."""

    name: str
    metrics: list[dict]
    summary: dict


def read_curves(run_dir: str | Path) -> RunCurves:
    """Read the curves of ``RUN_DIR`` (:class:`InputError` without metrics)."""
    name = Path(run_dir).name or str(run_dir)
    return RunCurves(name, read_metrics(run_dir), read_summary(run_dir))
