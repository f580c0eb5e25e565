"""Small routed splits for the trainer's tests, written by prefcurate's own route library.

Rows are made up here (or read from a real file), stored as JSONL, loaded with the loader and routed
with :func:`prefcurate.routing.plan.plan_routes`, so the trainer is tested against the split route
really writes (docs/route.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import polars as pl

from prefcurate.data.io import open_pairs
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.writer import write_route


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
    rows: list[dict[str, Any]] | Path,
    *,
    threshold: float = 0.5,
    routes: list[str] | None = None,
    drop: tuple[str, ...] = (),
    soft: float | None = None,
    placement: str | None = None,
) -> Path:
    """Route ``rows`` (or a data file) at ``threshold`` with prefcurate's own route library.

    ``soft`` is ``route --soft T``: the split gets its weight column; ``placement`` is
    ``route --placement``.

    ``routes`` then overrides the routes (in ``rows`` order) and ``drop`` removes columns, to test
    what the trainer does with a split that route would never write.
    """
    split_dir = Path(split_dir)
    data = rows
    if not isinstance(rows, Path):
        data = split_dir.with_name(split_dir.name + ".jsonl")
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = open_pairs(data)
    write_route(
        plan_routes(source, threshold=threshold, soft=soft, placement=placement),
        split_dir,
        force=True,
    )
    if routes is None and not drop:
        return split_dir
    train = split_dir / "train.parquet"
    frame = pl.read_parquet(train)
    if routes is not None:
        ids = source.collect().get_column("pair_id").to_list()
        frame = frame.with_columns(
            pl.col("pair_id").replace_strict(dict(zip(ids, routes, strict=True))).alias("route")
        )
    frame.drop(list(drop)).write_parquet(train)
    return split_dir
