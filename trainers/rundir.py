"""The run directory: what ``train --out`` may hold, and proof that a resume continues the same run.

A run directory is prefcurate's when it carries the manifest of :mod:`prefcurate.base.outdir`; it
holds only :data:`RUN_OUTPUTS` (and their temporary names). ``--force`` deletes exactly those,
and refuses a folder that holds anything else. ``run.json`` and every checkpoint record the
split's content hash and the model's fingerprint; ``--resume`` on another split or another model
is refused naming both, so one run directory is always one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prefcurate.base.interrupt as interrupt
from prefcurate.base.errors import InputError, MachineFault, no_space, one_line
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
    _refuse_links(out)
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


def _refuse_links(out: Path) -> None:
    """A run never writes through a symbolic link: metrics.jsonl appended to, run.json or model/
    replaced, a checkpoint pruned would reach the file or folder it points to."""
    checkpoints = out / "checkpoints"
    places = [out / name for name in RUN_OUTPUTS]
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        places += sorted(checkpoints.iterdir())
    links = [str(p.relative_to(out)) for p in places if p.is_symlink()]
    if links:
        raise InputError(
            f"--out holds a symbolic link where the run writes ({', '.join(links[:5])}); "
            "refusing to write through it",
            where=out,
            fix="replace the link with the real file or folder, or choose another --out",
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


# --------------------------------------------------------------------------------------------------
# how a run ended


@contextlib.contextmanager
def record_ending(out: Path, *, main: bool) -> Iterator[None]:
    """run.json says how the run ended, not "running" forever: "failed" with the error when the
    block raises, "interrupted" or "terminated" when a signal ends the process (written from the
    signal watcher, :func:`prefcurate.base.interrupt.at_stop`). Either way the partial checkpoint
    folders go. A full disk is one line that says what was kept (:class:`MachineFault`).
    """
    if not main:
        yield
        return
    undo = interrupt.at_stop(lambda code: _ended(out, {130: "interrupted"}.get(code, "terminated")))
    try:
        yield
    except BaseException as exc:
        # a signal's watcher removes the partial checkpoint the block may be writing: the error
        # that causes is the interrupt's, and the watcher writes "interrupted" and ends the process
        interrupt.yield_to_stop()
        full = no_space(exc) or _nearly_full(out)  # torch's zip writer says "unexpected pos"
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {one_line(exc, 300)}"
        _ended(out, status, error=error + (" (no space left on device)" if full else ""))
        if full:
            raise MachineFault(_no_space_line(out)) from exc
        raise
    finally:
        undo()


def _ended(out: Path, status: str, *, error: str | None = None) -> None:
    """Mark a run.json that still says "running" (best effort: the disk may be full)."""
    for partial in (out / "checkpoints").glob(".step-*.tmp"):
        shutil.rmtree(partial, ignore_errors=True)
    try:
        run = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(run, dict) or run.get("status") != "running":
        return
    run["status"] = status
    if error is not None:
        run["error"] = error
    with contextlib.suppress(OSError):
        tmp = out / f".{RUN_JSON}.tmp"
        tmp.write_text(json.dumps(run, indent=2, default=str) + "\n")
        os.replace(tmp, out / RUN_JSON)


def _nearly_full(out: Path) -> bool:
    """Under 1 MiB free where the run writes: whatever a library called the failure, it is this."""
    try:
        stats = os.statvfs(out)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


def _no_space_line(out: Path) -> str:
    kept = sorted(
        (int(p.name.split("-")[1]), p.name)
        for p in (out / "checkpoints").glob("step-*")
        if p.name.split("-")[1].isdigit() and (p / "state.json").is_file()
    )
    if not kept:
        return (
            f"{out}: no space left on device while training; run.json says the run failed, no "
            "checkpoint was complete (free some space, then start over with --force)"
        )
    return (
        f"{out}: no space left on device while training; run.json says the run failed, "
        f"checkpoints up to {kept[-1][1]} are kept (free some space, then continue with --resume)"
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
