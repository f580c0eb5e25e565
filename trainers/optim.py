"""The optimizer: AdamW, and for ``--precision bf16`` torchao's AdamW with stochastic rounding.

Pure bfloat16 training keeps weights, gradients and AdamW's moments in bf16: 8 bytes per trained
parameter instead of 16. With round-to-nearest, an update smaller than half the spacing of bf16
numbers near a weight (2⁻⁸ of its magnitude) is lost: at DPO's learning rates (5e-7) almost every
update is, and the model does not train (0.8% of the weights moved after 10 steps, against 87% in
fp32). Stochastic rounding rounds up with probability equal to the dropped fraction, so each
update is kept in expectation; the moments are computed in fp32 inside the step and stored in
bf16. The implementation is torchao's (``torchao.optim._AdamW(bf16_stochastic_round=True)``, the
one its documentation gives for bf16 training), not a copy.

torchao compiles its per-parameter step with ``torch.compile``; on a CPU that costs tens of
seconds per parameter shape for a few milliseconds of work, so there the same function runs
eagerly (:func:`torch.compiler.set_stance`), with the same results.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

import torch

from prefcurate.base.errors import InputError


def check_bf16_optimizer() -> None:
    """``--precision bf16`` needs torchao; say so before anything loads."""
    if importlib.util.find_spec("torchao") is None:
        raise InputError(
            "--precision bf16 trains with torchao's stochastic-rounding AdamW, which is not "
            "installed",
            fix="pip install 'prefcurate[train]' (or torchao), or use --precision bf16-mixed",
        )


def adamw(
    params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float, precision: str
) -> torch.optim.Optimizer:
    """AdamW over ``params``; with ``precision="bf16"``, stochastic rounding to bf16 weights."""
    params = list(params)
    if precision != "bf16":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    _AdamW = _torchao_adamw()

    class StochasticRoundingAdamW(_AdamW):
        """torchao's AdamW, its compiled step run eagerly when the parameters are on a CPU."""

        @torch.no_grad()
        def step(self, closure=None):
            on_cpu = all(p.device.type == "cpu" for g in self.param_groups for p in g["params"])
            if not on_cpu:
                return super().step(closure)
            with torch.compiler.set_stance("force_eager"):
                return super().step(closure)

    return StochasticRoundingAdamW(
        params, lr=lr, weight_decay=weight_decay, bf16_stochastic_round=True
    )


def _torchao_adamw() -> Any:
    """torchao's AdamW class (its load-time warnings are silenced in :mod:`trainers`)."""
    check_bf16_optimizer()
    from torchao.optim import _AdamW

    return _AdamW
