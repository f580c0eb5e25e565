"""Where prefcurate keeps its caches (tokenised splits, reference log-probs, scores, base policy).

One rule for the data floor and the trainer floor, torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$PREFCURATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/prefcurate`` (``~/.cache/prefcurate``)."""
    if env := os.environ.get("PREFCURATE_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prefcurate"
