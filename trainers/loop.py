"""The training loop: MixDPO and its baselines on any causal LM, on a CPU, a GPU or under torchrun.

One function, :func:`train`, reads top to bottom: settings → memory plan → data → model (LoRA,
sharding) → reference → optimizer → resume → loop → final model. From Python::

    >>> from trainers.loop import TrainConfig, train
    >>> result = train(TrainConfig("splits/uf", model="tiny", out="runs/tiny", lr=1e-3,
    ...                            max_steps=24))                              # doctest: +SKIP
    >>> result.final["rewards/accuracies"]                                      # doctest: +SKIP

The same command line, on 2 processes (each with a strided share of every global batch), with the
model replicated (ddp) or sharded (fsdp, :mod:`trainers.strategy`)::

    torchrun --nproc_per_node=2 -m prefcurate train splits/uf --model tiny --out runs/ddp
    torchrun --nproc_per_node=2 -m prefcurate train splits/uf --model tiny --strategy fsdp \
        --out runs/fsdp
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefcurate.base.errors import InputError, PrefcurateError
from trainers import dist, lora, memory, rundir
from trainers.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    newest_intact,
    read_state,
    remove_partial,
    save_checkpoint,
)
from trainers.config import TrainConfig, TrainResult
from trainers.data import Curriculum, Split, TokenizedPairs, collate, read_split
from trainers.device import resolve_device
from trainers.evaluation import EvalSet, check_eval, evaluate, read_eval_split
from trainers.export import ADAPTER_DIR, MODEL_DIR, full_state_dict, save_final
from trainers.logps import SequenceLogps, check_allowed, check_shared_prompt
from trainers.model import LoadedModel, check_max_length, describe, load_model
from trainers.objective import STAT_KEYS, Objective, step_metrics
from trainers.optim import adamw, check_bf16_optimizer
from trainers.prepare import reference_for, tokenized_pairs
from trainers.reporter import Reporter
from trainers.rundir import METRICS, RUN_JSON
from trainers.schedule import (
    RouteLr,
    Schedule,
    low_lr_warnings,
    lr_factor,
    route_lr,
    sft_phase_start,
    share_line,
)
from trainers.strategy import (
    autocast_for,
    full_value,
    gradient_sync,
    is_sharded,
    keeps_gradients,
    resolve_precision,
    wrap,
)
from trainers.trackers import Tracker, check_tracker, open_tracker, tracker_names

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "lr_factor", "train"]


class NonFiniteLossError(PrefcurateError):
    """The loss or the gradient became NaN/inf; the run stops with the last good checkpoint kept."""

    exit_code = 1


# --------------------------------------------------------------------------- settings


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; ask torch for deterministic kernels (ops without one warn)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def check_run_dir(config: TrainConfig) -> None:
    """Nothing is overwritten silently: an existing run needs ``--resume`` or ``--force``."""
    out = Path(config.out)
    rundir.check_run_dir(
        out,
        split_dir=Path(config.split_dir),
        models=(config.model, config.ref_model),
        force=config.force,
        resume=config.resume,
    )
    if config.resume and latest_checkpoint(out) is None:
        raise InputError(
            "--resume found no complete checkpoint",
            where=out / "checkpoints",
            fix="start the run without --resume (save checkpoints with --save-every N)",
        )


# --------------------------------------------------------------------------- the run


def train(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train on ``config.split_dir`` and write ``config.out``; see the module docstring.

    Raises :class:`InputError` for the user's mistakes (before anything is written) and
    :class:`NonFiniteLossError` when the loss turns NaN (the last good checkpoint is kept).
    """
    config.validate()
    device = resolve_device(config.device)
    eval_source = _check_before_loading(config, device)
    check_run_dir(config)
    info = dist.launched()
    if device.type == "cuda" and info.world_size > 1:
        device = torch.device("cuda", info.local_rank)
    planned = memory.check(config, device, world_size=info.world_size)
    info = dist.setup(device.type)
    if planned.settings.strategy == "fsdp":
        dist.single_process_group(device.type)  # a no-op under torchrun
    reporter = reporter if (reporter is not None and info.main) else Reporter()
    try:
        with rundir.record_ending(config.out, main=info.main):  # run.json says how it ended
            return _train(config, device, info, reporter, planned, eval_source)
    finally:
        reporter.close()
        dist.teardown()


def _check_before_loading(config: TrainConfig, device: torch.device) -> tuple[Path, str] | None:
    """What the device, the installed packages and the split must offer for these settings;
    returns where the held-out pairs are (None: no evaluation)."""
    if config.load_in_4bit:
        lora.check_4bit(device)
    if config.offload and device.type != "cuda":
        raise InputError(
            "--offload keeps FSDP shards in CPU memory while a GPU computes; it needs CUDA",
            fix="drop --offload on the CPU (the shards are in CPU memory already)",
        )
    if resolve_precision(config.precision, device) == "bf16":
        check_bf16_optimizer()
    check_tracker(config.report_to)
    return check_eval(config.split_dir, config.eval_split, config.eval_every)


@dataclass
class _Run:
    """What the steps of one run share: settings, where it runs, the model and its data."""

    config: TrainConfig
    device: torch.device
    info: dist.DistInfo
    reporter: Reporter
    autocast: Callable[[], Any]
    split: Split
    policy: LoadedModel
    pairs: TokenizedPairs
    logps: SequenceLogps
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    #: the split's content hash and the model's fingerprint: a resume must match them
    identity: dict[str, str]
    planned: memory.MemoryPlan
    precision: str
    module: torch.nn.Module  # what the loop calls: logps, DDP-wrapped or FSDP2-sharded
    curriculum: Curriculum  # the pairs of each step
    objective: Objective
    peft_model: Any = None  # the PEFT wrapper when training a LoRA adapter
    eval_set: EvalSet | None = None  # the held-out pairs (--eval-every, --eval-split)
    route_lr: RouteLr | None = None  # each route's share of the peak rate (trainers.schedule)
    unshared: str | None = "off"  # why prompts are not shared (trainers.shared_prompt); None: on

    @property
    def shared_prompt(self) -> bool:
        return self.unshared is None

    @property
    def sharded(self) -> bool:
        return is_sharded(self.module)


def _train(
    config: TrainConfig,
    device: torch.device,
    info: dist.DistInfo,
    reporter: Reporter,
    planned: memory.MemoryPlan,
    eval_source: tuple[Path, str] | None,
) -> TrainResult:
    setup_started = time.perf_counter()
    run = _prepare(config, device, info, reporter, planned, eval_source)
    optimizer, scheduler, schedule = _optimizer(run)
    run.route_lr = _route_lr(run, schedule)
    start_step, resumed_from = _open_run_dir(run, optimizer, scheduler)
    _say_route_lr(run, schedule)
    run_json = _run_json(run, schedule, resumed_from)
    run_json["setup_seconds"] = round(time.perf_counter() - setup_started, 3)
    tracker = _tracker(run, start_step)
    try:
        loop = _steps(run, optimizer, scheduler, start_step, tracker)
    except NonFiniteLossError as exc:
        if info.main:
            _write_json(config.out / RUN_JSON, {**run_json, "status": "failed", "error": str(exc)})
        raise
    finally:
        tracker.close()
    model_dir = _save_model(run)
    seconds = loop.seconds
    result = TrainResult(
        run_dir=config.out,
        model_dir=model_dir,
        steps=run.curriculum.total_steps,
        resumed_from=resumed_from,
        world_size=info.world_size,
        device=str(device),
        pairs=run.pairs.counts(),
        train_seconds=round(seconds, 3),
        pairs_per_s=loop.seen_pairs / seconds if seconds else 0.0,
        tokens_per_s=loop.seen_tokens / seconds if seconds else 0.0,
        final=loop.metrics,
        summary=summarize(config.out / METRICS) if info.main else {},
        lr_share=run.route_lr.shares,
    )
    if info.main:
        completed = {**run_json, "status": "completed", "result": result.to_dict()}
        if loop.last_eval is not None:
            completed["eval"] = {**run_json.get("eval", {}), "final": loop.last_eval}
        _write_json(config.out / RUN_JSON, completed)
    return result


def _prepare(
    config: TrainConfig,
    device: torch.device,
    info: dist.DistInfo,
    reporter: Reporter,
    planned: memory.MemoryPlan,
    eval_source: tuple[Path, str] | None,
) -> _Run:
    """Seed, read the split in rank order, load the policy, tokenise once, add the LoRA adapter,
    share prompts if the model can, replicate or shard it, and compute the reference log-probs
    once, before training (the initial policy — with LoRA the base, adapter off — unless
    --ref-model); the same for the held-out pairs when the run evaluates."""
    seed_everything(config.seed)
    strategy = planned.settings.strategy
    precision = resolve_precision(config.precision, device)
    autocast = autocast_for(strategy, precision, device)
    split = read_split(config.split_dir)
    policy = _load_policy(config, device, precision, reporter)
    pairs = _tokenized(split, policy, config, reporter, what="pairs")
    eval_set = None
    if eval_source is not None:
        held_out = read_eval_split(eval_source)
        held_pairs = _tokenized(held_out, policy, config, reporter, what="held-out pairs")
        eval_set = EvalSet.from_split(held_out, eval_source[1], held_pairs)
    peft_model, logps, module, unshared = _build_module(
        config, device, info, policy, pairs, strategy=strategy, precision=precision
    )
    curriculum = _curriculum(config, len(pairs), info.world_size)
    run = _Run(
        config, device, info, reporter, autocast, split, policy, pairs, logps,
        torch.empty(0), torch.empty(0), {}, planned, precision, module, curriculum,
        _objective(config), peft_model, eval_set, unshared=unshared,
    )  # fmt: skip
    _references(run)
    run.identity = {
        "split_path": str(config.split_dir),
        "split_sha256": split.sha256,  # read_split hashed the file it read
        "model_path": str(config.model),
        "model_fingerprint": policy.fingerprint,
    }
    return run


def _load_policy(
    config: TrainConfig, device: torch.device, precision: str, reporter: Reporter
) -> LoadedModel:
    """The policy in the dtype its precision stores (a LoRA base needs no fp32 master)."""
    bf16_base = precision == "bf16" or (config.lora is not None and precision == "bf16-mixed")
    with reporter.phase(f"loading {config.model}"):
        policy = load_model(
            config.model,
            seed=config.seed,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
            dtype=torch.bfloat16 if bf16_base else torch.float32,
            attn_implementation=config.attn_implementation,
            quantization_config=lora.quantization_config() if config.load_in_4bit else None,
            device_map={"": device} if config.load_in_4bit else None,
        )
    check_max_length(policy, config.max_length)
    return policy


def _shared_prompt(config: TrainConfig, logps: SequenceLogps) -> str | None:
    """Share each pair's prompt between its two sequences (the default) when the model can and
    it is faster: None when on, else why not (run.json records it; the losses are the same)."""
    if not config.shared_prompt:
        return "--no-shared-prompt"
    return check_shared_prompt(logps)


def _tokenized(
    split: Split, policy: LoadedModel, config: TrainConfig, reporter: Reporter, *, what: str
) -> TokenizedPairs:
    """The split's tokens (cached), with a progress bar while they are made."""
    with reporter.phase(f"tokenizing {what}", unit="pairs") as advance:
        pairs = tokenized_pairs(split, policy, config, progress=advance)
    if pairs.identical:
        reporter.message(
            f"warning: {pairs.identical} dpo {what} have identical chosen and rejected tokens "
            f"after --max-length {config.max_length} truncation; they are trained as sft"
        )
    return pairs


def _build_module(
    config: TrainConfig,
    device: torch.device,
    info: dist.DistInfo,
    policy: LoadedModel,
    pairs: TokenizedPairs,
    *,
    strategy: str,
    precision: str,
) -> tuple[Any, SequenceLogps, torch.nn.Module, str | None]:
    """The LoRA adapter (if any), the log-prob module, what the loop calls (it replicated (DDP)
    or sharded (FSDP2)), and why prompts are not shared (None: they are)."""
    peft_model = None
    if config.lora is not None:
        peft_model = lora.apply_lora(
            policy.model, config.lora, checkpointing=config.gradient_checkpointing
        )
        policy.model = lora.language_model(peft_model)
    if not config.load_in_4bit:
        policy.model.to(device)
    logps = SequenceLogps(
        policy.model, allowed_token_ids=config.allowed_token_ids, packed=config.packed
    )
    logps.check_head()
    unshared = _shared_prompt(config, logps)  # before wrapping: it sets the attention
    if config.allowed_token_ids is not None:
        check_allowed(pairs, config.allowed_token_ids, config.split_dir)
    if config.gradient_checkpointing:
        _activation_checkpointing(policy.model, enable=True)
    module = wrap(
        logps,
        policy.model,
        strategy=strategy,
        world_size=info.world_size,
        precision=precision,
        offload=config.offload,
    )
    return peft_model, logps, module, unshared


def _references(run: _Run) -> None:
    """The reference log-probs of the training pairs (and of the held-out pairs' two sides),
    from the cache or one pass each."""
    config = run.config

    def shard(model: torch.nn.Module, root: torch.nn.Module) -> torch.nn.Module:
        return wrap(root, model, strategy="fsdp", world_size=run.info.world_size,
                    precision=run.precision, offload=config.offload)  # fmt: skip

    # a --max-steps run short of the split needs the reference only for the pairs it reaches
    curriculum, only = run.curriculum, None
    if curriculum.total_steps < curriculum.steps_per_epoch * config.epochs:
        steps = range(curriculum.total_steps)
        only = torch.unique(torch.cat([curriculum.step_pairs(s) for s in steps]))
    common = {"module": run.logps, "shard": shard if run.sharded else None}
    with lora.reference_mode(run.peft_model):
        with run.reporter.phase("reference log-probs", unit="pairs") as advance:
            run.ref_chosen, run.ref_rejected = reference_for(
                run.pairs, run.policy, config, run.device, run.autocast, only=only,
                progress=advance, **common,
            )  # fmt: skip
        if run.eval_set is not None:
            with run.reporter.phase("reference log-probs, held-out", unit="pairs") as advance:
                run.eval_set.ref_chosen, run.eval_set.ref_rejected = reference_for(
                    run.eval_set.both_sides(), run.policy, config, run.device, run.autocast,
                    progress=advance, **common,
                )  # fmt: skip


def _objective(config: TrainConfig) -> Objective:
    return Objective(
        loss=config.loss,
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        sft_weight=config.sft_weight,
        nll_weight=config.nll_weight,
    )


def _curriculum(config: TrainConfig, n_pairs: int, world_size: int) -> Curriculum:
    return Curriculum(
        n_pairs=n_pairs,
        global_batch=config.batch_size * config.grad_accum * world_size,
        epochs=config.epochs,
        max_steps=config.max_steps,
        shuffle=config.shuffle,
        seed=config.seed,
    )


def _optimizer(run: _Run):
    """AdamW (with stochastic rounding under ``--precision bf16``) and the learning-rate schedule
    (:class:`trainers.schedule.Schedule`: warmup then cosine, constant, or phased)."""
    config = run.config
    schedule = _schedule(run)
    params = [p for p in run.module.parameters() if p.requires_grad]
    optimizer = adamw(
        params, lr=config.lr, weight_decay=config.weight_decay, precision=run.precision
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    return optimizer, scheduler, schedule


#: What ``train`` says when a route's pairs would barely train.
LOW_LR_FIX = (
    "route with --placement spread (the sft pairs spread through the curriculum), or train with "
    "--lr-schedule phased (the sft phase gets its own warmup and decay) or constant"
)


def _schedule(run: _Run) -> Schedule:
    """The run's schedule; ``phased`` finds where its sft phase starts from the split's routes."""
    config, curriculum = run.config, run.curriculum
    total = curriculum.total_steps if config.schedule_steps is None else config.schedule_steps
    if total < curriculum.total_steps:
        raise InputError(
            f"--schedule-steps {total} is fewer than the run's {curriculum.total_steps} steps",
            fix="drop --schedule-steps, or give at least the run's steps",
        )
    start = None
    if config.lr_schedule == "phased":
        sft = (run.split.frame["route"] == "sft").to_list()
        try:
            start = sft_phase_start(sft, _step_pairs(curriculum))
        except ValueError as exc:
            raise InputError(
                f"--lr-schedule phased gives the sft pairs, last in the split, their own warmup "
                f"and decay; here {exc}",
                where=config.split_dir,
                fix="route with --placement last, train one epoch without --shuffle, or use "
                "--lr-schedule cosine or constant",
            ) from None
    return Schedule(config.lr_schedule, config.warmup_ratio, total, start)


def _step_pairs(curriculum: Curriculum) -> list[list[int]]:
    return [curriculum.step_pairs(s).tolist() for s in range(curriculum.total_steps)]


def _route_lr(run: _Run, schedule: Schedule) -> RouteLr:
    """Each route's mean share of the peak rate over the run's pair visits, and after each step."""
    return route_lr(run.pairs.sft_mix.tolist(), _step_pairs(run.curriculum), schedule.factor)


def _say_route_lr(run: _Run, schedule: Schedule) -> None:
    """Each route's mean share of the peak learning rate (:func:`trainers.schedule.route_lr`) in
    one line, and one warning per route below :data:`trainers.schedule.LOW_LR_SHARE`; said once
    the run is accepted, so a refused run stays one line."""
    placement = run.split.plan.get("placement")
    has_sft = run.route_lr.shares.get("sft") is not None
    where = f"{schedule.kind} schedule" + (
        f", sft pairs {placement}" if placement and has_sft else ""
    )
    run.reporter.message(f"{share_line(run.route_lr)} ({where})")
    for warning in low_lr_warnings(run.route_lr, LOW_LR_FIX):
        run.reporter.message(warning)


def _open_run_dir(run: _Run, optimizer, scheduler) -> tuple[int, int | None]:
    """A fresh run directory, or the newest complete checkpoint resumed (after checking it is
    the same split and model): (first step, resumed from)."""
    config, info, out = run.config, run.info, run.config.out
    start_step, resumed_from = 0, None
    if config.resume:
        checkpoint = newest_intact(out)  # a damaged newer one is named and skipped
        saved = read_state(checkpoint)
        rundir.check_same_run(
            saved.get("identity", {}),
            run.identity,
            checkpoint=checkpoint,
            split_dir=config.split_dir,
            model=str(config.model),
        )
        _check_resume(saved, config.resume_key(info.world_size), checkpoint)
        dist.barrier()
        state = load_checkpoint(
            checkpoint,
            model=run.policy.model,
            root=run.logps,
            optimizer=optimizer,
            scheduler=scheduler,
            sharded=run.sharded,
        )
        start_step = resumed_from = state["step"]
        if info.main:
            remove_partial(out)
            rundir.truncate_metrics(out / METRICS, start_step)
    elif info.main:
        rundir.start_run_dir(out)  # --force (checked above): only the run's own files go
    dist.barrier()
    return start_step, resumed_from


def _run_json(run: _Run, schedule: Schedule, resumed_from: int | None) -> dict[str, Any]:
    """run.json while the run trains (written now; completed or failed at the end)."""
    curriculum = run.curriculum
    run_json = {
        "status": "running",
        "config": run.config.to_json(),
        "world_size": run.info.world_size,
        "device": str(run.device),
        "strategy": run.planned.settings.strategy,
        "precision": run.precision,
        "memory_plan": run.planned.to_dict(),
        "split": run.split.summary(),
        "tokens": run.pairs.counts(),
        "model": describe(run.policy),
        "steps": {
            "total": curriculum.total_steps,
            "warmup": schedule.warmup,
            "per_epoch": curriculum.steps_per_epoch,
        },
        "lr_schedule": schedule.to_json(),
        "lr_share": run.route_lr.shares,
        "shared_prompt": {"on": run.shared_prompt, "why_not": run.unshared},
        "resumed_from": resumed_from,
        "identity": run.identity,
    }
    if run.eval_set is not None:
        run_json["eval"] = {"every": run.config.eval_every, **run.eval_set.describe()}
    if run.info.main:
        _write_json(run.config.out / RUN_JSON, run_json)
    return run_json


def _tracker(run: _Run, start_step: int) -> Tracker:
    """The run's ``--report-to`` tracker on rank 0; a silent one elsewhere."""
    if not run.info.main:
        return Tracker()
    config = run.config
    return open_tracker(
        config.report_to, config.out, config=config.to_json(), first_step=start_step
    )


@dataclass
class _Loop:
    """What the loop has counted so far."""

    metrics: dict[str, Any]
    last_checkpoint: Path | None
    seen_pairs: int = 0
    seen_tokens: int = 0
    seconds: float = 0.0
    last_eval: dict[str, Any] | None = None


def _steps(run: _Run, optimizer, scheduler, start_step: int, tracker: Tracker) -> _Loop:
    """The training loop: per step, forward and backward each micro-batch, check the loss and
    the gradient are finite, clip, step, evaluate when due, log (metrics.jsonl, the progress
    bar, the tracker), and checkpoint every --save-every steps."""
    config, info, out = run.config, run.info, run.config.out
    run.module.train()
    params = [p for p in run.module.parameters() if p.requires_grad]
    total = run.curriculum.total_steps
    metrics_file = (out / METRICS).open("a") if info.main else None
    loop = _Loop(metrics={}, last_checkpoint=latest_checkpoint(out))
    run.reporter.start(total_steps=total, first_step=start_step)
    started = time.perf_counter()
    try:
        for step in range(start_step, total):
            metrics = _step(run, optimizer, scheduler, params, step, loop)
            metrics["elapsed_s"] = round(time.perf_counter() - started, 3)
            if run.eval_set is not None and _eval_due(config, step, total):
                loop.last_eval = _evaluate(run)
                metrics.update(loop.last_eval)
            loop.metrics = metrics
            loop.seen_tokens += metrics["tokens"]
            if metrics_file is not None:
                metrics_file.write(json.dumps(metrics) + "\n")
                metrics_file.flush()
            run.reporter.step(metrics)
            tracker.log(_tracked(run, metrics, loop.seen_tokens), step + 1)
            if config.save_every and (step + 1) % config.save_every == 0:
                loop.last_checkpoint = _checkpoint(run, optimizer, scheduler, step + 1)
    finally:
        if metrics_file is not None:
            metrics_file.close()
    loop.seconds = time.perf_counter() - started
    return loop


def _step(run: _Run, optimizer, scheduler, params, step: int, loop: _Loop) -> dict[str, Any]:
    """One optimizer step: accumulate, check, clip, step; its metrics."""
    config, curriculum = run.config, run.curriculum
    step_started = time.perf_counter()
    in_step = curriculum.step_pairs(step).numel()
    sums, bad_pairs = _accumulate(run, run.module, run.objective, curriculum, step, in_step)
    sums = dist.sum_(sums.to(dist.collective_device())).cpu()
    stats = dict(zip(STAT_KEYS, sums.tolist(), strict=True))
    if stats["nonfinite"]:
        bad = [p for ids in dist.gather_objects(bad_pairs) for p in ids]
        raise _nonfinite("loss", step + 1, bad, loop.last_checkpoint)
    norm = full_value(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
    if not torch.isfinite(norm):
        step_ids = [run.pairs.pair_ids[i] for i in curriculum.step_pairs(step).tolist()]
        raise _nonfinite("gradient", step + 1, step_ids, loop.last_checkpoint)
    lr = float(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=not keeps_gradients(run.module))
    seconds = time.perf_counter() - step_started
    loop.seen_pairs += in_step
    epoch, _ = curriculum.position(step)
    metrics = {"step": step + 1, "epoch": epoch, **step_metrics(sums, pairs_in_step=in_step)}
    metrics.update(
        grad_norm=float(norm),
        lr=lr,
        tokens_per_s=stats["tokens"] / seconds,
        pairs_per_s=in_step / seconds,
    )
    metrics.update(_lr_share_metrics(run, step))
    return metrics


def _lr_share_metrics(run: _Run, step: int) -> dict[str, float | None]:
    """``lr_share/dpo`` and ``lr_share/sft``: each route's mean share of the peak rate over the
    pair visits so far (at the last step, run.json's ``lr_share``)."""
    shares = run.route_lr.running[step] if run.route_lr else {}
    return {f"lr_share/{route}": share for route, share in shares.items()}


def _eval_due(config: TrainConfig, step: int, total: int) -> bool:
    """Every --eval-every steps, and after the last step."""
    done = step + 1
    return done == total or bool(config.eval_every and done % config.eval_every == 0)


def _evaluate(run: _Run) -> dict[str, Any]:
    """The held-out figures at the current weights (every rank takes part)."""
    eval_set = run.eval_set
    with run.reporter.phase("evaluating held-out pairs", unit="pairs") as advance:
        figures = evaluate(
            run.logps,  # unwrapped under ddp: the pass has no backward to synchronise
            eval_set,
            run.objective,
            batch_size=2 * run.config.batch_size,
            device=run.device,
            autocast=run.autocast(),
            pad_id=run.policy.tokenizer.pad_token_id,
            lockstep=run.sharded,
            progress=advance,
        )
    run.module.train()
    return figures


def _tracked(run: _Run, metrics: dict[str, Any], tokens_seen: int) -> dict[str, float]:
    per_epoch = run.curriculum.steps_per_epoch
    return tracker_names(metrics, steps_per_epoch=per_epoch, tokens_seen=tokens_seen)


def _checkpoint(run: _Run, optimizer, scheduler, step: int) -> Path:
    """``checkpoints/step-N`` with everything a resume needs (every rank takes part)."""
    config, curriculum = run.config, run.curriculum
    next_epoch, position = curriculum.position(step)
    with run.reporter.phase(f"checkpoint step-{step}"):
        return save_checkpoint(
            config.out,
            step,
            model=run.policy.model,
            root=run.logps,
            sharded=run.sharded,
            keep=config.save_total_limit,
            optimizer=optimizer,
            scheduler=scheduler,
            state={
                "epoch": next_epoch,
                "position": position,
                "world_size": run.info.world_size,
                "config": config.resume_key(run.info.world_size),
                "identity": run.identity,
            },
        )


def _accumulate(
    run: _Run, module, objective: Objective, curriculum: Curriculum, step: int, in_step: int
) -> tuple[torch.Tensor, list[str]]:
    """Forward and backward this rank's micro-batches of ``step``; return the summed pair
    statistics and the pairs whose loss was not finite."""
    config, info, pairs = run.config, run.info, run.pairs
    micro_batches = curriculum.micro_batches(
        step,
        rank=info.rank,
        world_size=info.world_size,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
    )
    sums = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
    bad_pairs: list[str] = []
    for m, index in enumerate(micro_batches):
        last = m == len(micro_batches) - 1
        # under fsdp every forward is a collective, under ddp the last backward
        if index.numel() == 0 and not (info.world_size > 1 and (last or run.sharded)):
            continue
        # a rank with no pair left still joins the collectives, with weight 0
        weight = info.world_size / in_step if index.numel() else 0.0
        batch = collate(
            pairs,
            index if index.numel() else torch.tensor([0]),
            pad_id=run.policy.tokenizer.pad_token_id,
            ref_chosen=run.ref_chosen,
            ref_rejected=run.ref_rejected,
            shared_prompt=run.shared_prompt,
        ).to(run.device)
        with gradient_sync(module, enabled=last):
            with run.autocast():
                terms = objective(module, batch)
            # mean over the step's pairs on all ranks: DDP averages, so scale by world
            (terms.loss.sum() * weight).backward()
        if index.numel():
            sums += terms.sums()
            finite = torch.isfinite(terms.loss.detach()).cpu()
            bad_pairs += [pairs.pair_ids[i] for i in index[~finite].tolist()]
    return sums, bad_pairs


def _save_model(run: _Run) -> Path:
    """The final model (gathered from the shards under fsdp), loadable with
    AutoModelForCausalLM.from_pretrained; with LoRA the adapter, and the merged model if asked."""
    config = run.config
    if config.gradient_checkpointing:
        _activation_checkpointing(run.policy.model, enable=False)
    with run.reporter.phase("saving the final model"):
        state_dict = full_state_dict(run.logps, run.policy.model, sharded=run.sharded)
        adapter = config.lora
        model_dir = config.out / (
            MODEL_DIR if adapter is None or config.merge_lora else ADAPTER_DIR
        )
        if run.info.main:
            save_final(
                run.policy,
                config.out,
                state_dict,
                peft_model=run.peft_model,
                adapter=adapter,
                merge=config.merge_lora,
                max_shard_size=config.max_shard_bytes,
            )
        dist.barrier()
    return model_dir


# --------------------------------------------------------------------------- helpers


#: Metrics that are means over one route's pairs, and that route.
_ROUTE_OF = {
    "loss/dpo": "dpo",
    "rewards/accuracies": "dpo",
    "rewards/margins": "dpo",
    "logps/chosen": "dpo",
    "loss/sft": "sft",
}


def summarize(metrics_path: Path, window: float = 0.1) -> dict[str, Any]:
    """What a run trained and where its curves ended, from ``metrics.jsonl``.

    ``pairs/dpo`` and ``pairs/sft`` count the pairs actually trained (a pair seen in two epochs
    counts twice). ``KEY:first`` and ``KEY:last`` are the means of KEY over the first and the last
    ``window`` share of the steps that trained pairs of KEY's route, weighted by those pairs
    (``window/dpo``, ``window/sft``: how many steps). A curriculum trains its dpo pairs first and
    its sft pairs last, so ``loss/dpo:last`` is the end of the dpo phase, and the two losses are
    never mixed: ``loss`` (the objective, over all pairs) is kept for completeness only.
    """
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    if not rows:
        return {}

    def pairs_of(route: str | None, row: dict[str, Any]) -> int:
        if route is None:
            return (row.get("pairs/dpo") or 0) + (row.get("pairs/sft") or 0)
        return row.get(f"pairs/{route}") or 0

    out: dict[str, Any] = {
        "steps": len(rows),
        "window": max(1, int(len(rows) * window)),
        "pairs/dpo": sum(pairs_of("dpo", r) for r in rows),
        "pairs/sft": sum(pairs_of("sft", r) for r in rows),
    }
    for route in ("dpo", "sft"):
        with_route = sum(1 for r in rows if pairs_of(route, r))
        out[f"window/{route}"] = max(1, int(with_route * window)) if with_route else 0
    for key in ("loss", *_ROUTE_OF):
        route = _ROUTE_OF.get(key)
        kept = [r for r in rows if r.get(key) is not None and pairs_of(route, r)]
        n = out[f"window/{route}"] if route else out["window"]
        for part, chunk in (("first", kept[:n]), ("last", kept[-n:] if n else [])):
            weight = sum(pairs_of(route, r) for r in chunk)
            mean = sum(r[key] * pairs_of(route, r) for r in chunk) / weight if weight else None
            out[f"{key}:{part}"] = mean
    return out


def _nonfinite(what: str, step: int, pair_ids: list[str], checkpoint: Path | None) -> Exception:
    shown = ", ".join(pair_ids[:8]) + (
        f" and {len(pair_ids) - 8} more" if len(pair_ids) > 8 else ""
    )
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
    return NonFiniteLossError(
        f"non-finite {what} at step {step} (pairs: {shown}); training stopped and {kept} "
        "(lower --lr or --beta, or remove those pairs, then --resume)"
    )


def _check_resume(state: dict[str, Any], key: dict[str, Any], checkpoint: Path) -> None:
    saved = state.get("config", {})
    changed = [k for k in key if saved.get(k) != key[k]]
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} → {key[k]!r}" for k in changed)
        raise InputError(
            f"--resume with different settings ({shown})",
            where=checkpoint,
            fix="resume with the flags the run was started with",
        )


def _activation_checkpointing(model: torch.nn.Module, *, enable: bool) -> None:
    """transformers ≥ 5 names it activation checkpointing; older versions gradient checkpointing."""
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
