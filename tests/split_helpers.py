"""Write routed splits the way ``prefcurate route`` does, so trainer tests need no route command.

The contract (docs/schema.md): ``train.parquet`` with the canonical pair columns plus ``route``,
``rank``, ``stage``, rows in rank order, and ``plan.json``. Here ``margin = score_chosen −
score_rejected``, ``route = 'sft'`` iff ``margin < threshold``, and the curriculum is margin
descending, ties broken by ``pair_id``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import polars as pl

from prefcurate.schema import MESSAGE_DTYPE


def pair_id(prompt: Any, chosen: Any, rejected: Any) -> str:
    payload = json.dumps([prompt, chosen, rejected], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_uf(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """UltraFeedback rows with their nested ratings lifted to score_chosen / score_rejected."""
    rows = []
    with Path(path).open() as handle:
        for line in handle:
            raw = json.loads(line)
            rows.append(
                {
                    "prompt": raw["prompt"],
                    "chosen": raw["chosen"],
                    "rejected": raw["rejected"],
                    "score_chosen": raw["metadata"]["score_chosen"],
                    "score_rejected": raw["metadata"]["score_rejected"],
                }
            )
            if limit is not None and len(rows) == limit:
                break
    return rows


def synthetic_rows(n: int, seed: int = 0, *, conversational: bool = False) -> list[dict[str, Any]]:
    """Short made-up pairs with ratings; margins 0..3 in steps of 0.5 (so some ties)."""
    rng = random.Random(seed)
    words = "the cat sat on a mat while dogs ran far away from big red barns".split()
    rows = []
    for i in range(n):
        prompt = f"q{i}: " + " ".join(rng.choices(words, k=rng.randint(2, 6)))
        chosen = " ".join(rng.choices(words, k=rng.randint(3, 9)))
        rejected = " ".join(rng.choices(words, k=rng.randint(3, 9)))
        score = rng.choice([6.0, 7.0, 8.0, 9.0])
        margin = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0])
        if conversational:
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "score_chosen": score,
                "score_rejected": score - margin,
            }
        )
    return rows


def write_split(
    split_dir: Path,
    rows: list[dict[str, Any]],
    *,
    threshold: float = 0.5,
    routes: list[str] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Route ``rows`` at ``threshold`` and write ``split_dir/train.parquet`` + ``plan.json``.

    ``routes`` overrides the computed routes (in ``rows`` order); ``drop`` removes columns, to
    test the trainer's refusal of a broken split.
    """
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, row in enumerate(rows):
        margin = row["score_chosen"] - row["score_rejected"]
        route = "sft" if margin < threshold else "dpo"
        records.append(
            {
                "pair_id": pair_id(row["prompt"], row["chosen"], row["rejected"]),
                **row,
                "margin": margin,
                "source": None,
                "route": routes[i] if routes else route,
            }
        )
    records.sort(key=lambda r: (-r["margin"], r["pair_id"]))
    margins = sorted(r["margin"] for r in records)
    for rank, record in enumerate(records):
        below = sum(m < record["margin"] for m in margins)
        record["difficulty"] = 1.0 - below / max(1, len(records) - 1)
        record["rank"] = rank
        record["stage"] = 0
    conversational = isinstance(rows[0]["prompt"], list)
    text = MESSAGE_DTYPE if conversational else pl.String
    schema = {
        "pair_id": pl.String,
        "prompt": text,
        "chosen": text,
        "rejected": text,
        "score_chosen": pl.Float64,
        "score_rejected": pl.Float64,
        "margin": pl.Float64,
        "difficulty": pl.Float64,
        "source": pl.String,
        "route": pl.String,
        "rank": pl.Int64,
        "stage": pl.Int64,
    }
    frame = pl.DataFrame(records, schema=schema).drop(list(drop))
    frame.write_parquet(split_dir / "train.parquet")
    counts = frame["route"].value_counts().rows() if "route" in frame.columns else []
    plan = {
        "version": 1,
        "input": {"path": "test", "sha256": "", "rows": len(rows)},
        "mode": "threshold",
        "threshold": threshold,
        "sft_fraction": None,
        "order": "margin-desc",
        "stages": 1,
        "seed": 0,
        "counts": {"in": len(rows), **dict(counts), "dropped": 0, "dropped_by_reason": {}},
        "outputs": {"train": "train.parquet", "eval": None},
    }
    (split_dir / "plan.json").write_text(json.dumps(plan, indent=2))
    return split_dir
