"""Judging a policy's responses by the toy task's gold reward r*, against the base policy's.

Three figures per policy, on the same held-out prompts:

- ``gold`` — mean r* of its responses;
- ``win_rate`` — the share of prompts where its response has a higher r* than the base policy's
  (a tie counts one half), in percent, as AlpacaEval reports it;
- ``lc_win_rate`` — AlpacaEval 2's length-controlled win rate: a logistic GLM of the per-prompt
  preference on tanh(standardised length difference), evaluated at a length difference of 0. The
  formula and the fit are alpaca-eval's own (``GLM_INFO["length_controlled_minimal"]`` and
  ``fit_LogisticRegressionCV``, installed with the ``bench`` extra). Its default GLM also uses
  per-instruction difficulties of the AlpacaEval prompts, downloaded from the Hugging Face hub;
  the toy prompts have none and prefcurate never downloads, so the minimal formula is used.

``invalid`` is the share of responses that are not valid task answers (a non-digit, empty, or no
EOS within the budget). With the alphabet restriction it measures only missing EOS and empty
answers; without it, the junk bytes a collapsing DPO run emits. ``length`` is the mean length of
every response in characters, ``length_valid`` that of the valid ones only (an answer cut off
for want of an EOS is as long as the budget allows, so it lengthens the first but not the second).
"""

from __future__ import annotations

import math
import os
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

from prefcurate.recipes import toytask


def lc_available() -> bool:
    """Whether alpaca-eval (the ``bench`` extra) is installed; the demo runs without it."""
    import importlib.util

    return importlib.util.find_spec("alpaca_eval") is not None


def require_lc() -> None:
    """Refuse to start a benchmark that could not report the length-controlled win rate."""
    if not lc_available():
        from prefcurate.base.errors import InputError

        raise InputError(
            "the length-controlled win rate needs the alpaca-eval package",
            fix="pip install 'prefcurate[bench]' (or bash .ci/setup.sh test)",
        )


def preferences(prompts: Sequence[str], model: Sequence[str], base: Sequence[str]) -> list[float]:
    """Per prompt, AlpacaEval's convention: 2.0 model better by r*, 1.0 base better, 1.5 tie."""
    out = []
    for prompt, mine, theirs in zip(prompts, model, base, strict=True):
        a, b = toytask.gold_reward(prompt, mine), toytask.gold_reward(prompt, theirs)
        out.append(2.0 if a > b else 1.0 if a < b else 1.5)
    return out


def length_controlled_win_rate(
    prefs: Sequence[float], model: Sequence[str], base: Sequence[str]
) -> float:
    """alpaca-eval's length-controlled win rate (percent) of ``model`` over ``base``.

    When every length difference is the same (the GLM's feature has no variance) the length
    cannot explain anything, and the plain win rate is returned.
    """
    import numpy as np
    import pandas as pd

    # alpaca_eval loads a .env file into os.environ on import (put back as it was: a benchmark
    # must not change with the folder it runs in); its utils import the deprecated pkg_resources
    # (hence setuptools<81 in the bench extra)
    environ = dict(os.environ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from alpaca_eval.metrics.glm_winrate import (
            GLM_INFO,
            fit_LogisticRegressionCV,
            make_dmatrix_for_model,
        )
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)

    raw = 100 * (float(np.mean(prefs)) - 1.0)
    delta = np.array([len(b) - len(m) for m, b in zip(model, base, strict=True)], dtype=float)
    if len(delta) < 10 or delta.std() == 0:
        return raw
    glm = GLM_INFO["length_controlled_minimal"]
    frame = pd.DataFrame(
        {
            "preference": np.asarray(prefs, dtype=float) - 1.0,
            "std_delta_len": delta / delta.std(ddof=1),
            "not_gamed_baseline": True,
        }
    )
    test = frame[["not_gamed_baseline"]].assign(std_delta_len=0.0)
    train, test = make_dmatrix_for_model(frame, test, formula=glm["formula"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, **glm["kwargs"])
        return float(fitted.predict_proba(test)[:, 1].mean() * 100)


def evaluate(
    prompts: Sequence[str],
    responses: Sequence[str],
    base: Sequence[str],
    *,
    finished: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The figures of one policy's responses against the base policy's, on the same prompts."""
    rewards = [toytask.gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
    prefs = preferences(prompts, responses, base)
    done = finished if finished is not None else [True] * len(responses)
    invalid = [not (toytask.is_valid(r) and f) for r, f in zip(responses, done, strict=True)]
    valid_lengths = [len(r) for r, bad in zip(responses, invalid, strict=True) if not bad]
    return {
        "gold": statistics.fmean(rewards),
        "win_rate": 100 * (statistics.fmean(prefs) - 1.0),
        "lc_win_rate": (
            length_controlled_win_rate(prefs, responses, base) if lc_available() else None
        ),
        "invalid": statistics.fmean(invalid),
        "perfect": statistics.fmean(r == 1.0 for r in rewards),
        "length": statistics.fmean(len(r) for r in responses),
        "length_valid": statistics.fmean(valid_lengths) if valid_lengths else None,
        "n": len(prompts),
    }


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of ``values``."""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, (0.0 if math.isnan(sd) else sd)
