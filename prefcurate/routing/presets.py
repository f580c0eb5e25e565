"""Named presets: a paper's settings in one word (``--preset paper``), explicit flags still winning.

``paper`` is MixDPO's main setting (arXiv 2602.00954, UltraFeedback, Llama-3-8B / Mistral-7B):

- route: ``--mode mixdpo --threshold 0.5 --order curriculum`` (the ties to SFT, read easy → hard);
- train: sigmoid DPO with β = 0.01 and conservative label smoothing ε = 0.1, lr 1e-6 with 10%
  linear warmup then cosine decay, one epoch, the split's order (no shuffle).

The reproduction is two commands::

    prefcurate route DATA --preset paper --out S
    prefcurate train S --preset paper --model M --out R

A flag given on the command line overrides the preset's value (``--preset paper --beta 0.05``);
plan.json and run.json record the preset's name beside the settings actually used. The library
functions take plain arguments; :func:`resolve` is how the command line merges them::

    >>> resolve("train", "paper", {"beta": 0.05})["beta"]
    0.05
    >>> resolve("train", "paper", {})["label_smoothing"]
    0.1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from prefcurate.base.errors import InputError


@dataclass(frozen=True)
class PaperSettings:
    """MixDPO's main setting (arXiv 2602.00954, section 4), each constant written once: the
    preset, the benchmark, the exports' commands and the TRL example all read them here."""

    threshold: float = 0.5  # τ on UltraFeedback's margins: exactly the ties go to SFT
    loss: str = "sigmoid"
    beta: float = 0.01
    label_smoothing: float = 0.1  # conservative DPO's ε
    lr: float = 1e-6
    warmup_ratio: float = 0.1
    lr_schedule: str = "cosine"
    epochs: int = 1

    def words(self) -> dict[str, str]:
        """Each constant as text, for the commands an export's README writes (``{beta}``...)."""
        values = asdict(self)
        return {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in values.items()}


PAPER = PaperSettings()

#: preset name → command → settings (keyword names of plan_routes / TrainConfig).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "route": {"mode": "mixdpo", "threshold": PAPER.threshold, "order": "curriculum"},
        "train": {
            "loss": PAPER.loss,
            "beta": PAPER.beta,
            "label_smoothing": PAPER.label_smoothing,
            "lr": PAPER.lr,
            "warmup_ratio": PAPER.warmup_ratio,
            "lr_schedule": PAPER.lr_schedule,
            "epochs": PAPER.epochs,
            "shuffle": False,
        },
    },
}


def resolve(command: str, preset: str | None, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's settings for ``command`` ('route' or 'train'), overridden by ``explicit``.

    ``explicit`` holds only the flags the user gave. On route, an explicit ``sft_fraction``
    replaces the preset's threshold (the two are exclusive).
    """
    if preset is None:
        return dict(explicit)
    if preset not in PRESETS:
        raise InputError(
            f"unknown --preset {preset!r}", fix=f"use one of {', '.join(sorted(PRESETS))}"
        )
    settings = dict(PRESETS[preset][command])
    if command == "route" and explicit.get("sft_fraction") is not None:
        settings.pop("threshold", None)
    settings.update(explicit)
    return settings
