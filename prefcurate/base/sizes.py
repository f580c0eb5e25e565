"""Sizes in one vocabulary (``4GB``, ``512MiB``), and how much of an input ``route`` holds at once.

:func:`parse_size` reads every size flag (``route --text-memory``, ``train --max-shard-size``).
``route`` reads an input in one pass (texts and plan together) when the one pass's peak memory,
about :data:`ONE_PASS_PEAK` times the input's in-memory size, fits ``--text-memory``; a larger
input is read twice: a narrow pass for the plan, then the texts a window of ranks at a time, so the
table is never held whole. Both strategies write the same bytes. The budget is for the texts held
at once, not a cap on the process: the narrow pass itself reads, hashes and checks every row.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prefcurate.base.errors import InputError

#: Share of the machine's physical memory ``route`` may fill with the input when no budget is given:
#: an eighth leaves room for the rest of a user's work (a notebook, a trainer) on the same machine.
DEFAULT_RAM_SHARE = 0.125
#: Peak memory of the one pass per byte of estimated input: the texts, the plan's frame and the
#: Parquet sink's row groups in flight (1M synthetic pairs, 2.90 GB estimated: 4.04 GB peak).
ONE_PASS_PEAK = 1.4
#: Budget when the machine's memory cannot be read.
FALLBACK_BUDGET = 2_000_000_000
#: Assumed expansion of a compressed text file (.gz, .zst, .bz2, .xz) into memory.
COMPRESSED_TEXT_RATIO = 5

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?\s*$", re.I)


def parse_size(text: str | int, *, flag: str = "--text-memory") -> int:
    """Bytes from ``text``: a number with an optional unit (``4GB``, ``512MiB``, ``1.5G``)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise InputError(
                f"{flag} must be a size such as 4GB, 512MB or 1.5GiB, got {text!r}",
                fix=f"pass {flag} 4GB (units: KB, MB, GB, TB; KiB, MiB, GiB, TiB)",
            )
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value < 0:
        raise InputError(f"{flag} must not be negative, got {text!r}")
    return value


def default_budget() -> int:
    """:data:`DEFAULT_RAM_SHARE` of the machine's physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return FALLBACK_BUDGET
    return int(total * DEFAULT_RAM_SHARE) if total > 0 else FALLBACK_BUDGET


def fits_one_pass(input_bytes: int, budget: int) -> bool:
    """Whether reading an input of ``input_bytes`` (estimated) in one pass stays in ``budget``."""
    return input_bytes * ONE_PASS_PEAK <= budget


def estimate_input_bytes(paths: tuple[Path, ...] | list[Path], fmt: str) -> int:
    """The input's size once read into memory, estimated without reading its rows.

    Parquet: the uncompressed size its metadata records; compressed text files: their size times
    :data:`COMPRESSED_TEXT_RATIO`; anything else: its size on disk.
    """
    total = 0
    for path in paths:
        path = Path(path)
        if fmt == "parquet":
            total += _parquet_uncompressed(path)
        elif path.suffix.lower() in (".gz", ".zst", ".bz2", ".xz"):
            total += path.stat().st_size * COMPRESSED_TEXT_RATIO
        else:
            total += path.stat().st_size
    return total


def _parquet_uncompressed(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001 - the reader reports a broken file with its own message
        return path.stat().st_size
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
