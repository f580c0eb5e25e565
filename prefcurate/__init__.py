"""prefcurate: see the margin structure of a preference dataset, route it, and train MixDPO.

The data side (this package) never imports torch. A notebook gets the same figures as the CLI::

    >>> import prefcurate
    >>> source = prefcurate.open_pairs("../shared/data/ultrafeedback_1k.jsonl")  # doctest: +SKIP
    >>> report = prefcurate.analyze(source, threshold=0.5)                       # doctest: +SKIP
    >>> report.routing.sft, report.routing.dpo                                   # doctest: +SKIP
    (111, 889)
    >>> plan = prefcurate.plan_routes(source, threshold=0.5)                     # doctest: +SKIP
    >>> prefcurate.write_route(plan, "splits/uf")                                # doctest: +SKIP

Names are imported on first use, so ``import prefcurate`` stays fast and light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_pairs": "prefcurate.data.io",
    "read_pairs": "prefcurate.data.io",
    "scan_pairs": "prefcurate.data.io",
    "PairSource": "prefcurate.data.io",
    "analyze": "prefcurate.reporting.analyze",
    "analyze_frame": "prefcurate.reporting.analyze",
    "Report": "prefcurate.reporting.analyze",
    "inspect_source": "prefcurate.reporting.inspection",
    "write_page": "prefcurate.reporting.page",
    "plan_routes": "prefcurate.routing.plan",
    "write_route": "prefcurate.routing.writer",
    "RoutePlan": "prefcurate.routing.plan",
    "threshold_for_fraction": "prefcurate.data.margins",
    "synth": "prefcurate.data.synth",
    "write_synth": "prefcurate.data.synth",
    "InputError": "prefcurate.base.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # imported once; no submodule of the same name can replace it
        return value
    msg = f"module 'prefcurate' has no attribute {name!r}"
    raise AttributeError(msg)
