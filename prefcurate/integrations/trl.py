"""MixDPO inside TRL: a ``DPOTrainer`` that routes each pair to DPO or SFT by its ``route`` column.

MixDPO (arXiv:2602.00954) trains the clear pairs of a preference set with DPO and the ambiguous
ones (margin < τ) with the length-normalised NLL of the chosen response, reading the pairs in
curriculum order (largest margin first). :class:`MixDPOTrainer` is that method for people who
already train with TRL, so accelerate, DeepSpeed, FSDP, PEFT (``peft_config``), gradient
checkpointing, ``report_to`` and TRL's checkpoints all stay as they are. Per pair:

* ``route = "dpo"``: the preference loss of the configured ``loss_type`` on the summed response
  log-probs, the same functions as ``prefcurate train`` (:mod:`trainers.losses`): ``sigmoid``
  with ``label_smoothing`` ε is the conservative DPO of the paper's main runs
  (``−(1−ε)·log σ(βh) − ε·log σ(−βh)``; TRL's own DPOTrainer ignores ε for ``sigmoid``),
  ``robust`` and ``hinge`` are TRL's formulas;
* ``route = "sft"``: ``sft_weight`` × the length-normalised NLL of the chosen response (prompt
  masked). An sft pair has no rejected sequence in the batch and no reference forward.

``nll_weight`` adds that NLL to every dpo pair's term (DPO+NLL), and a soft-routed split's
``weight`` column (``route --soft T``) mixes the two terms per pair, exactly as ``prefcurate
train`` does: both engines read the split by one rule (:func:`prefcurate.data.schema.sft_mix`)
and compute the loss with one function (:meth:`trainers.objective.Objective.terms`).
The batch loss is the mean over pairs. The route travels with each pair through TRL's dataset
preparation and the collator (TRL drops columns it does not know; the paper's own code once lost
its routing that way and silently trained plain DPO): a dataset without a ``route`` column, or a
batch that arrives without it, is an error, never plain DPO. Pairs are read sequentially in
``rank`` order unless ``train_sampling_strategy="random"`` is asked for. Example::

    from datasets import load_dataset
    from prefcurate.integrations.trl import MixDPOConfig, MixDPOTrainer
    from prefcurate.routing.presets import PAPER  # the paper's cDPO: β 0.01, ε 0.1

    # written by: prefcurate route data.jsonl --threshold 0.5 --out split --export trl-mixdpo
    pairs = load_dataset("json", data_files="split/mixdpo.jsonl", split="train")
    args = MixDPOConfig("out", beta=PAPER.beta, label_smoothing=PAPER.label_smoothing)
    MixDPOTrainer(model, args=args, train_dataset=pairs, processing_class=tokenizer).train()

The learning rate the routed pairs get is part of the method (docs/training.md): read in
curriculum order the sft pairs come last, where TRL's default linear decay (like the paper's
cosine) has almost reached 0. Before training the trainer computes each route's mean share of the
peak rate from the schedule it will run (:mod:`trainers.schedule`, the rule ``prefcurate train``
uses), logs it, and warns, naming the fix, when a route's pairs would train below 10% of the peak.
``phased_schedule=True`` gives the sft phase its own warmup and cosine decay (``prefcurate train
--lr-schedule phased``); ``prefcurate route --placement spread`` spreads the sft pairs instead.

Logged (through TRL's ``log``, so TensorBoard / W&B see them): ``loss``; ``loss/dpo`` and
``loss/sft``, the mean loss term of each route; ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` over the dpo
pairs (TRL's names and meanings); ``pairs/dpo`` and ``pairs/sft`` per batch; ``num_tokens``;
``lr_share/dpo`` and ``lr_share/sft``, each route's mean share of the peak learning rate over the
pair visits so far. A window of steps with no pair of a route logs no value for that route's keys.

Tested with TRL 1.16 (the ``trl`` extra pins the range).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.base.log import get_logger
from prefcurate.base.quiet import debug_requested, quiet_dependencies
from prefcurate.data.schema import (
    ROUTE_DPO,
    ROUTE_SFT,
    ROUTES,
    WEIGHT_COLUMN,
    sft_mix,
    takes_preference,
)

with quiet_dependencies():  # TRL imports PEFT, which imports torchao: its import noise stays off
    import datasets
    import torch
    from accelerate.utils import is_peft_model
    from datasets import Dataset, IterableDataset
    from torch import Tensor
    from transformers.data.data_collator import DataCollatorMixin
    from transformers.utils import is_torch_bf16_gpu_available
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import pad, use_adapter

    from trainers import shared_prompt
    from trainers.logps import SequenceLogps, check_shared_prompt
    from trainers.objective import Objective, PairTerms
    from trainers.schedule import (
        RouteLr,
        Schedule,
        low_lr_warnings,
        route_lr,
        sequential_steps,
        sft_phase_start,
        share_line,
    )
    from trainers.shared_prompt import SharedPrompt, share_prompts


def _quiet_libraries() -> None:
    """The libraries' own progress bars off for this process: transformers' "Loading weights"
    and "Writing model shards", datasets' split and map bars (and datasets' log lines below
    errors). The Trainer's progress bar (tqdm, shown unless ``disable_tqdm``, which transformers
    derives from its log level: left as it is) and the metrics TRL logs stay: they are the
    training's own output. ``PREFCURATE_DEBUG=1`` leaves everything on."""
    if debug_requested():
        return
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


_quiet_libraries()

ROUTE = "route"
RANK = "rank"
#: The ``loss_type`` values MixDPOTrainer routes (one at a time): those whose formula TRL and
#: ``prefcurate train`` mix (TRL's ``ipo`` length-normalises log-probs, prefcurate's does not).
SUPPORTED_LOSSES: tuple[str, ...] = ("sigmoid", "robust", "hinge")
_log = get_logger("integrations.trl")
_FIX = "write the pairs with 'prefcurate route --export trl-mixdpo' and load mixdpo.jsonl"
#: What MixDPOTrainer says when a route's pairs would barely train.
LOW_LR_FIX = (
    "route with 'prefcurate route --placement spread', or set MixDPOConfig(phased_schedule=True) "
    "(the sft phase gets its own warmup and decay) or lr_scheduler_type='constant_with_warmup'"
)


# --------------------------------------------------------------------------- config


@dataclass
class MixDPOConfig(DPOConfig):
    """:class:`trl.DPOConfig` plus MixDPO's settings; every DPOConfig field keeps its meaning.

    Parameters
    ----------
    sft_weight
        Weight of an sft pair's NLL term (1.0 in the paper).
    nll_weight
        Weight of the chosen response's length-normalised NLL added to every dpo pair's term
        (DPO+NLL; 0 in the paper), as ``prefcurate train --nll-weight``.
    shared_prompt
        Compute each pair's prompt once, its chosen and rejected responses both attending to it
        (:mod:`trainers.shared_prompt`): the same losses with the prompt's share of the compute
        gone. On by default; the policy or reference keeps the ordinary batch when its attention
        cannot (``trainer.shared_prompt_off`` says why).
    train_sampling_strategy
        ``"sequential"`` (the default here) reads the pairs in the dataset's ``rank`` order, the
        curriculum; ``"random"`` shuffles, as plain TRL does by default.
    label_smoothing
        For ``loss_type="sigmoid"``: ε of conservative DPO (the paper uses 0.1); for ``"robust"``:
        the flip rate, as in TRL.
    phased_schedule
        Give the dpo phase and the sft phase (the sft pairs, last in the curriculum) each their own
        linear warmup (``warmup_steps`` as a share of the phase) and cosine decay, as ``prefcurate
        train --lr-schedule phased``; ``lr_scheduler_type`` is then not used. Needs the sft pairs
        last and ``train_sampling_strategy="sequential"``.
    """

    sft_weight: float = field(
        default=1.0, metadata={"help": "Weight of the NLL term of pairs routed to sft."}
    )
    nll_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the chosen NLL added to each dpo pair's loss (DPO+NLL)."},
    )
    shared_prompt: bool = field(
        default=True,
        metadata={
            "help": "Compute each pair's prompt once, both responses attending to it (the same "
            "losses); off by itself where the model cannot."
        },
    )
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={
            "help": "'sequential' (default) reads pairs in rank order, MixDPO's curriculum; "
            "'random' shuffles."
        },
    )

    phased_schedule: bool = field(
        default=False,
        metadata={
            "help": "Give the sft phase (the sft pairs, last) its own warmup and cosine decay, as "
            "'prefcurate train --lr-schedule phased'."
        },
    )

    def __post_init__(self) -> None:
        self._choose_precision()
        super().__post_init__()
        if len(self.loss_type) != 1 or self.loss_type[0] not in SUPPORTED_LOSSES:
            msg = (
                f"MixDPOTrainer routes one preference loss per dpo pair, one of "
                f"{', '.join(SUPPORTED_LOSSES)}; got loss_type={self.loss_type}"
            )
            raise ValueError(msg)
        if self.label_smoothing and self.loss_type[0] == "hinge":
            msg = "label_smoothing is defined for the sigmoid and robust losses, not hinge"
            raise ValueError(msg)
        unsupported = {
            "ld_alpha": self.ld_alpha is not None,
            "use_weighting": self.use_weighting,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
        }
        named = [name for name, on in unsupported.items() if on]
        if named:
            msg = f"MixDPOTrainer does not support {', '.join(named)} (leave the default)"
            raise ValueError(msg)
        for name in ("sft_weight", "nll_weight"):
            value = getattr(self, name)
            if value < 0 or not math.isfinite(value):
                msg = f"{name} must be a finite number >= 0, not {value}"
                raise ValueError(msg)

    def _choose_precision(self) -> None:
        """bf16 where the machine has it, when neither ``bf16`` nor ``fp16`` is given.

        TRL defaults ``bf16`` to True, which transformers refuses on a machine without a bf16
        GPU ("Your setup doesn't support bf16/gpu"): the same script then fails on a laptop and
        runs on a GPU. Here an unset ``bf16`` follows transformers' own test of the device; an
        explicit ``bf16=True`` still asks for it. TRL's default activation checkpointing is passed
        under transformers' current name, so it raises no FutureWarning about the old one.
        """
        if self.bf16 is None and not self.fp16:
            self.bf16 = not self.use_cpu and is_torch_bf16_gpu_available()
        for old, new in (
            ("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
        ):
            if hasattr(self, new) and getattr(self, new) is None:
                setattr(self, new, getattr(self, old))
                setattr(self, old, None)


# --------------------------------------------------------------------------- collator


@dataclass
class DataCollatorForMixDPO(DataCollatorMixin):
    """Pads tokenised pairs into one batch: every pair's chosen row, then the dpo pairs' rejected.

    Rows ``0..P-1`` are the chosen sequences of the ``P`` pairs, rows ``P..`` the rejected
    sequences of the dpo pairs, in pair order; an sft pair contributes no rejected row. Besides
    TRL's ``input_ids``, ``attention_mask`` and ``completion_mask`` the batch carries
    ``sft_mix`` (each pair's SFT mix, from ``route`` and ``weight`` by
    :func:`prefcurate.data.schema.sft_mix`) and ``is_dpo`` (the pairs with a preference term),
    ``rank`` when the pairs have one, and the precomputed reference log-probs when present (NaN for
    pairs without a preference term). Truncation is TRL's: per sequence, to
    ``max_length``, keeping the start.
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        mixes = [pair_mix(example) for example in examples]
        is_dpo = [takes_preference(mix) for mix in mixes]
        rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
        rows += [
            (e["prompt_ids"], e["rejected_ids"])
            for e, dpo in zip(examples, is_dpo, strict=True)
            if dpo
        ]
        ids = [list(p) + list(r) for p, r in rows]
        masks = [[0] * len(p) + [1] * len(r) for p, r in rows]
        if self.max_length is not None:
            if self.truncation_mode == "keep_start":
                cut = slice(None, self.max_length)
            elif self.truncation_mode == "keep_end":
                cut = slice(-self.max_length, None)
            else:
                msg = f"unsupported truncation_mode {self.truncation_mode!r}"
                raise ValueError(msg)
            ids, masks = [i[cut] for i in ids], [m[cut] for m in masks]

        def padded(seqs: list[list[int]], value: int) -> Tensor:
            tensors = [torch.tensor(s, dtype=torch.long) for s in seqs]
            return pad(tensors, value, "right", self.pad_to_multiple_of)

        out: dict[str, Any] = {
            "input_ids": padded(ids, self.pad_token_id),
            "attention_mask": padded([[1] * len(i) for i in ids], 0),
            "completion_mask": padded(masks, 0),
            "is_dpo": torch.tensor(is_dpo, dtype=torch.bool),
            "sft_mix": torch.tensor(mixes, dtype=torch.float64),
        }
        if RANK in examples[0]:
            out[RANK] = torch.tensor([int(e[RANK]) for e in examples], dtype=torch.long)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                values = [math.nan if e[key] is None else float(e[key]) for e in examples]
                out[key] = torch.tensor(values, dtype=torch.float32)
        return out


def pair_mix(example: Mapping[str, Any]) -> float:
    """A pair's SFT mix from its ``route`` and ``weight``; no route, or a bad one, is an error."""
    if ROUTE not in example:
        raise InputError(
            f"a pair reached the collator without its {ROUTE!r} column",
            fix="keep the route column (MixDPOTrainer adds it to the signature columns)",
        )
    try:
        return sft_mix(example[ROUTE], example.get(WEIGHT_COLUMN))
    except ValueError as exc:
        raise InputError(str(exc), fix=_FIX) from None


# --------------------------------------------------------------------------- trainer


class MixDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with MixDPO's per-pair routing (module docstring); same arguments.

    ``args`` must be a :class:`MixDPOConfig` (built with defaults when omitted), and
    ``train_dataset`` (and ``eval_dataset``) must carry a ``route`` column with ``"dpo"`` or
    ``"sft"`` per pair; a ``rank`` column, when present, fixes the order the pairs are read in.
    """

    _tag_names = ["trl", "dpo", "mixdpo", "prefcurate"]
    _name = "MixDPO"

    def __init__(
        self,
        model,
        ref_model=None,
        args: MixDPOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        **kwargs: Any,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = MixDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-MixDPO")
        if not isinstance(args, MixDPOConfig):
            raise InputError(
                f"args is a {type(args).__name__}, not a MixDPOConfig",
                fix="build the arguments with prefcurate.integrations.trl.MixDPOConfig",
            )
        train_dataset = routed_dataset(train_dataset, "train_dataset")
        #: why the policy or reference model computes each prompt once per response (by name);
        #: None until the first forward decides (trainers.shared_prompt)
        self.shared_prompt_off: dict[str, str] | None = None
        if ref_model is None and _needs_reference_copy(model, args, kwargs):
            # TRL reloads the reference from the model's path; a model built in memory has none
            ref_model = copy.deepcopy(model)
        if eval_dataset is not None:
            eval_dataset = routed_dataset(eval_dataset, "eval_dataset")
        with quiet_dependencies():  # TRL's dataset preparation: its warnings stay off
            super().__init__(
                model,
                ref_model=ref_model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                **kwargs,
            )
        if self._is_vision_dataset:
            raise InputError("MixDPOTrainer trains text pairs; this dataset has images")
        self._use_mixdpo_collator()
        #: the same objective as ``prefcurate train`` (trainers.objective), with TRL's settings
        self.objective = Objective(
            loss=self.loss_types[0],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            sft_weight=args.sft_weight,
            nll_weight=args.nll_weight,
        )

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """TRL's ``train``, without its dependencies' warnings on the screen (the progress bar
        and the logged metrics stay; ``PREFCURATE_DEBUG=1`` lets the warnings through)."""
        with quiet_dependencies():
            return super().train(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """TRL's ``evaluate``, quiet like :meth:`train`."""
        with quiet_dependencies():
            return super().evaluate(*args, **kwargs)

    # ----------------------------------------------------------------- data

    def _use_mixdpo_collator(self) -> None:
        """Swap TRL's default preference collator for the routed one (same padding settings)."""
        old = self.data_collator
        if isinstance(old, DataCollatorForPreference):
            self.data_collator = DataCollatorForMixDPO(
                pad_token_id=old.pad_token_id,
                max_length=old.max_length,
                truncation_mode=old.truncation_mode,
                pad_to_multiple_of=old.pad_to_multiple_of,
            )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for column in (ROUTE, RANK, WEIGHT_COLUMN):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        # runs inside DPOTrainer.__init__, before the collator swap in our __init__
        self._use_mixdpo_collator()
        return super()._precompute_ref_logps(dataset, name, batch_size)

    # ----------------------------------------------------------------- learning rate

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """TRL's scheduler (or the phased one), then each route's mean share of its peak rate:
        logged, and a warning per route below 10% (:func:`trainers.schedule.low_lr_warnings`)."""
        if self.lr_scheduler is None and self.args.phased_schedule:
            schedule = self._phased(num_training_steps)
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
            self._created_lr_scheduler = True
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        self.route_lr = self._route_lr(scheduler, num_training_steps)
        return scheduler

    def _reading(self, num_training_steps: int) -> tuple[list[float], list[range]] | None:
        """Each pair's SFT mix and the pairs of each optimizer step, read in order (None for an
        IterableDataset, whose pairs are not known in advance)."""
        dataset, args = self.train_dataset, self.args
        if not isinstance(dataset, Dataset):
            return None
        weights = dataset[WEIGHT_COLUMN] if WEIGHT_COLUMN in dataset.column_names else None
        mixes = [
            sft_mix(route, None if weights is None else weights[i])
            for i, route in enumerate(dataset[ROUTE])
        ]
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        steps = sequential_steps(len(mixes), batch * args.world_size, num_training_steps)
        return mixes, steps

    def _phased(self, num_training_steps: int) -> Schedule:
        """The phased schedule: the sft phase starts at the first step holding an sft pair."""
        reading = self._reading(num_training_steps)
        if reading is None or self.args.train_sampling_strategy != "sequential":
            raise InputError(
                "phased_schedule starts the sft phase where the sft pairs begin, so it needs a "
                "datasets.Dataset read in order",
                fix="pass a Dataset and keep train_sampling_strategy='sequential'",
            )
        _, steps = reading
        sft = [route == ROUTE_SFT for route in self.train_dataset[ROUTE]]
        try:
            start = sft_phase_start(sft, steps)
        except ValueError as exc:
            raise InputError(
                f"phased_schedule gives the sft pairs, last in the dataset, their own warmup "
                f"and decay; here {exc}",
                fix="route with --placement last and train one epoch, or drop phased_schedule",
            ) from None
        warmup = self.args.warmup_steps
        ratio = warmup if warmup < 1 else warmup / max(1, num_training_steps)
        return Schedule("phased", ratio, num_training_steps, start)

    def _route_lr(self, scheduler, num_training_steps: int) -> RouteLr | None:
        """Each route's share of the peak rate under ``scheduler``; said, and warned below 10%."""
        lambdas = getattr(scheduler, "lr_lambdas", None)
        reading = self._reading(num_training_steps)
        if not lambdas or reading is None:
            _log.info("the learning rate each route gets is not known in advance here")
            return None
        mixes, steps = reading
        if self.args.train_sampling_strategy != "sequential":  # any position: the mean factor
            mixes = [math.fsum(mixes) / len(mixes)] * len(mixes)
        lr = route_lr(mixes, steps, lambdas[0])
        scheduler_type = getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
        kind = "phased" if self.args.phased_schedule else f"TRL's {scheduler_type}"
        _log.info("%s (%s schedule)", share_line(lr), kind)
        for warning in low_lr_warnings(lr, LOW_LR_FIX):
            _log.warning(warning.removeprefix("warning: "))
        return lr

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, with each route's mean share of the peak rate so far (``lr_share/...``)."""
        lr = getattr(self, "route_lr", None)
        step = self.state.global_step
        if lr is not None and self.model.training and 0 < step <= len(lr.running):
            for route, share in lr.running[step - 1].items():
                if share is not None:
                    logs[f"lr_share/{route}"] = share
        super().log(logs, start_time)

    # ----------------------------------------------------------------- loss

    def compute_ref_log_probs(self, model, inputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Reference log-probs of each pair's chosen and rejected response; NaN for sft pairs.

        Only the dpo pairs' rows are forwarded. Under DeepSpeed or FSDP with several processes a
        process whose batch has no dpo pair still forwards one row (and discards it), so that the
        collective parameter gathers of the forward stay in step across processes.
        """
        is_dpo = _is_dpo(inputs)
        pairs, n_dpo = is_dpo.numel(), int(is_dpo.sum())
        device = inputs["input_ids"].device
        chosen = torch.full((pairs,), math.nan, device=device)
        rejected = torch.full((pairs,), math.nan, device=device)
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        if n_dpo == 0 and not (sharded and self.accelerator.num_processes > 1):
            return chosen, rejected
        if n_dpo:
            dpo_rows = is_dpo.nonzero().squeeze(1)
            rows = torch.cat([dpo_rows, pairs + torch.arange(n_dpo, device=device)])
        else:
            rows = torch.zeros(2, dtype=torch.long, device=device)
        sub = {k: inputs[k][rows] for k in ("input_ids", "attention_mask", "completion_mask")}
        sub["is_dpo"] = torch.ones(rows.numel() // 2, dtype=torch.bool, device=device)
        if self._layout(model, sub) is None:
            ref_chosen, ref_rejected = super().compute_ref_log_probs(model, sub)
        else:  # TRL's reference forward, on the shared-prompt row
            with self._reference_context():
                ref_chosen, ref_rejected = self._sequence_logps(model, sub)[0].chunk(2)
        if n_dpo:
            chosen[is_dpo] = ref_chosen.float()
            rejected[is_dpo] = ref_rejected.float()
        return chosen, rejected

    def pair_terms(self, model, inputs: dict[str, Any]) -> PairTerms:
        """Forward the batch once and return each pair's routed loss term (module docstring).

        The same :class:`trainers.objective.PairTerms` as ``prefcurate train``'s objective:
        ``chosen_logps``, ``chosen_nll`` and ``loss`` have one entry per pair; ``rejected_logps``,
        ``preference`` and the rewards one per dpo pair, in pair order.
        """
        return self._forward(model, inputs)[0]

    def _forward(self, model, inputs: dict[str, Any]) -> tuple[PairTerms, Any]:
        """:meth:`pair_terms` and the model's outputs (their aux loss, for ``compute_loss``)."""
        is_dpo = _is_dpo(inputs)
        logps, n_tokens, outputs = self._sequence_logps(model, inputs)
        if self.precompute_ref_logps:
            ref_chosen = inputs["ref_chosen_logps"].float()
            ref_rejected = inputs["ref_rejected_logps"].float()
        else:
            reference = self.ref_model if self.ref_model is not None else self.model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(reference, inputs)
        terms = self.objective.terms(
            logps,
            n_tokens,
            is_dpo=is_dpo,
            ref_chosen=ref_chosen.float(),
            ref_rejected=ref_rejected.float(),
            sft_mix=inputs.get("sft_mix"),
            tokens=int(inputs["attention_mask"].sum()),
        )
        return terms, outputs

    def _sequence_logps(self, model, inputs: dict[str, Any]) -> tuple[Tensor, Tensor, Any]:
        """Each row's summed response log-probs and response tokens, from one forward through
        TRL's fused head, on the shared-prompt row when the model shares prompts."""
        completion_mask = inputs["completion_mask"]
        model_kwargs: dict[str, Any] = {"use_cache": False}
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        shared = self._layout(model, inputs)
        if shared is not None:
            labels = shared.labels(completion_mask)
            outputs = model(**shared.model_inputs(), **model_kwargs, labels=labels,
                            fused_lm_head=True)  # fmt: skip
            logps, n_tokens = shared.per_sequence(outputs.log_probs[0].float(), labels[0])
            return logps, n_tokens, outputs
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        **model_kwargs, labels=labels, fused_lm_head=True)  # fmt: skip
        shift_mask = completion_mask[:, 1:]
        # prompt-learning PEFT prepends virtual tokens; keep the positions of the real tokens
        per_token = outputs.log_probs[:, -shift_mask.size(1) :].float()
        return (per_token * shift_mask).sum(dim=1), shift_mask.sum(dim=1), outputs

    # ----------------------------------------------------------------- shared prompt

    def _layout(self, model, inputs: dict[str, Any]) -> SharedPrompt | None:
        """The batch's shared-prompt layout (trainers.shared_prompt) when ``model`` shares
        prompts and the batch gains from it; None: the ordinary batch."""
        if not self._shares_prompts(model):
            return None
        return share_prompts(
            inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"],
            _is_dpo(inputs),
        )  # fmt: skip

    def _shares_prompts(self, model) -> bool:
        """Whether ``model`` (the policy, the reference, or either wrapped) shares prompts. The
        first call switches the policy and the reference model on, each when it can, and logs
        (INFO) why not otherwise (the reasons stay in ``shared_prompt_off``)."""
        if not self.args.shared_prompt:
            return False
        if self.shared_prompt_off is None:
            self.shared_prompt_off = {}
            for name, candidate in (("model", self.model), ("ref_model", self.ref_model)):
                if candidate is not None:
                    reason = _enable_shared_prompt(candidate)
                    if reason is not None:
                        self.shared_prompt_off[name] = reason
                        # not a warning: the losses are the same, only the speed differs
                        _log.info("%s computes each prompt once per response: %s", name, reason)
        return shared_prompt.is_enabled(_causal_lm(self.accelerator.unwrap_model(model)))

    def _reference_context(self) -> contextlib.ExitStack:
        """What TRL's reference forward runs under: no gradients, no activation checkpointing,
        the reference adapter (a PEFT policy without a reference model), autocast."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)
        )
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = "ref" if "ref" in unwrapped.peft_config else None
            stack.enter_context(use_adapter(unwrapped, adapter_name=adapter))
        stack.enter_context(self.accelerator.autocast())
        return stack

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms, outputs = self._forward(model, inputs)
        loss = terms.loss.mean()
        mode = "train" if self.model.training else "eval"
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            aux = self.accelerator.gather_for_metrics(outputs.aux_loss.detach()).mean().item()
            self._metrics[mode]["aux_loss"].append(aux)
        self._record_metrics(terms, mode)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _record_metrics(self, terms: PairTerms, mode: str) -> None:
        """Sum this batch's per-route statistics over processes and append their means."""
        dpo = terms.is_dpo
        margins = terms.reward_chosen - terms.reward_rejected
        sums = torch.stack(
            [
                dpo.sum().float(),
                (~dpo).sum().float(),
                terms.loss.detach()[dpo].sum(),
                terms.loss.detach()[~dpo].sum(),
                terms.reward_chosen.sum(),
                terms.reward_rejected.sum(),
                margins.sum(),
                (margins > 0).sum().float(),
                terms.chosen_logps[dpo].sum(),
                terms.rejected_logps.sum(),
                torch.tensor(float(terms.tokens), device=dpo.device),
            ]
        ).float()
        total = self.accelerator.gather(sums[None]).sum(0).tolist()
        n_dpo, n_sft, loss_dpo, loss_sft, *dpo_sums, tokens = total
        metrics = self._metrics[mode]
        metrics["pairs/dpo"].append(n_dpo)
        metrics["pairs/sft"].append(n_sft)
        if n_dpo:
            metrics["loss/dpo"].append(loss_dpo / n_dpo)
            names = ("rewards/chosen", "rewards/rejected", "rewards/margins")
            names += ("rewards/accuracies", "logps/chosen", "logps/rejected")
            for name, value in zip(names, dpo_sums, strict=True):
                metrics[name].append(value / n_dpo)
        if n_sft:
            metrics["loss/sft"].append(loss_sft / n_sft)
        if mode == "train":
            self._total_train_tokens += int(tokens) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]


def _needs_reference_copy(model: Any, args: MixDPOConfig, kwargs: dict[str, Any]) -> bool:
    """Whether the reference must be a copy: a full fine-tune of a model with no path to reload."""
    if isinstance(model, str) or kwargs.get("peft_config") is not None:
        return False
    if args.precompute_ref_log_probs or getattr(model, "peft_config", None):
        return False
    return not str(getattr(model.config, "_name_or_path", "") or "")


def _causal_lm(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (the one whose attention is switched)."""
    return model.get_base_model() if is_peft_model(model) else model


def _enable_shared_prompt(model: Any) -> str | None:
    """Switch ``model`` to the shared prompt when it can; why not, otherwise."""
    if is_peft_model(model) and model.active_peft_config.is_prompt_learning:
        return "prompt-learning PEFT adds virtual tokens before every sequence"
    return check_shared_prompt(SequenceLogps(_causal_lm(model)))


def _is_dpo(inputs: Mapping[str, Any]) -> Tensor:
    if "is_dpo" not in inputs:
        raise InputError(
            "the batch has no route (is_dpo): the collator dropped the route column",
            fix="use MixDPOTrainer's default collator, or one that sets is_dpo per pair",
        )
    return inputs["is_dpo"].bool()


# --------------------------------------------------------------------------- datasets


def routed_dataset(dataset: Any, name: str = "dataset") -> Any:
    """Check that ``dataset`` routes every pair, and put it in ``rank`` order when it has ranks.

    A ``datasets.Dataset`` (or a dict of them) needs a ``route`` column whose every value is
    ``"dpo"`` or ``"sft"``; an ``IterableDataset`` is checked on its first pair (and every pair is
    checked again by the collator). Raises :class:`~prefcurate.base.errors.InputError` otherwise.
    """
    if dataset is None:
        raise InputError(f"{name} is required", fix=_FIX)
    if isinstance(dataset, Mapping):
        return {key: routed_dataset(value, f"{name}[{key!r}]") for key, value in dataset.items()}
    if isinstance(dataset, IterableDataset):
        first = next(iter(dataset))
        if ROUTE not in first:
            raise InputError(f"{name} has no {ROUTE!r} column", fix=_FIX)
        pair_mix(first)
        return dataset
    if not isinstance(dataset, Dataset):
        raise InputError(
            f"{name} is a {type(dataset).__name__}, not a datasets.Dataset",
            fix="pass datasets.Dataset (see prefcurate.integrations.trl.load_pairs)",
        )
    if ROUTE not in dataset.column_names:
        raise InputError(
            f"{name} has no {ROUTE!r} column: MixDPO needs each pair's route, and without it "
            "the run would be plain DPO",
            fix=_FIX,
        )
    bad = sorted({str(r) for r in dataset.unique(ROUTE)} - set(ROUTES))
    if bad:
        raise InputError(f"{name}: route {bad[0]!r} is not one of {', '.join(ROUTES)}", fix=_FIX)
    if RANK in dataset.column_names:
        ranks = dataset[RANK]
        if any(b < a for a, b in zip(ranks, ranks[1:], strict=False)):
            dataset = dataset.sort(RANK)
    return dataset


def load_pairs(path: str | Path, *, split: str = "train") -> Dataset:
    """The routed pairs of a split as a ``datasets.Dataset`` in curriculum (rank) order.

    ``path`` is a split directory written by ``prefcurate route`` (its ``{split}.parquet`` is
    read: ``"train"``, or ``"eval"`` with ``--eval-fraction``), a routed Parquet file, or the
    ``mixdpo.jsonl`` of ``--export trl-mixdpo``. Example::

        >>> train = load_pairs("out/uf-mixdpo")                   # doctest: +SKIP
        >>> train.column_names                                     # doctest: +SKIP
        ['pair_id', 'prompt', 'chosen', 'rejected', 'margin', 'route', 'rank']
        >>> held_out = load_pairs("out/uf-mixdpo", split="eval")  # doctest: +SKIP
    """
    from prefcurate.routing.exports.common import mixdpo_frame

    path = Path(path)
    if path.is_dir():
        path = path / f"{split}.parquet"
    if not path.is_file():
        raise InputError("no such split file", where=path, fix=_FIX)
    if path.suffix == ".parquet":
        frame = mixdpo_frame(pl.scan_parquet(path), where=path).collect()
    else:
        frame = pl.read_ndjson(path)
        if ROUTE not in frame.columns:
            raise InputError(f"no {ROUTE!r} column", where=path, fix=_FIX)
        if RANK in frame.columns:
            frame = frame.sort(RANK)
    return Dataset.from_polars(frame)


__all__ = [
    "DataCollatorForMixDPO",
    "MixDPOConfig",
    "MixDPOTrainer",
    "ROUTE_DPO",
    "ROUTE_SFT",
    "load_pairs",
    "routed_dataset",
]
