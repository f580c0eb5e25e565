"""A run's settings (:class:`TrainConfig`, one field per ``prefcurate train`` flag) and its result.

:class:`TrainResult` is what :func:`trainers.loop.train` returns and what the catalog records.
Every default of a run lives here, once: the CLI builds ``prefcurate train``'s flags from these
fields, so this module imports neither torch nor transformers (the CLI starts fast).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefcurate.base.cachedir import default_cache_dir
from prefcurate.base.errors import InputError
from prefcurate.base.sizes import parse_size
from trainers.schedule import LR_SCHEDULES

if TYPE_CHECKING:
    from trainers.lora import LoraSettings

#: ``--strategy`` values (trainers.strategy): ddp replicates, fsdp shards, auto asks the plan.
STRATEGIES: tuple[str, ...] = ("auto", "ddp", "fsdp")
#: ``--precision`` values (trainers.strategy).
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16-mixed", "bf16")
#: ``--attn-implementation`` values, passed to transformers.
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "flash_attention_2", "eager")

#: ``--report-to`` values (trainers.trackers).
REPORT_TO: tuple[str, ...] = ("none", "tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Everything a run depends on; one field per ``prefcurate train`` flag."""

    split_dir: Path
    model: str
    out: Path
    ref_model: str | None = None  # default: the initial policy
    loss: str = "sigmoid"  # sigmoid | ipo | hinge | robust
    beta: float = 0.1
    label_smoothing: float = 0.0  # ε of conservative / robust DPO
    sft_weight: float = 1.0
    nll_weight: float = 0.0  # DPO+NLL baseline
    shuffle: bool = False  # default: the split's rank order, read sequentially
    epochs: int = 1
    max_steps: int | None = None
    max_length: int = 1024
    batch_size: int = 4  # pairs per micro-batch per process
    grad_accum: int = 1
    lr: float = 5e-7
    warmup_ratio: float = 0.1
    lr_schedule: str = "cosine"  # cosine | constant | phased (trainers.schedule)
    schedule_steps: int | None = None  # steps the lr schedule spans (default: the run's)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    device: str = "auto"  # auto | cpu | cuda
    # auto (bf16-mixed on CUDA, fp32 on the CPU) | fp32 | bf16-mixed | bf16 (trainers.strategy)
    precision: str = "auto"
    gradient_checkpointing: bool = False  # activation checkpointing, one decoder layer at a time
    # auto (ddp, or fsdp when the memory plan says a replica does not fit) | ddp | fsdp
    strategy: str = "auto"
    offload: bool = False  # fsdp: parameters, gradients and AdamW state in CPU memory
    attn_implementation: str | None = None  # sdpa | flash_attention_2 | eager (transformers)
    packed: bool = False  # one padding-free row per micro-batch (same per-pair losses)
    # each pair's prompt computed once, read by both responses (trainers.shared_prompt)
    shared_prompt: bool = True
    lora_r: int = 0  # 0: full fine-tuning; > 0: a LoRA adapter of this rank (trainers.lora)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 (CUDA and bitsandbytes)
    merge_lora: bool = False  # also save the merged model
    device_memory: float | None = None  # GiB per device for the memory check (default: measured)
    # share of the device's memory held back for what the plan does not count: the CUDA
    # context, NCCL's buffers, the allocator's fragmentation
    memory_headroom: float = 0.1
    max_shard_size: str = "5GB"  # safetensors shard size of the final model
    seed: int = 0
    save_every: int = 0  # 0: no intermediate checkpoints
    # evaluate the held-out pairs every N optimizer steps and at the end (0: only at the end,
    # and only when --eval-split is given); trainers.evaluation
    eval_every: int = 0
    eval_split: Path | None = None  # default: SPLIT_DIR/eval.parquet
    report_to: str = "none"  # none | tensorboard | wandb (trainers.trackers)
    save_total_limit: int = 0  # keep only the newest N checkpoints (0: all)
    resume: bool = False
    force: bool = False
    cache_dir: Path | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False  # read pickle (.bin) weights when a model has no safetensors
    # Only these token ids may be scored or sampled (the others' logits are -inf): a task whose
    # answers use a small alphabet keeps the policy on it. None: the whole vocabulary.
    allowed_token_ids: list[int] | None = None
    # The named preset the settings came from (``--preset paper``); recorded in run.json only.
    preset: str | None = None

    def __post_init__(self) -> None:
        self.split_dir, self.out = Path(self.split_dir), Path(self.out)
        self.eval_split = Path(self.eval_split) if self.eval_split else None
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        self.max_shard_bytes  # noqa: B018 - parsed now, not when the model is saved at the end

    def validate(self) -> None:
        """Refuse impossible settings with an :class:`InputError` naming the flag."""
        self._check_loss()
        self._check_numbers()
        self._check_choices()
        self._check_combinations()

    def _check_loss(self) -> None:
        from trainers.losses import PREFERENCE_LOSSES

        if self.loss not in PREFERENCE_LOSSES:
            raise InputError(
                f"unknown --loss {self.loss!r}", fix=f"use one of {', '.join(PREFERENCE_LOSSES)}"
            )
        if self.label_smoothing and self.loss not in ("sigmoid", "robust"):
            raise InputError(
                f"--label-smoothing applies to the sigmoid and robust losses, not {self.loss}"
            )
        if not 0.0 <= self.label_smoothing < 0.5:
            raise InputError(f"--label-smoothing must be in [0, 0.5), not {self.label_smoothing}")

    def _check_numbers(self) -> None:
        finite = {
            "--beta": self.beta,
            "--lr": self.lr,
            "--label-smoothing": self.label_smoothing,
            "--sft-weight": self.sft_weight,
            "--nll-weight": self.nll_weight,
            "--warmup-ratio": self.warmup_ratio,
            "--weight-decay": self.weight_decay,
            "--max-grad-norm": self.max_grad_norm,
            "--memory-headroom": self.memory_headroom,
        }
        for flag, value in finite.items():
            if not math.isfinite(value):
                raise InputError(
                    f"{flag} must be a finite number, got {value}", fix="see prefcurate train -h"
                )
        checks = {
            "--beta": self.beta > 0,
            "--lr": self.lr > 0,
            "--weight-decay": self.weight_decay >= 0,
            "--batch-size": self.batch_size >= 1,
            "--grad-accum": self.grad_accum >= 1,
            "--epochs": self.epochs >= 1,
            "--max-steps": self.max_steps is None or self.max_steps >= 1,
            "--max-length": self.max_length >= 2,
            "--warmup-ratio": 0.0 <= self.warmup_ratio < 1.0,
            "--sft-weight": self.sft_weight >= 0,
            "--nll-weight": self.nll_weight >= 0,
            "--save-every": self.save_every >= 0,
            "--eval-every": self.eval_every >= 0,
            "--max-grad-norm": self.max_grad_norm >= 0,
            "--save-total-limit": self.save_total_limit >= 0,
            "--lora-r": self.lora_r >= 0,
            "--device-memory": self.device_memory is None or self.device_memory > 0,
            "--memory-headroom": 0.0 <= self.memory_headroom < 1.0,
        }
        for flag, ok in checks.items():
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise InputError(f"{flag} {value} is out of range", fix="see prefcurate train -h")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise InputError("allowed_token_ids is empty", fix="pass None to allow every token")

    def _check_choices(self) -> None:
        choices = {
            "--lr-schedule": (self.lr_schedule, LR_SCHEDULES),
            "--device": (self.device, ("auto", "cpu", "cuda")),
            "--precision": (self.precision, PRECISIONS),
            "--strategy": (self.strategy, STRATEGIES),
            "--attn-implementation": (self.attn_implementation or "sdpa", ATTN_IMPLEMENTATIONS),
            "--report-to": (self.report_to, REPORT_TO),
        }
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise InputError(f"unknown {flag} {value!r}", fix=f"use {', '.join(allowed)}")

    def _check_combinations(self) -> None:
        if self.offload and self.strategy != "fsdp":
            raise InputError("--offload needs --strategy fsdp", fix="add --strategy fsdp")
        if self.lora is not None:
            self.lora.validate()
        elif self.load_in_4bit or self.merge_lora:
            flag = "--load-in-4bit" if self.load_in_4bit else "--merge-lora"
            raise InputError(f"{flag} needs a LoRA adapter", fix="add --lora-r 16 (for example)")
        if self.load_in_4bit and self.strategy == "fsdp":
            raise InputError(
                "--load-in-4bit runs with --strategy ddp (a 4-bit base is not sharded here)",
                fix="use --strategy ddp, or LoRA without --load-in-4bit under fsdp",
            )
        if self.ref_model and not Path(self.ref_model).is_dir():
            raise InputError(
                "reference model directory not found",
                where=self.ref_model,
                fix="pass a local save_pretrained directory to --ref-model",
            )

    @property
    def max_shard_bytes(self) -> int:
        """``--max-shard-size`` in bytes, in the one vocabulary of sizes (``5GB``, ``2GiB``)."""
        size = parse_size(self.max_shard_size, flag="--max-shard-size")
        if size < 1:
            raise InputError(
                f"--max-shard-size must be more than 0, got {self.max_shard_size!r}",
                fix="e.g. --max-shard-size 5GB",
            )
        return size

    def resume_key(self, world_size: int) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        keep = (
            "model",
            "ref_model",
            "loss",
            "beta",
            "label_smoothing",
            "sft_weight",
            "nll_weight",
            "shuffle",
            "epochs",
            "max_steps",
            "max_length",
            "lr",
            "warmup_ratio",
            "lr_schedule",
            "schedule_steps",
            "weight_decay",
            "max_grad_norm",
            "seed",
            "allowed_token_ids",
            "precision",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "lora_target",
            "load_in_4bit",
        )
        key = {k: getattr(self, k) for k in keep}
        key["global_batch"] = self.batch_size * self.grad_accum * world_size
        return key

    @property
    def lora(self) -> LoraSettings | None:
        """The adapter's settings, or None for full fine-tuning."""
        from trainers.lora import LoraSettings

        if not self.lora_r:
            return None
        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target=self.lora_target,
            load_in_4bit=self.load_in_4bit,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    """What a finished run reports (the CLI prints it; the catalog records :meth:`to_dict`)."""

    run_dir: Path
    model_dir: Path
    steps: int
    resumed_from: int | None
    world_size: int
    device: str
    pairs: dict[str, int]
    train_seconds: float
    pairs_per_s: float
    tokens_per_s: float
    final: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    #: each route's mean share of the peak learning rate (trainers.schedule.route_lr)
    lr_share: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"], out["model_dir"] = str(self.run_dir), str(self.model_dir)
        return out
