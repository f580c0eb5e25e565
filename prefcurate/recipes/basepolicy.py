"""The toy task's base policy: the ``tiny`` model after SFT on demonstrations, trained once.

Every arm and every seed of the benchmark starts from the same base policy (and uses it as the DPO
reference), so the arms differ only in how they learn from the pairs. Training it takes the bulk
of a short run, so it is cached on disk under ``<cache>/basepolicy/<key>/`` where the key hashes
:class:`BaseConfig` and the task's version; a second benchmark or the demo loads it in a second.

It is trained with prefcurate's own pieces: the demonstrations are routed all-``sft`` by
:func:`prefcurate.routing.plan.plan_routes` and trained by :func:`trainers.loop.train`, with the
model's outputs restricted to the task's alphabet
(:func:`prefcurate.recipes.toytask.allowed_token_ids`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefcurate.recipes import toytask

#: Bump when the task or the recipe changes meaning, so old cached policies are not reused.
TASK_VERSION = 1


@dataclass(frozen=True)
class BaseConfig:
    """How the base policy is made; its hash names the cached model."""

    demos: int = 4000
    error_rate: float = 0.5
    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0

    def key(self, exclude: frozenset[str] = frozenset()) -> str:
        """The cache key: these settings, the task's version and the prompts kept out of training.

        The excluded prompts change the demonstrations, so they are part of the key: the demo
        (300 held-out prompts) and the benchmark (1,000) each get their own base policy, whichever
        ran first.
        """
        import hashlib

        from trainers.cache import cache_key

        held_out = hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest()
        return cache_key(kind="basepolicy", task=TASK_VERSION, exclude=held_out, **asdict(self))[
            :16
        ]


def base_policy(
    config: BaseConfig,
    *,
    cache_dir: Path | None = None,
    exclude: frozenset[str] = frozenset(),
    reporter: Any = None,
) -> Path:
    """The base policy's model directory: from the cache, or trained now and cached.

    ``exclude`` are prompts the demonstrations must not use (the held-out prompts); they are part
    of the cache key.
    """
    from prefcurate.base.cachedir import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / "basepolicy" / config.key(exclude)
    if (target / "model" / "config.json").is_file():
        return target / "model"
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".basepolicy-", dir=target.parent))
    try:
        _train(config, work, root, exclude, reporter)
        (work / "base.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        shutil.rmtree(work / "run" / "checkpoints", ignore_errors=True)
        os.replace(work / "run" / "model", work / "model")
        shutil.rmtree(work / "run")
        shutil.rmtree(work / "split")
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(work)
        else:
            os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "model"


def demonstration_rows(config: BaseConfig, exclude: frozenset[str]) -> list[dict[str, Any]]:
    """The SFT demonstrations: correct answers, and with ``error_rate`` flawed ones."""
    rng = random.Random(f"demos-{config.seed}")
    rows = []
    for prompt in toytask.make_prompts(rng, config.demos, exclude=exclude):
        rows.append(
            {
                "prompt": prompt,
                "chosen": toytask.demonstration(prompt, rng, error_rate=config.error_rate),
                # sft pairs never read the rejected side; a flawed answer keeps the row honest
                "rejected": toytask.demonstration(prompt, rng, error_rate=1.0),
            }
        )
    return rows


def _train(config: BaseConfig, work: Path, cache_dir: Path, exclude, reporter) -> None:
    from prefcurate.recipes.pipeline import route_and_train
    from prefcurate.routing.plan import Mode, Order
    from trainers.config import TrainConfig
    from trainers.model import build_tiny

    data = work / "demos.jsonl"
    rows = demonstration_rows(config, exclude)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = build_tiny(config.seed).tokenizer
    route_and_train(
        data,
        TrainConfig(
            split_dir=work / "split",
            model="tiny",
            out=work / "run",
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            max_length=32,
            seed=config.seed,
            cache_dir=cache_dir,
            allowed_token_ids=toytask.allowed_token_ids(tokenizer),
        ),
        reporter=reporter,
        mode=Mode.SFT,
        order=Order.RANDOM,
        seed=config.seed,
    )
