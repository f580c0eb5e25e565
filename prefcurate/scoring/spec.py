"""The contract between ``prefcurate score`` (data floor) and :mod:`trainers.scoring` (models).

The kinds of scoring model, the flag that passes each, and :class:`ModelIdentity` — what a score
depends on, known before any weight is loaded, and the score cache's key. Torch-free, so the data
floor and the trainer floor can both name them without importing each other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

#: Bump when a change to the scoring code changes what a cached score would be.
SCORE_VERSION = 1

REWARD, REFERENCE, EMBEDDING = "reward", "reference", "embedding"

#: The flag that passes each kind of model.
FLAGS = {REWARD: "--reward-model", REFERENCE: "--reference", EMBEDDING: "--embedding"}


def sha256_of(parts: dict[str, Any]) -> str:
    """SHA-256 of ``parts`` as sorted JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a score depends on, known before any weight is loaded: the cache's key."""

    kind: str
    spec: str
    architecture: str
    fingerprint: str  # weights and config by content (trainers.model.directory_fingerprint)
    tokenizer: str  # trainers.cache.tokenizer_fingerprint
    max_length: int  # tokens per text, at most; longer texts are truncated
    limit: str  # where max_length comes from
    pooling: str | None  # embedding: "mean" or "cls"
    device: str
    precision: str  # "fp32" or "bf16"
    width: int  # numbers per text: a reward; a summed log-prob and its token count; an embedding

    def binding(self) -> dict[str, Any]:
        """The fields a cached score is valid for (everything but the path it was loaded from)."""
        return {
            "score_version": SCORE_VERSION,
            "kind": self.kind,
            "architecture": self.architecture,
            "fingerprint": self.fingerprint,
            "tokenizer": self.tokenizer,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "device": self.device,
            "precision": self.precision,
        }

    def key(self) -> str:
        return sha256_of(self.binding())

    def describe(self) -> dict[str, Any]:
        return {"model": self.spec, **self.binding()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(**{f.name: data[f.name] for f in fields(cls)})
