"""From a batch to each pair's loss term, routed by the split's ``route`` column.

This is where the route reaches the loss: ``batch.is_dpo`` comes from the split's route column
(:func:`trainers.data.tokenize_split`) and selects, pair by pair, the preference loss or the
length-normalised NLL of the chosen response (:func:`trainers.losses.routed_pair_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainers.data import Batch
from trainers.losses import (
    PREFERENCE_LOSSES,
    length_normalised_nll,
    log_ratio_margin,
    routed_pair_losses,
)

#: Per-step sums, in this order; the logged metrics are ratios of them (see :func:`step_metrics`).
STAT_KEYS: tuple[str, ...] = (
    "loss",
    "pairs",
    "pairs/dpo",
    "pairs/sft",
    "loss/dpo",
    "nll/dpo",
    "loss/sft",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "tokens",
    "nonfinite",
)
#: The sums logged as means over the step's dpo pairs: the dpo terms, rewards and log-probs.
_DPO_MEANS = tuple(
    k for k in STAT_KEYS if k in ("loss/dpo", "nll/dpo") or k.startswith(("rewards/", "logps/"))
)


@dataclass
class PairTerms:
    """One micro-batch's per-pair results; ``loss`` carries the graph, the rest are detached."""

    loss: Tensor
    is_dpo: Tensor
    chosen_logps: Tensor
    chosen_nll: Tensor
    rejected_logps: Tensor
    preference: Tensor
    reward_chosen: Tensor
    reward_rejected: Tensor
    tokens: int

    def sums(self) -> Tensor:
        """This micro-batch's contribution to the step sums, in :data:`STAT_KEYS` order."""
        dpo, sft = self.is_dpo, ~self.is_dpo
        loss = self.loss.detach()
        margins = self.reward_chosen - self.reward_rejected
        values = {
            "loss": loss.sum(),
            "pairs": loss.numel(),
            "pairs/dpo": dpo.sum(),
            "pairs/sft": sft.sum(),
            "loss/dpo": self.preference.sum(),
            "nll/dpo": self.chosen_nll[dpo].sum(),
            "loss/sft": self.chosen_nll[sft].sum(),
            "rewards/chosen": self.reward_chosen.sum(),
            "rewards/rejected": self.reward_rejected.sum(),
            "rewards/margins": margins.sum(),
            "rewards/accuracies": (margins > 0).sum(),
            "logps/chosen": self.chosen_logps[dpo].sum(),
            "logps/rejected": self.rejected_logps.sum(),
            "tokens": self.tokens,
            "nonfinite": (~torch.isfinite(loss)).sum(),
        }
        return torch.tensor([float(values[k]) for k in STAT_KEYS], dtype=torch.float64)


@dataclass(frozen=True)
class Objective:
    """The training objective's settings: ``--loss``, ``--beta``, ``--label-smoothing``, weights.

    No defaults here: a run's defaults live in :class:`trainers.config.TrainConfig`, once."""

    loss: str
    beta: float
    label_smoothing: float
    sft_weight: float
    nll_weight: float

    def __call__(self, logps: nn.Module, batch: Batch) -> PairTerms:
        """Forward every sequence of ``batch`` once and return each pair's loss term."""
        sequence_logps, n_tokens = logps(
            batch.input_ids, batch.attention_mask, batch.response_mask, shared=batch.shared
        )
        return self.terms(
            sequence_logps,
            n_tokens,
            is_dpo=batch.is_dpo,
            ref_chosen=batch.ref_chosen,
            ref_rejected=batch.ref_rejected,
            sft_mix=batch.sft_mix,
            tokens=int(batch.attention_mask.sum()),
        )

    def terms(
        self,
        sequence_logps: Tensor,
        n_tokens: Tensor,
        *,
        is_dpo: Tensor,
        ref_chosen: Tensor,
        ref_rejected: Tensor,
        sft_mix: Tensor | None = None,
        tokens: int = 0,
    ) -> PairTerms:
        """Each pair's loss term from one forward's summed response log-probs: the one objective.

        ``prefcurate train`` and :class:`prefcurate.integrations.trl.MixDPOTrainer` both call this,
        so one split gives the same per-pair losses in either engine. ``sequence_logps`` and
        ``n_tokens`` hold one row per pair's chosen response, then one per dpo pair's rejected
        response (the layout both collators build); ``ref_chosen`` / ``ref_rejected`` one entry
        per pair (any value for pairs without a preference term); ``sft_mix`` each pair's SFT
        mix (:func:`prefcurate.data.schema.sft_mix`; None: 0 for dpo pairs, 1 for sft).
        """
        sequence_logps = sequence_logps.float()
        pairs = is_dpo.numel()
        chosen, rejected = sequence_logps[:pairs], sequence_logps[pairs:]
        chosen_nll = length_normalised_nll(chosen, n_tokens[:pairs])
        dpo = is_dpo
        ref_chosen, ref_rejected = ref_chosen[dpo], ref_rejected[dpo]
        h = log_ratio_margin(chosen[dpo], rejected, ref_chosen, ref_rejected)
        preference = PREFERENCE_LOSSES[self.loss](
            h, beta=self.beta, label_smoothing=self.label_smoothing
        )
        loss = routed_pair_losses(
            dpo,
            preference,
            chosen_nll,
            sft_weight=self.sft_weight,
            nll_weight=self.nll_weight,
            sft_mix=sft_mix,
        )
        return PairTerms(
            loss=loss,
            is_dpo=dpo,
            chosen_logps=chosen.detach(),
            chosen_nll=chosen_nll.detach(),
            rejected_logps=rejected.detach(),
            preference=preference.detach(),
            reward_chosen=self.beta * (chosen[dpo].detach() - ref_chosen),
            reward_rejected=self.beta * (rejected.detach() - ref_rejected),
            tokens=tokens,
        )


def step_metrics(sums: Tensor, *, pairs_in_step: int) -> dict[str, float | None]:
    """Turn a step's (all-rank) sums into the logged means; None where a route had no pair.

    ``loss`` is the optimised objective, the mean over all pairs of the step. ``loss/dpo`` is the
    mean preference loss and ``nll/dpo`` the mean chosen NLL of dpo pairs; ``loss/sft`` the mean
    length-normalised NLL of sft pairs (before ``--sft-weight``); rewards and log-probs are means
    over dpo pairs.
    """
    s = dict(zip(STAT_KEYS, sums.tolist(), strict=True))
    n_dpo, n_sft = int(s["pairs/dpo"]), int(s["pairs/sft"])
    out: dict[str, float | None] = {"loss": s["loss"] / pairs_in_step}
    for key in _DPO_MEANS:
        out[key] = s[key] / n_dpo if n_dpo else None
    out["loss/sft"] = s["loss/sft"] / n_sft if n_sft else None
    out["pairs/dpo"] = n_dpo
    out["pairs/sft"] = n_sft
    out["tokens"] = int(s["tokens"])
    return out
