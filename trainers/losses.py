"""Per-pair training losses: the DPO family for clear pairs, length-normalised NLL for the rest.

Every function takes per-pair *summed* response log-probabilities (shape ``(pairs,)``) and returns a
per-pair loss of the same shape; reducing to a batch loss (the mean over pairs) is the loop's job,
so that a batch split across micro-steps or ranks adds up to the same number.

Notation shared by the docstrings: ``π`` is the policy, ``π_ref`` the frozen reference,
``y_w`` / ``y_l`` the chosen / rejected response, and the implicit-reward margin is

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

with ``σ`` the logistic function and ``β`` the inverse temperature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def log_ratio_margin(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> Tensor:
    """The margin ``h`` of the policy's log-ratios over the reference's, per pair."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def sigmoid_dpo_loss(h: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7), conservative when ``ε > 0``.

        L = −(1 − ε) · log σ(β h) − ε · log σ(−β h)

    ``ε = 0`` is DPO. ``ε > 0`` is conservative DPO (Mitchell 2023, "A note on DPO with noisy
    preferences and relationship to IPO"): the label is taken to be flipped with probability ε,
    which bounds the loss's push on any one pair. MixDPO's main runs use ε = 0.1, β = 0.01.
    """
    z = beta * h
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo_loss(h: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17), with ``τ = β``.

        L = (h − 1 / (2β))²

    Regresses the margin onto a fixed target instead of pushing it to infinity, so it does not
    overfit deterministic preferences. Here ``h`` uses summed log-probs, as in the paper.
    """
    _no_smoothing("ipo", label_smoothing)
    return (h - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(h: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """SLiC-HF's calibration hinge (Zhao et al. 2023, arXiv:2305.10425), reference-normalised.

        L = max(0, 1 − β h)

    SLiC's ``max(0, δ − log π(y_w|x) + log π(y_l|x))`` with the log-likelihoods replaced by the
    reference-normalised log-ratios of DPO and the margin ``δ = 1/β``, scaled by β.
    """
    _no_smoothing("hinge", label_smoothing)
    return torch.relu(1.0 - beta * h)


def robust_dpo_loss(h: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv:2403.00409, eq. 8): unbiased under flip rate ε.

        L = [(1 − ε) · (−log σ(β h)) − ε · (−log σ(−β h))] / (1 − 2ε)

    Its expectation over labels flipped with probability ε equals the clean DPO loss; it needs
    ``ε < 0.5`` and is plain DPO at ε = 0.
    """
    z = beta * h
    eps = label_smoothing
    return ((1.0 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def length_normalised_nll(logps: Tensor, n_tokens: Tensor) -> Tensor:
    """Length-normalised negative log-likelihood of a response (prompt tokens masked out).

        L = −(1/|y|) · Σ_t log π(y_t | x, y_<t)

    MixDPO's loss for difficult pairs (SFT on the chosen response), and the NLL term of the
    DPO+NLL baseline (RPO, Pang et al. 2024, arXiv:2404.19733, eq. 2).
    """
    return -logps / n_tokens.clamp(min=1).to(logps.dtype)


PreferenceLoss = Callable[..., Tensor]

#: ``--loss`` name → per-pair preference loss of the margin ``h``.
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": sigmoid_dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "robust": robust_dpo_loss,
}


def routed_pair_losses(
    is_dpo: Tensor,
    preference: Tensor,
    chosen_nll: Tensor,
    *,
    sft_weight: float = 1.0,
    nll_weight: float = 0.0,
    sft_mix: Tensor | None = None,
) -> Tensor:
    """MixDPO's switch (arXiv:2602.00954): each pair's loss term, chosen by its route.

        L_i = pref_i + w_nll · NLL_i    if route_i = dpo
        L_i = w_sft · NLL_i             if route_i = sft

    With soft routing (``sft_mix`` = the split's ``weight`` column, s_i ∈ [0, 1]) a dpo pair
    mixes the two:

        L_i = (1 − s_i) · (pref_i + w_nll · NLL_i) + s_i · w_sft · NLL_i

    which is the hard switch when every s_i is 0 or 1 (the default: 0 for dpo pairs).
    ``is_dpo``, ``chosen_nll`` have one entry per pair; ``preference`` has one entry per dpo pair,
    in batch order (sft pairs have no reference log-probs, so no preference term is computed).
    """
    full_preference = chosen_nll.new_zeros(chosen_nll.shape).masked_scatter(is_dpo, preference)
    dpo_term = full_preference + nll_weight * chosen_nll
    sft_term = sft_weight * chosen_nll
    if sft_mix is not None:
        mix = sft_mix.to(chosen_nll.dtype)
        dpo_term = torch.where(mix > 0, (1 - mix) * dpo_term + mix * sft_term, dpo_term)
    return torch.where(is_dpo, dpo_term, sft_term)


def _no_smoothing(loss: str, label_smoothing: float) -> None:
    if label_smoothing:
        msg = f"label smoothing is defined for the sigmoid and robust losses, not {loss}"
        raise ValueError(msg)
