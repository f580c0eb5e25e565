"""On-disk caches of token ids and reference log-probs, keyed by content hashes.

Both are pure functions of their inputs, so a hit is safe to reuse across runs and on resume:

* tokens: keyed by the split's ``train.parquet`` SHA-256, the tokenizer's fingerprint and
  ``--max-length``;
* reference log-probs: keyed by everything that changes one
  (:func:`trainers.prepare.reference_identity`): the reference model's fingerprint (weights by
  content), the tokenizer and chat template, the tokens' digest (data, routes and truncation),
  ``--max-length``, the dtype the model computes in, the precision and device, the quantization,
  the attention implementation, packing and the allowed tokens.

Files are safetensors written atomically (temporary file, then ``os.replace``), in
``--cache-dir``, else ``$PREFCURATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/prefcurate`` (by default
``~/.cache/prefcurate``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from prefcurate.base.errors import one_line
from prefcurate.base.log import get_logger
from trainers.data import TEXT_COLUMNS

#: Bump when tokenisation or log-prob code changes what a cached entry would contain
#: (2: a pair's SFT mix is stored as ``sft_mix``).
CACHE_VERSION = 2


def cache_key(**parts: Any) -> str:
    """SHA-256 of the JSON of ``parts`` plus the cache version."""
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of what decides token ids: class, vocabulary, special tokens and chat template."""
    payload = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.special_tokens_map,
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


#: The tensors and metadata an entry of each kind must hold; an entry without them is a miss.
REQUIRED = {
    "reference": (("chosen", "rejected"), ()),
    "tokens": (
        ("is_dpo", *(f"{n}.{part}" for n in TEXT_COLUMNS for part in ("values", "offsets"))),
        ("pair_ids", "truncated", "identical", "chat_template"),
    ),
}


def load(cache_dir: Path, kind: str, key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The cached tensors and metadata of ``kind``/``key``, or None on a miss.

    A damaged entry (truncated, overwritten, missing a tensor) is a miss with a warning: it is
    computed again and replaced, never an error.
    """
    path = _path(cache_dir, kind, key)
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("prefcurate", "{}"))
            if not isinstance(meta, dict) or meta.get("key") != key:
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        _damaged(path, str(exc))
        return None
    names, fields = REQUIRED.get(kind, ((), ()))
    missing = [n for n in names if n not in tensors] + [f for f in fields if f not in meta]
    if missing:
        _damaged(path, f"no {missing[0]!r}")
        return None
    return tensors, meta


def _damaged(path: Path, why: str) -> None:
    get_logger("trainers.cache").warning(
        "%s: damaged cache entry (%s); computing it again", path, one_line(why, 120)
    )


def save(
    cache_dir: Path, kind: str, key: str, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> Path:
    """Write an entry atomically; concurrent writers of the same key race harmlessly."""
    path = _path(cache_dir, kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, tmp, metadata={"prefcurate": json.dumps({**meta, "key": key})})
    os.replace(tmp, path)
    return path


def _path(cache_dir: Path, kind: str, key: str) -> Path:
    return Path(cache_dir) / kind / f"{key[:32]}.safetensors"
