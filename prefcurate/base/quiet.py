"""Dependencies' own output kept off the user's screen, unless ``--debug``.

prefcurate speaks for itself: its progress bars, its tables, one line per problem. The libraries
it drives would add their own: transformers' "Loading weights" bars and its "Token indices
sequence length is longer than the specified maximum" advice (prefcurate truncates itself),
datasets' map bars, TRL's and transformers' FutureWarnings, and noise at import time (torchao's
"Failed to load … .so" lines and torch's pytree deprecations, printed when PEFT or TRL imports
torchao). :func:`quiet_dependencies` silences them for the span of a command or a call and puts
everything back afterwards; with ``--debug`` (or ``PREFCURATE_DEBUG=1``) it does nothing, so a
bug report shows all of it.

Nothing here imports those libraries (this is the data floor): it raises their loggers' levels by
name, filters warnings by the module they come from and, for a whole command, sets the
environment switches they read when they start (a variable the user set keeps its value).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: The loggers of the libraries prefcurate drives (and of what they import: torchao, torch's
#: pytree registry); each is raised to ERROR while quiet.
DEPENDENCY_LOGGERS: tuple[str, ...] = (
    "transformers",
    "datasets",
    "trl",
    "peft",
    "accelerate",
    "huggingface_hub",
    "torchao",
    "torch.utils._pytree",
    "torch.distributed.elastic",
)
#: Warnings raised from these modules (``warnings.warn`` in their code) are ignored while quiet.
DEPENDENCY_MODULES = (
    r"(transformers|datasets|trl|peft|accelerate|huggingface_hub|torchao|torch|tokenizers)(\.|$)"
)
#: The switches the libraries read when they are imported: log levels and progress bars.
QUIET_ENV: dict[str, str] = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TORCH_LOGS": "-all",
}


def debug_requested() -> bool:
    """Whether ``PREFCURATE_DEBUG`` asks for everything (the CLI's ``--debug`` sets it too)."""
    return os.environ.get("PREFCURATE_DEBUG", "") not in ("", "0")


@contextmanager
def quiet_dependencies(*, enabled: bool = True, env: bool = False) -> Iterator[None]:
    """Keep dependencies' warnings, log lines and (with ``env``) progress bars quiet inside.

    ``enabled=False``, or ``PREFCURATE_DEBUG`` set, leaves everything as it is. ``env`` is the
    command line's whole run: it also sets :data:`QUIET_ENV` for libraries imported inside the
    block (variables the user already set are kept), ignores every Python warning (numpy's and
    matplotlib's RuntimeWarnings too: what matters to the user is prefcurate's to say, once) and
    gives the root logger a null handler, so no foreign record reaches Python's last-resort
    printer. Levels, filters, handlers and variables are restored on exit.
    """
    if not enabled or debug_requested():
        yield
        return
    # torch sets its own loggers' levels when it is imported (from TORCH_LOGS, which ``env``
    # sets): only a torch imported before the block has its level lowered here, and restored.
    names = (*DEPENDENCY_LOGGERS, *(["torch"] if "torch" in sys.modules else []))
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    added = {k: v for k, v in QUIET_ENV.items() if env and k not in os.environ}
    root, null = logging.getLogger(), logging.NullHandler()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=DEPENDENCY_MODULES)
        if env:
            warnings.simplefilter("ignore")
            root.addHandler(null)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        os.environ.update(added)
        try:
            yield
        finally:
            root.removeHandler(null)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            for key in added:
                os.environ.pop(key, None)
