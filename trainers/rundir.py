"""The run directory: what ``train --out`` may hold, and proof that a resume continues the same run.

A run directory is prefcurate's when it carries the manifest of :mod:`prefcurate.base.outdir`; it
holds only :data:`RUN_OUTPUTS` (and their temporary names). ``--force`` deletes exactly those,
and refuses a folder that holds anything else. ``run.json`` and every checkpoint record the
split's content hash and the model's fingerprint; ``--resume`` on another split or another model
is refused naming both, so one run directory is always one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefcurate.base.errors import InputError
from prefcurate.base.log import get_logger
from prefcurate.base.outdir import (
    MANIFEST,
    check_place,
    clear_own,
    foreign_entries,
    read_manifest,
    write_manifest,
)
from trainers.model import TINY

METRICS = "metrics.jsonl"
RUN_JSON = "run.json"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"  # a LoRA run's adapter (trainers.export)
#: What ``--force`` may delete in RUN_DIR; nothing else there is ever touched.
RUN_OUTPUTS = (
    "checkpoints",
    MODEL_DIR,
    ADAPTER_DIR,
    METRICS,
    RUN_JSON,
    "curves.png",
    "tensorboard",  # --report-to tensorboard
    "wandb",  # --report-to wandb
)
#: Everything a run directory may hold: its outputs and their temporary names.
RUN_ENTRIES = (
    *RUN_OUTPUTS,
    f".{RUN_JSON}.tmp",
    f".{MODEL_DIR}.*",
    f".{ADAPTER_DIR}.*",
    MANIFEST,
)


def check_run_dir(
    out: Path, *, split_dir: Path, models: tuple[str | None, ...], force: bool, resume: bool
) -> None:
    """Refuse a run directory that is dangerous, foreign, or in use without --force/--resume."""
    inputs = [split_dir, *(m for m in models if m and m != TINY)]
    check_place(out, inputs, "--out")
    if out.exists() and not out.is_dir():
        raise InputError("--out exists and is not a directory", where=out)
    if not out.exists():
        return
    foreign = foreign_entries(out, allowed=RUN_ENTRIES)
    if foreign:
        raise InputError(
            f"--out holds files prefcurate did not write ({', '.join(foreign[:5])})",
            where=out,
            fix="choose a new or empty folder for --out",
        )
    existing = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if existing and not resume and read_manifest(out) is None and not _legacy_run(out):
        raise InputError(
            f"--out holds {', '.join(existing)} but is not a prefcurate run directory",
            where=out,
            fix="choose a new or empty folder for --out",
        )
    if existing and not resume and not force:
        raise InputError(
            f"the run directory already holds {', '.join(existing)}",
            where=out,
            fix="pass --resume to continue it, --force to start over, or another --out",
        )


def _legacy_run(out: Path) -> bool:
    """A run directory of a prefcurate that wrote no manifest: its run.json says so."""
    try:
        run = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(run, dict) and {"config", "split", "steps"} <= run.keys()


def start_run_dir(out: Path) -> None:
    """Empty the run's own outputs (checked by :func:`check_run_dir`) and sign the folder."""
    out.mkdir(parents=True, exist_ok=True)
    clear_own(out, allowed=RUN_OUTPUTS)
    write_manifest(out, kind="train", entries=RUN_ENTRIES)


# --------------------------------------------------------------------------------------------------
# identity of a run: the split and the model it trains


def check_same_run(
    saved: dict[str, Any], current: dict[str, Any], *, checkpoint: Path, split_dir: Path, model: str
) -> None:
    """Refuse a resume whose split or model is not the one the run started with (exit 2)."""
    for key, what, now in (
        ("split_sha256", "split", split_dir),
        ("model_fingerprint", "model", model),
    ):
        before = saved.get(key)
        if before is not None and before != current[key]:
            started = saved.get(f"{what}_path", "?")
            raise InputError(
                f"--resume with another {what}: the run was started on {started} "
                f"({key} {before[:16]}), this is {now} ({current[key][:16]})",
                where=checkpoint,
                fix=f"resume with the {what} the run was started with, or start a new --out",
            )


def truncate_metrics(path: Path, step: int) -> None:
    """Keep metrics of steps up to the checkpoint's; a torn final line is dropped with a warning."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            row_step = row["step"]
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:
                get_logger("trainers.rundir").warning("%s: ignoring a torn final line", path)
                break
            raise InputError(
                "not a metrics row", where=f"{path}, line {i + 1}", fix="remove the broken line"
            ) from exc
        if row_step <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
