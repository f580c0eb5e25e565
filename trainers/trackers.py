"""Experiment trackers: ``--report-to tensorboard|wandb|none``, through the libraries themselves.

Every optimizer step's metrics (and every evaluation's) go to the tracker under the names TRL's
``DPOTrainer`` gives them there (transformers' trackers prefix ``train/`` and ``eval/``), so a
prefcurate run and a TRL run of the same data sit side by side in one dashboard:

============================  =========================================
prefcurate (metrics.jsonl)    tracker
============================  =========================================
``loss``                      ``train/loss``
``lr``                        ``train/learning_rate``
``grad_norm``                 ``train/grad_norm``
``epoch`` (0-based index)     ``train/epoch`` (fraction of epochs done)
``rewards/…``, ``logps/…``    ``train/rewards/…``, ``train/logps/…``
``tokens`` (this step)        ``train/num_tokens`` (all steps so far)
``eval/…``                    ``eval/…``
============================  =========================================

prefcurate's own figures keep their names under the same prefix (``train/loss/dpo``,
``train/loss/sft``, ``eval/by_margin/<bin>/rewards/accuracies``, …).

* ``tensorboard`` writes event files into ``RUN_DIR/tensorboard`` (``torch.utils.tensorboard``;
  needs the ``tensorboard`` package: ``pip install 'prefcurate[trackers]'``); a resumed run
  drops the events after its checkpoint's step, as the metrics file does.
* ``wandb`` logs to Weights & Biases with the run's settings as its config, its files in
  ``RUN_DIR/wandb``; ``WANDB_MODE=offline`` keeps everything local (``wandb sync`` later), and
  ``WANDB_PROJECT`` names the project (default ``prefcurate``). A resumed run continues the same
  W&B run (its id is kept in ``RUN_DIR/wandb/run_id``).

Only rank 0 reports.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path
from typing import Any

from prefcurate.base.errors import InputError
from trainers.config import REPORT_TO
from trainers.evaluation import flatten

__all__ = ["REPORT_TO", "Tracker", "check_tracker", "open_tracker", "tracker_names"]

#: The tracker's package by ``--report-to`` value.
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
#: prefcurate's metric name → TRL's, where they differ.
_RENAMED = {"lr": "learning_rate"}
#: Per-step bookkeeping that a tracker does not show (elapsed time, pair counts are kept).
_SKIPPED = frozenset({"step", "epoch", "tokens", "elapsed_s"})


def check_tracker(report_to: str) -> None:
    """The tracker's package is installed (checked before anything loads)."""
    package = _PACKAGES.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise InputError(
            f"--report-to {report_to} needs the {package} package",
            fix=f"pip install 'prefcurate[trackers]' (or {package}), or --report-to none",
        )


def tracker_names(metrics: dict[str, Any], *, steps_per_epoch: int, tokens_seen: int) -> dict:
    """One metrics row under the tracker names (see the module docstring)."""
    flat = flatten(metrics)
    out: dict[str, float] = {}
    for key, value in flat.items():
        if key in _SKIPPED:
            continue
        if key.startswith("eval/"):
            out[key] = value
        else:
            out[f"train/{_RENAMED.get(key, key)}"] = value
    out["train/epoch"] = metrics["step"] / steps_per_epoch
    out["train/num_tokens"] = float(tokens_seen)
    return out


class Tracker:
    """Receives each step's metrics under their tracker names; this base class drops them."""

    def log(self, values: dict[str, float], step: int) -> None:
        """Record ``values`` at optimizer step ``step``."""

    def close(self) -> None:
        """Flush and close."""


class TensorBoardTracker(Tracker):
    """Event files in ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run's writer discards the events logged after its checkpoint
        purge = first_step + 1 if first_step else None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run, resumed under the same id when the training run is."""

    def __init__(self, run_dir: Path, config: dict[str, Any], first_step: int):
        import wandb

        directory = run_dir / "wandb"
        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / "run_id"
        run_id = id_file.read_text().strip() if first_step and id_file.is_file() else None
        run_id = run_id or secrets.token_hex(4)  # W&B's ids: 8 characters of [a-z0-9]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "prefcurate"),
            name=run_dir.resolve().name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(
    report_to: str, run_dir: Path, *, config: dict[str, Any], first_step: int
) -> Tracker:
    """The tracker ``--report-to`` names, writing under ``run_dir``."""
    if report_to == "tensorboard":
        return TensorBoardTracker(run_dir, first_step)
    if report_to == "wandb":
        return WandbTracker(run_dir, config, first_step)
    return Tracker()
