"""The composition every recipe shares: open the pairs → plan the routes → write the split →
train on it, the library calls behind ``prefcurate route`` then ``prefcurate train``.

    >>> from trainers.config import TrainConfig
    >>> from prefcurate.recipes.pipeline import route_and_train
    >>> config = TrainConfig(split_dir="split", model="tiny", out="run")      # doctest: +SKIP
    >>> plan, result = route_and_train("pairs.jsonl", config, threshold=0.5)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefcurate.commands.route import route_dir
from prefcurate.data.io import open_pairs
from prefcurate.routing.plan import RoutePlan, plan_routes

if TYPE_CHECKING:
    from trainers.config import TrainConfig, TrainResult
    from trainers.reporter import Reporter


def route_file(
    data: str | Path, split: str | Path, *, plots: bool = False, **plan: Any
) -> RoutePlan:
    """Route the pairs in ``data`` (``plan`` are :func:`~prefcurate.routing.plan.plan_routes`'s
    keywords) and write the split into the new folder ``split``; return the plan."""
    routed = plan_routes(open_pairs(data), **plan)
    route_dir(routed, split, plots=plots)
    return routed


def route_and_train(
    data: str | Path, config: TrainConfig, *, reporter: Reporter | None = None, **plan: Any
) -> tuple[RoutePlan, TrainResult]:
    """Route ``data`` into ``config.split_dir``, then train on it with ``config``."""
    from trainers.loop import train

    routed = route_file(data, config.split_dir, **plan)
    return routed, train(config, reporter=reporter)
