"""Hugging Face names (``owner/name``) of models and data: read from the local cache, not fetched.

prefcurate runs without a network (no download at run time). Yet a user may already hold a model
or a dataset in the Hugging Face cache (from ``hf download``, or an earlier ``from_pretrained`` or
``load_dataset``) and name it as the Hub does: ``--model Qwen/Qwen2.5-0.5B``, ``prefcurate
analyze trl-lib/ultrafeedback_binarized``. :func:`resolve_hub` finds that repository's snapshot
folder in the cache, offline, with huggingface_hub's own lookup (``snapshot_download`` with
``local_files_only``: it reads ``refs/main`` and ``snapshots/`` and makes no network call). The
cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read when
called. A name the cache lacks is one line: the exact ``hf download`` command, and what to pass
after it. A path that exists is always a path, whatever it looks like.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prefcurate.base.errors import InputError

#: ``owner/name`` as the Hub spells repository ids: one slash, letters, digits, ``-``, ``_``, ``.``.
HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Suffixes that make ``dir/file.ext`` a file path rather than a repository id.
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".gz", ".zst", ".pq")

MODEL, DATASET = "model", "dataset"


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, by the variables huggingface_hub itself reads."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def is_hub_name(spec: str | Path) -> bool:
    """Whether ``spec`` reads as a Hub repository id and not as a path that exists or a file."""
    text = str(spec)
    if not HUB_NAME.fullmatch(text) or text.lower().endswith(_FILE_SUFFIXES):
        return False
    return not Path(text).exists()


def resolve_hub(spec: str | Path, *, repo_type: str, flag: str) -> Path | None:
    """The cached snapshot folder of the Hub repository ``spec``; None when ``spec`` is a path.

    ``repo_type`` is :data:`MODEL` or :data:`DATASET`; ``flag`` is the option the user typed the
    name after (``--model``; empty for the DATA argument), for the hint. Raises
    :class:`~prefcurate.base.errors.InputError` when the name is no local path and not in the
    cache, with the ``hf download`` command to run.
    """
    if not is_hub_name(spec):
        return None
    name, cache = str(spec), hub_cache()
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a core dependency; kept for a stripped install
        raise _missing(name, repo_type, flag, cache) from None
    try:
        folder = snapshot_download(
            name, repo_type=repo_type, cache_dir=cache, local_files_only=True
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise _missing(name, repo_type, flag, cache) from None
    return Path(folder)


def download_command(name: str, repo_type: str) -> str:
    """The ``hf download`` command that puts ``name`` into the cache."""
    return f"hf download {name}" + (" --repo-type dataset" if repo_type == DATASET else "")


def _missing(name: str, repo_type: str, flag: str, cache: Path) -> InputError:
    kind = "model directory" if repo_type == MODEL else "file or folder"
    again = f"pass {flag} {name} again" if flag else f"pass {name} again"
    return InputError(
        f"no such {kind}, and no Hugging Face {repo_type} of that name in the local cache "
        f"({cache})",
        where=name,
        fix=f"check the path, or run '{download_command(name, repo_type)}' and {again}: "
        "prefcurate reads that cache and never downloads",
    )
