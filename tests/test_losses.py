"""Each loss against its formula, with hand-picked log-probs and the arithmetic shown.

Shared numbers: with policy log-probs (chosen, rejected) = (−1, −3) and reference (−2, −2),
the margin is h = (−1 − (−2)) − (−3 − (−2)) = 1 − (−1) = 2; with β = 0.5, z = βh = 1, and
−log σ(1) = log(1 + e^−1) = 0.31326169, −log σ(−1) = log(1 + e) = 1.31326169.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from trainers.losses import (
    PREFERENCE_LOSSES,
    hinge_loss,
    ipo_loss,
    length_normalised_nll,
    log_ratio_margin,
    robust_dpo_loss,
    routed_pair_losses,
    sigmoid_dpo_loss,
)

NEG_LOGSIG_1 = math.log1p(math.exp(-1.0))  # 0.31326169
NEG_LOGSIG_MINUS_1 = math.log1p(math.exp(1.0))  # 1.31326169


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_margin_is_difference_of_log_ratios():
    """h = (−1 + 2) − (−3 + 2) = 2; a second pair: (−5 + 4) − (−4 + 6) = −1 − 2 = −3."""
    h = log_ratio_margin(t(-1.0, -5.0), t(-3.0, -4.0), t(-2.0, -4.0), t(-2.0, -6.0))
    assert_close(h, t(2.0, -3.0))


def test_sigmoid_dpo():
    """L = −log σ(βh): h = 2, β = 0.5 → 0.31326169; h = 0 → log 2; h = −2 → 1.31326169."""
    loss = sigmoid_dpo_loss(t(2.0, 0.0, -2.0), beta=0.5)
    assert_close(loss, t(NEG_LOGSIG_1, math.log(2.0), NEG_LOGSIG_MINUS_1))


def test_conservative_dpo_label_smoothing():
    """ε = 0.1, z = 1: 0.9 · 0.31326169 + 0.1 · 1.31326169
    = 0.28193552 + 0.13132617 = 0.41326169."""
    loss = sigmoid_dpo_loss(t(2.0), beta=0.5, label_smoothing=0.1)
    assert_close(loss, t(0.41326169))


def test_mixdpo_paper_setting():
    """β = 0.01, ε = 0.1, h = 100 → z = 1, the same 0.41326169 as above."""
    assert_close(sigmoid_dpo_loss(t(100.0), beta=0.01, label_smoothing=0.1), t(0.41326169))


def test_sigmoid_dpo_gradient_matches_formula():
    """dL/dh = −β σ(−βh) = −0.5 · σ(−1) = −0.5 · 0.26894142 = −0.13447071."""
    h = t(2.0).requires_grad_()
    sigmoid_dpo_loss(h, beta=0.5).sum().backward()
    assert_close(h.grad, t(-0.13447071))


def test_ipo():
    """L = (h − 1/(2β))²: β = 0.5 → target 1: h = 2 → 1, h = 1 → 0, h = 0 → 1;
    β = 0.25 → target 2: h = 1.5 → 0.25."""
    assert_close(ipo_loss(t(2.0, 1.0, 0.0), beta=0.5), t(1.0, 0.0, 1.0))
    assert_close(ipo_loss(t(1.5), beta=0.25), t(0.25))


def test_hinge():
    """L = max(0, 1 − βh), β = 0.5: h = 2 → 0; h = 1 → 0.5; h = −2 → 2."""
    assert_close(hinge_loss(t(2.0, 1.0, -2.0), beta=0.5), t(0.0, 0.5, 2.0))


def test_robust_dpo():
    """ε = 0.1, z = 1: (0.9 · 0.31326169 − 0.1 · 1.31326169) / 0.8
    = 0.15060935 / 0.8 = 0.18826169."""
    assert_close(robust_dpo_loss(t(2.0), beta=0.5, label_smoothing=0.1), t(0.18826169))
    assert_close(robust_dpo_loss(t(2.0), beta=0.5), t(NEG_LOGSIG_1))  # ε = 0 is DPO


def test_robust_dpo_is_unbiased_under_label_flips():
    """Chowdhury et al.'s point: (1 − ε) L(h) + ε L(−h) equals the clean −log σ(βh)."""
    h = torch.linspace(-5, 5, 11)
    eps = 0.2
    expected = (1 - eps) * robust_dpo_loss(
        h, beta=0.3, label_smoothing=eps
    ) + eps * robust_dpo_loss(-h, beta=0.3, label_smoothing=eps)
    assert_close(expected, sigmoid_dpo_loss(h, beta=0.3))


def test_length_normalised_nll():
    """−(−6)/3 = 2; −(−5)/2 = 2.5; a response with no counted token divides by 1."""
    assert_close(
        length_normalised_nll(t(-6.0, -5.0, -1.0), torch.tensor([3, 2, 0])), t(2.0, 2.5, 1.0)
    )


def test_routed_pair_losses_switch_by_route():
    """Routes (dpo, sft, dpo), preference (0.3, 0.7), NLL (2, 4, 6), w_sft = 0.5, w_nll = 0.1:
    pair 0: 0.3 + 0.1 · 2 = 0.5; pair 1: 0.5 · 4 = 2.0; pair 2: 0.7 + 0.1 · 6 = 1.3."""
    is_dpo = torch.tensor([True, False, True])
    loss = routed_pair_losses(is_dpo, t(0.3, 0.7), t(2.0, 4.0, 6.0), sft_weight=0.5, nll_weight=0.1)
    assert_close(loss, t(0.5, 2.0, 1.3))


def test_routed_pair_losses_gradient_only_through_own_route():
    """An sft pair's loss has no gradient from any preference term, and vice versa."""
    preference = t(0.3).requires_grad_()
    nll = t(2.0, 4.0).requires_grad_()
    routed_pair_losses(torch.tensor([False, True]), preference, nll).sum().backward()
    assert_close(preference.grad, t(1.0))
    assert_close(nll.grad, t(1.0, 0.0))  # pair 0 is sft (NLL), pair 1 dpo without NLL weight


@pytest.mark.parametrize("name", ["ipo", "hinge"])
def test_label_smoothing_is_refused_where_undefined(name):
    with pytest.raises(ValueError, match="label smoothing"):
        PREFERENCE_LOSSES[name](t(1.0), beta=0.1, label_smoothing=0.1)
