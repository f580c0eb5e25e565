"""Evaluation during training: held-out pairs scored every ``--eval-every`` steps and at the end.

The pairs are the split's ``eval.parquet`` (``prefcurate route --eval-fraction``), or those of
``--eval-split`` (another split directory, or one of its parquet files). Their reference
log-probs are computed once before training, with the training pairs', and cached the same way;
each evaluation is then one forward pass of the policy over them, without gradients. It reports:

* **loss by route**, as training does: ``eval/loss`` (the objective over all pairs),
  ``eval/loss/dpo`` (the preference loss of dpo pairs) and ``eval/loss/sft`` (the NLL of sft
  pairs);
* the **rewards and log-probs** of the dpo pairs (``eval/rewards/accuracies``, ``…/margins``,
  ``…/chosen``, ``…/rejected``, ``eval/logps/…``), the names TRL gives them;
* **reward accuracy and reward margin by margin bin** (``eval/by_margin``), over every held-out
  pair, sft-routed ones included: whether the model orders the hard pairs it only imitated. The
  bins are fixed once (:func:`margin_bins`): below τ, then the terciles of the margins at or
  above it.

Every rank scores a strided share of the pairs (under fsdp in lockstep, every forward being a
collective); the shares are merged before the figures are computed, so every rank holds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefcurate.base.errors import InputError
from trainers.data import Split, TokenizedPairs, read_split
from trainers.objective import Objective

#: Where the per-margin-bin figures sit in a metrics row.
BY_MARGIN = "eval/by_margin"


def eval_source(split_dir: Path, eval_split: Path | None) -> tuple[Path, str] | None:
    """The split directory and file name (``eval`` or ``train``) to evaluate on, or None.

    ``eval_split`` may name a split directory (its eval.parquet, else its train.parquet) or a
    parquet file inside one; without it, ``SPLIT_DIR/eval.parquet`` if route wrote one.
    """
    if eval_split is None:
        return (split_dir, "eval") if (split_dir / "eval.parquet").is_file() else None
    path = Path(eval_split)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise InputError("--eval-split file not found", where=path,
                             fix="pass a split directory or one of its .parquet files")  # fmt: skip
        return path.parent, path.stem
    if not path.is_dir():
        raise InputError(
            "--eval-split not found", where=path, fix="pass a split directory written by route"
        )
    return path, "eval" if (path / "eval.parquet").is_file() else "train"


def check_eval(
    split_dir: Path, eval_split: Path | None, eval_every: int
) -> tuple[Path, str] | None:
    """Where the run evaluates (None: it does not); an :class:`InputError` before anything loads
    when ``--eval-every`` is asked for and there is nothing to evaluate on."""
    source = eval_source(split_dir, eval_split)
    if eval_every and source is None:
        raise InputError(
            "--eval-every needs held-out pairs, but the split has no eval.parquet",
            where=split_dir,
            fix="route with --eval-fraction 0.05 (for example), or pass --eval-split DIR",
        )
    if eval_every == 0 and eval_split is None:
        return None
    return source


@dataclass(frozen=True)
class MarginBin:
    """Margins in ``[lo, hi)`` (``lo`` −∞ for the first bin, ``hi`` +∞ for the last)."""

    lo: float
    hi: float

    @property
    def label(self) -> str:
        """``< 0.5``, ``[0.5, 1.5)``, ``>= 3``: readable, and usable as a tracker's key."""
        if math.isinf(self.lo) and math.isinf(self.hi):
            return "all"
        if math.isinf(self.lo):
            return f"< {self.hi:.3g}"
        if math.isinf(self.hi):
            return f">= {self.lo:.3g}"
        return f"[{self.lo:.3g}, {self.hi:.3g})"

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "lo": _finite(self.lo), "hi": _finite(self.hi)}


def margin_bins(margins: Tensor, threshold: float | None) -> list[MarginBin]:
    """Bins of the held-out margins: below τ (the sft route), then terciles of those at or above.

    Without a threshold, quartiles of all margins. Edges are deduplicated (discrete ratings often
    share a quantile), so there may be fewer bins; NaN margins fall in none.

        >>> [b.label for b in margin_bins(torch.tensor([0., 0, 1, 2, 3, 4, 5, 6]), 0.5)]
        ['< 0.5', '[0.5, 2.67)', '[2.67, 4.33)', '>= 4.33']
    """
    values = margins[~margins.isnan()].to(torch.float64)
    if values.numel() == 0:
        cuts = []
    elif threshold is None:
        edges = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        cuts = edges.tolist()
    else:
        above = values[values >= threshold]
        thirds = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
        cuts = [threshold] + (torch.quantile(above, thirds).tolist() if above.numel() else [])
    cuts = sorted({round(c, 6) for c in cuts if math.isfinite(c)})
    bounds = [-math.inf, *cuts, math.inf]
    return [MarginBin(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]


def bin_of(margins: Tensor, bins: list[MarginBin]) -> Tensor:
    """Each pair's bin index (−1 for a NaN margin)."""
    out = torch.full(margins.shape, -1, dtype=torch.int64)
    for i, b in enumerate(bins):
        out[(margins >= b.lo) & (margins < b.hi)] = i
    return out


@dataclass
class EvalSet:
    """The held-out pairs, their bins and their reference log-probs (every pair's two sides)."""

    path: Path
    pairs: TokenizedPairs
    margins: Tensor
    bins: list[MarginBin]
    bin_index: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    @classmethod
    def from_split(cls, split: Split, name: str, pairs: TokenizedPairs) -> EvalSet:
        frame = split.frame
        if "margin" in frame.columns:
            margins = frame["margin"].cast(float).fill_null(float("nan")).to_torch().double()
        else:  # a split without margins: every pair in no bin
            margins = torch.full((frame.height,), float("nan"), dtype=torch.float64)
        bins = margin_bins(margins, split.plan.get("threshold"))
        return cls(split.path / f"{name}.parquet", pairs, margins, bins, bin_of(margins, bins))

    def both_sides(self) -> TokenizedPairs:
        """The pairs with every one taking a preference term: what the reference pass and each
        evaluation score (the chosen and the rejected response of every pair)."""
        n = len(self.pairs)
        return replace(
            self.pairs, is_dpo=torch.ones(n, dtype=torch.bool), sft_mix=torch.zeros(n).double()
        )

    def describe(self) -> dict[str, Any]:
        """What run.json records about the held-out pairs."""
        counts = torch.bincount(self.bin_index[self.bin_index >= 0], minlength=len(self.bins))
        return {
            "path": str(self.path),
            **{k: v for k, v in self.pairs.counts().items() if k in ("pairs", "dpo", "sft")},
            "bins": [
                b.to_dict() | {"pairs": int(n)} for b, n in zip(self.bins, counts, strict=True)
            ],
        }


def read_eval_split(source: tuple[Path, str]) -> Split:
    """The held-out split, read and validated like the training split."""
    directory, name = source
    return read_split(directory, name=name)


def eval_metrics(
    eval_set: EvalSet, chosen: Tensor, rejected: Tensor, objective: Objective
) -> dict[str, Any]:
    """The ``eval/…`` figures from the policy's summed log-probs of every pair's two sides.

    The losses and the dpo pairs' rewards come from :meth:`Objective.terms` with the pairs'
    real routes, exactly as in training; the per-bin figures from the same call with every pair
    taking a preference term, so the sft-routed pairs get rewards too.
    """
    pairs = eval_set.pairs
    n_tokens = response_tokens(pairs)
    routed = _terms(objective, eval_set, chosen, rejected, n_tokens, pairs.is_dpo, pairs.sft_mix)
    out: dict[str, Any] = {}
    dpo, sft = pairs.is_dpo, ~pairs.is_dpo
    out["eval/loss"] = float(routed.loss.double().mean())
    out["eval/loss/dpo"] = _mean(routed.preference) if dpo.any() else None
    out["eval/loss/sft"] = _mean(routed.chosen_nll[sft]) if sft.any() else None
    margins = routed.reward_chosen - routed.reward_rejected
    for key, values in (
        ("rewards/chosen", routed.reward_chosen),
        ("rewards/rejected", routed.reward_rejected),
        ("rewards/margins", margins),
        ("rewards/accuracies", (margins > 0).double()),
        ("logps/chosen", routed.chosen_logps[dpo]),
        ("logps/rejected", routed.rejected_logps),
    ):
        out[f"eval/{key}"] = _mean(values) if dpo.any() else None
    out["eval/pairs/dpo"], out["eval/pairs/sft"] = int(dpo.sum()), int(sft.sum())
    every = torch.ones(len(pairs), dtype=torch.bool)
    both = _terms(objective, eval_set, chosen, rejected, n_tokens, every, torch.zeros(len(pairs)))
    out[BY_MARGIN] = by_margin(eval_set, both.reward_chosen - both.reward_rejected)
    return out


def by_margin(eval_set: EvalSet, reward_margins: Tensor) -> list[dict[str, Any]]:
    """Per margin bin: how many pairs (by route), reward accuracy and mean reward margin."""
    rows = []
    for i, b in enumerate(eval_set.bins):
        held = eval_set.bin_index == i
        if not held.any():
            continue
        m = reward_margins[held].double()
        rows.append(
            {
                "bin": b.label,
                "pairs": int(held.sum()),
                "dpo": int((held & eval_set.pairs.is_dpo).sum()),
                "rewards/accuracies": float((m > 0).double().mean()),
                "rewards/margins": float(m.mean()),
            }
        )
    return rows


def evaluate(
    module: torch.nn.Module,
    eval_set: EvalSet,
    objective: Objective,
    *,
    batch_size: int,
    device: torch.device,
    autocast: Any,
    pad_id: int,
    lockstep: bool,
    progress: Any = None,
) -> dict[str, Any]:
    """Score every held-out pair's two sides with the policy (no gradients) and return the
    ``eval/…`` figures on every rank. ``module`` is the unwrapped (or FSDP-sharded)
    :class:`~trainers.logps.SequenceLogps`; ``lockstep`` under fsdp."""
    from trainers.logps import reference_logps

    chosen, rejected = reference_logps(
        module,
        eval_set.both_sides(),
        batch_size=batch_size,
        device=device,
        autocast=autocast,
        pad_id=pad_id,
        lockstep=lockstep,
        progress=progress,
    )
    return eval_metrics(eval_set, chosen, rejected, objective)


def response_tokens(pairs: TokenizedPairs) -> Tensor:
    """The tokens each pair's chosen response is scored on, as :class:`SequenceLogps` counts them
    (a response's first token has no prediction when the prompt is empty)."""
    full = pairs.prompt.lengths() + pairs.chosen.lengths()
    return torch.minimum(pairs.chosen.lengths(), full - 1)


def _terms(objective, eval_set, chosen, rejected, n_tokens, is_dpo, share):
    rows = torch.cat([chosen, rejected[is_dpo]]).float()
    tokens = torch.cat([n_tokens, n_tokens[is_dpo]])
    return objective.terms(
        rows,
        tokens,
        is_dpo=is_dpo,
        ref_chosen=eval_set.ref_chosen.float(),
        ref_rejected=eval_set.ref_rejected.float(),
        sft_mix=share,
    )


def _mean(values: Tensor) -> float:
    return float(values.double().mean())


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def flatten(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of a metrics row for a tracker: the per-bin list becomes
    ``eval/by_margin/<bin>/rewards/accuracies`` and ``…/rewards/margins``; None values go."""
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    for row in metrics.get(BY_MARGIN) or ():
        for key in ("rewards/accuracies", "rewards/margins"):
            out[f"{BY_MARGIN}/{row['bin']}/{key}"] = float(row[key])
    return out
