"""A memory plan before anything loads: what one training process will hold at its peak.

:func:`model_shape` reads a model's ``config.json`` only and builds the architecture on the meta
device (no weights, no memory) to count its parameters exactly; :func:`plan` then adds up, per
device, the bytes of (``P`` parameters, ``T`` trained, ``W`` processes):

* **parameters**: ``P · w`` with ``w`` = 4 for fp32 and bf16-mixed masters, 2 for bf16. A LoRA
  base is frozen in its load dtype (bf16 unless fp32) and its adapter kept in fp32 (PEFT's
  default); a QLoRA base stores its decoder's linear weights in 4-bit NF4 (≈ 0.52 bytes) and,
  after PEFT's ``prepare_model_for_kbit_training``, everything else (embeddings, head, norms) in
  fp32. Under ddp with bf16-mixed, autocast keeps a bf16 copy of every weight it casts until the
  backward pass is done (``2 · P`` while activations live). Under fsdp the sharded ``P · w / W``
  plus what FSDP2 gathers at once: the root (embeddings, head) and two decoder layers (the one
  running and the one prefetched) in the compute dtype, and in the backward pass about three
  layers' worth of gradient buffers (the layer being reduced, its reduce-scatter input, the next
  layer's gradient);
* **gradients**: ``T · w`` (sharded ``/ W`` under fsdp, which reduce-scatters every micro-batch
  so accumulated gradients stay sharded). Under ddp on several processes the gradients are views
  into DDP's bucket buffers (``gradient_as_bucket_view``), allocated for the whole run;
* **optimizer**: AdamW's two moments, ``2 · T · w`` (sharded ``/ W``); with bf16, torchao's
  stochastic-rounding AdamW keeps them in bf16. The step itself holds temporaries: on CUDA the
  multi-tensor AdamW one ``T · w`` copy (torchao's compiled step: none); on a CPU one tensor at a
  time, the largest tensor's fp32 temporaries;
* **reference**: a separate ``--ref-model`` during the one-off reference pass (0 when the
  reference is the initial policy, LoRA's disabled adapter, or already cached);
* **activations**: what autograd keeps for the backward pass of one micro-batch of ``2·B`` rows
  of ``L`` tokens (every pair dpo, every row full: the worst case). A Llama-style decoder layer
  keeps about ``9·h + 2·kv + 4·i`` values per token (two RMSNorms' inputs and outputs, the
  rotated queries and keys, the values, the attention output before and after its reshape, the
  SwiGLU's four ``i``-wide tensors); eager attention also keeps each head's ``L × L``
  probabilities (fp32 softmax output and its cast: ``4 + c`` bytes each), which sdpa and
  flash-attention recompute instead. With activation checkpointing only each layer's input ``h``
  is kept and one layer is recomputed at a time. The output head adds the response tokens'
  logits (``min(tokens, chunk) · vocab`` floats, twice: forward and gradient).

The peak is not the plain sum: gradients are set to None after every step (except ddp's
buckets), so during the forward pass only the parameters, the moments and the growing
activations are alive; the backward pass frees activations as it creates gradients; and the
optimizer step holds the gradients and its temporaries. So::

    total = parameters + optimizer + max(activations (+ gradients when accumulating),
                                         gradients + step temporaries)

(with ddp's buckets, ``gradients`` leave the ``max``), or the reference pass's peak if that is
larger. What the plan does not count (the CUDA context, NCCL's buffers, the allocator's
fragmentation) is held back from the device's memory by ``--memory-headroom`` (a share of it,
10% by default) before the plan is compared with it. The rule it follows is the usual one (16
bytes per parameter for full AdamW training in mixed precision, 8 in bf16, divided by the world
size under full sharding); docs/training.md checks it by hand for Llama-3-8B and against peaks
measured on a CPU. :attr:`MemoryPlan.assumptions` says, in words, what a plan assumed.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from prefcurate.base.errors import InputError
from trainers import dist
from trainers.strategy import decoder_layers

GiB = 1024**3
#: bytes per frozen parameter of a QLoRA base: 4-bit NF4 plus double-quantised block scales
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
#: fp32 temporaries per element of the tensor torchao's AdamW steps eagerly (on a CPU): the
#: weight, gradient and both moments upcast, the squared gradient and the denominator.
BF16_STEP_TEMPORARIES = 6


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a config: parameter counts and the decoder's widths."""

    name: str
    parameters: int
    lora_trainable: int  # adapter parameters when LoRA is planned (0 otherwise)
    root: int  # parameters outside the decoder layers: embeddings, final norm, head
    layer: int  # parameters of the largest decoder layer
    layers: int
    hidden: int
    intermediate: int
    kv: int  # key/value width: num_key_value_heads · head_dim
    vocab: int
    heads: int = 1
    largest: int = 0  # elements of the largest single parameter tensor
    quantizable: int = 0  # weights of the decoder layers' linear layers (4-bit under QLoRA)
    attention: str = "sdpa"  # transformers' default attention for this architecture


@dataclass(frozen=True)
class PlanSettings:
    """The run's choices that decide its memory (one field per ``prefcurate train`` flag)."""

    strategy: str = "ddp"  # ddp | fsdp
    world_size: int = 1
    precision: str = "fp32"  # fp32 | bf16-mixed | bf16
    lora: bool = False
    load_in_4bit: bool = False
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    checkpointing: bool = False
    offload: bool = False
    separate_reference: bool = False  # a --ref-model still to be scored (not cached)
    device: str = "cuda"  # cuda | cpu
    attention: str = "sdpa"  # sdpa | flash_attention_2 | eager

    @property
    def label(self) -> str:
        kind = "qlora" if self.load_in_4bit else "lora" if self.lora else "full"
        return f"{self.strategy} × {self.world_size}, {kind}, {self.precision}"

    @property
    def adapter(self) -> bool:
        return self.lora or self.load_in_4bit

    @property
    def bucketed(self) -> bool:
        """ddp on several processes: gradients live in DDP's buckets for the whole run."""
        return self.strategy == "ddp" and self.world_size > 1


#: The parts of a plan, in the order they are printed.
PARTS = ("parameters", "gradients", "optimizer", "reference", "activations", "total")


@dataclass
class MemoryPlan:
    """Bytes per device, by what holds them; :meth:`to_dict` in GiB for ``--dry-run --json``."""

    settings: PlanSettings
    parameters: float
    gradients: float
    optimizer: float
    reference: float
    activations: float
    total: float
    assumptions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "label": self.settings.label,
            "gib": {k: round(getattr(self, k) / GiB, 3) for k in PARTS},
            "bytes": {k: int(getattr(self, k)) for k in PARTS},
            "assumptions": list(self.assumptions),
        }


def model_shape(spec: str, *, lora: Any = None, trust_remote_code: bool = False) -> ModelShape:
    """Count ``spec``'s parameters from its config.json alone (meta device: no weights read).

    ``lora`` (a :class:`trainers.lora.LoraSettings`) also counts the adapter's parameters.
    """
    model = _meta_model(spec, trust_remote_code=trust_remote_code)
    config = model.config
    layers = decoder_layers(model)
    parameters = sum(p.numel() for p in model.parameters())
    in_layers = sum(p.numel() for layer in layers for p in layer.parameters())
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    linear = sum(m.weight.numel() for layer in layers for m in layer.modules()
                 if isinstance(m, torch.nn.Linear))  # fmt: skip
    trainable = 0
    if lora is not None:
        from trainers.lora import apply_lora

        adapted = apply_lora(model, replace(lora, load_in_4bit=False))
        trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelShape(
        name=spec,
        parameters=parameters,
        lora_trainable=trainable,
        root=parameters - in_layers,
        layer=largest,
        layers=len(layers),
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        kv=kv_heads * head_dim,
        vocab=text.vocab_size,
        heads=heads,
        largest=max(p.numel() for p in model.parameters()),
        quantizable=linear,
        attention=getattr(config, "_attn_implementation", None) or "eager",
    )


def _meta_model(spec: str, *, trust_remote_code: bool) -> torch.nn.Module:
    """``spec``'s architecture on the meta device, from its config.json (or ``tiny``)."""
    from transformers import AutoModelForCausalLM

    from trainers.model import MODEL_FIX, TINY, read_config, tiny_config

    if spec == TINY:
        config = tiny_config()
    else:
        config = read_config(Path(spec), trust_remote_code=trust_remote_code, fix=MODEL_FIX)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise InputError(
            f"{getattr(config, 'model_type', 'this model')} is not a causal language model",
            where=spec,
            fix=MODEL_FIX,
        ) from exc


@dataclass(frozen=True)
class _Bytes:
    """Bytes per value of a run: a trained weight (and its gradient and moments), a frozen
    weight, a value computed in the forward pass."""

    trained: int
    frozen: float
    compute: int
    trainable: int  # how many parameters train


def _bytes(shape: ModelShape, s: PlanSettings) -> _Bytes:
    compute = 4 if s.precision == "fp32" else 2
    if s.adapter:  # PEFT keeps the adapter in fp32; the base is frozen in its load dtype
        frozen = 4.0 if s.precision == "fp32" else 2.0
        return _Bytes(4, frozen, compute, shape.lora_trainable)
    trained = 2 if s.precision == "bf16" else 4
    return _Bytes(trained, float(trained), compute, shape.parameters)


def _stored(shape: ModelShape, s: PlanSettings, b: _Bytes) -> float:
    """Every parameter as stored (before sharding): the trained ones and a frozen base."""
    adapter = b.trainable * b.trained
    if s.load_in_4bit:  # NF4 decoder weights; prepare_model_for_kbit_training upcasts the rest
        upcast = shape.parameters - shape.quantizable
        return shape.quantizable * NF4_BYTES + upcast * 4.0 + adapter
    if s.adapter:
        return shape.parameters * b.frozen + adapter
    return shape.parameters * b.trained


def _gathered(shape: ModelShape, s: PlanSettings, b: _Bytes) -> tuple[float, float]:
    """What FSDP2 holds unsharded at once, (in the forward pass, in the backward pass): the root
    throughout; forward, one layer at a time; backward, two layers (the one running and the one
    prefetched) and three layers' gradient buffers."""
    weight_bytes = max(b.compute, b.frozen if s.adapter else 0)
    trained_per_layer = shape.layer if not s.adapter else shape.lora_trainable / shape.layers
    root = shape.root * weight_bytes
    forward = root + shape.layer * weight_bytes
    backward = root + 2 * shape.layer * weight_bytes + 3 * trained_per_layer * b.trained
    return forward, backward


def _step_temporaries(shape: ModelShape, s: PlanSettings, b: _Bytes, shards: int) -> float:
    """What AdamW's step allocates beside the weights, gradients and moments."""
    if s.device == "cuda":  # torchao's step is compiled into one kernel per tensor
        return 0.0 if s.precision == "bf16" and not s.adapter else b.trainable * b.trained / shards
    largest = min(shape.largest, b.trainable) / shards  # one tensor at a time
    if s.precision == "bf16" and not s.adapter:
        return largest * 4 * BF16_STEP_TEMPORARIES
    return largest * 4


def plan(shape: ModelShape, settings: PlanSettings) -> MemoryPlan:
    """Per-device bytes of a run of ``shape`` with ``settings`` (see the module docstring)."""
    s = settings
    shards = s.world_size if s.strategy == "fsdp" else 1
    b = _bytes(shape, s)
    stored = _stored(shape, s, b)
    sharded = 0.0 if s.offload else stored / shards  # offload: the shards live in CPU memory
    gathered = extra = 0.0
    activations, released = activation_bytes(shape, s, b.compute)
    if s.strategy == "fsdp" and shards > 1:
        forward, gathered = _gathered(shape, s, b)
        # the top layer's backward frees its activations as its gradients are made
        extra = max(forward, gathered - released)
    gradients = b.trainable * b.trained / shards
    optimizer = 2 * b.trainable * b.trained / shards  # AdamW's two moments
    step = _step_temporaries(shape, s, b, shards)
    if s.offload:
        gradients = optimizer = step = 0.0
    if s.strategy == "ddp" and s.precision == "bf16-mixed" and not s.adapter:
        activations += shape.parameters * 2  # autocast's bf16 copies of the weights
    reference = 0.0
    if s.separate_reference:
        reference = shape.parameters * (2 if s.precision != "fp32" else 4) / shards
    if s.bucketed:
        training = sharded + optimizer + gradients + max(activations + extra, step)
    else:
        accumulating = gradients if s.grad_accum > 1 else 0.0
        training = sharded + optimizer + max(activations + accumulating + extra, gradients + step)
    reference_pass = sharded + gathered + reference + activations / (2 * shape.layers or 1)
    return MemoryPlan(
        settings=settings,
        parameters=sharded + gathered,
        gradients=gradients,
        optimizer=optimizer,
        reference=reference,
        activations=activations,
        total=max(training, reference_pass),
        assumptions=assumptions(shape, s),
    )


def activation_bytes(
    shape: ModelShape, settings: PlanSettings, compute: int
) -> tuple[float, float]:
    """Autograd's saved tensors for one micro-batch at full length (see the module docstring),
    and how much of it the first layer of the backward pass frees (0 with checkpointing: its
    recomputation is what is counted)."""
    from trainers.logps import CHUNK_ELEMENTS  # the logits the output head holds at once

    rows, length = 2 * settings.batch_size, settings.max_length
    tokens = rows * length
    per_layer = tokens * (9 * shape.hidden + 2 * shape.kv + 4 * shape.intermediate) * compute
    if settings.attention == "eager":  # the softmax's fp32 output and its cast are kept
        per_layer += rows * shape.heads * length * length * (4 + compute)
    if settings.checkpointing:
        layers, released = tokens * shape.layers * shape.hidden * compute + per_layer, 0.0
    else:
        layers, released = shape.layers * per_layer, per_layer
    head_tokens = min(tokens, max(1, CHUNK_ELEMENTS // shape.vocab))
    head = 2 * head_tokens * shape.vocab * 4 + 2 * shape.hidden * compute
    return layers + tokens * 2 * shape.hidden * compute + head, released


def assumptions(shape: ModelShape, s: PlanSettings) -> tuple[str, ...]:
    """What a plan assumed, in words (``--dry-run`` prints them under the figures)."""
    out = [
        f"every pair dpo and every row at --max-length {s.max_length}: {2 * s.batch_size} rows "
        "per micro-batch (the worst case)",
        {
            "eager": "eager attention: each layer keeps its heads' L×L probabilities",
            "sdpa": "sdpa attention: no L×L scores kept",
            "flash_attention_2": "flash-attention: no L×L scores kept",
        }.get(s.attention, f"{s.attention} attention counted as sdpa"),
    ]
    if s.precision == "bf16" and not s.adapter:
        out.append("AdamW with stochastic rounding (torchao): bf16 weights, gradients and moments")
    elif s.device == "cuda":
        out.append("AdamW's multi-tensor step on CUDA: one temporary copy of the trained weights")
    if s.bucketed:
        out.append("ddp: gradients are views into DDP's buckets, allocated for the whole run")
    if s.strategy == "fsdp" and s.world_size > 1:
        out.append(
            "fsdp: reduce-scatter every micro-batch (accumulated gradients stay sharded); "
            "the root and 2 layers gathered at once, 3 layers of gradient buffers"
        )
    if s.strategy == "ddp" and s.precision == "bf16-mixed" and not s.adapter:
        out.append("bf16 autocast keeps a bf16 copy of the weights until the backward pass")
    if s.load_in_4bit:
        out.append("QLoRA: NF4 decoder weights; embeddings, head and norms in fp32 (PEFT)")
    out.append("not counted: CUDA context, NCCL buffers, fragmentation (see --memory-headroom)")
    return tuple(out)


def alternatives(shape: ModelShape, settings: PlanSettings, *, cuda: bool) -> list[MemoryPlan]:
    """The plan for each strategy × (full, LoRA, QLoRA on CUDA), at the same batch and length."""
    kinds = [(False, False)]
    if shape.lora_trainable:
        kinds += [(True, False)] + ([(True, True)] if cuda else [])
    out = []
    for strategy in ("ddp", "fsdp"):
        for lora, four_bit in kinds:
            if four_bit and strategy == "fsdp":
                continue  # QLoRA runs under ddp (see trainers.lora)
            out.append(
                plan(shape, replace(settings, strategy=strategy, lora=lora, load_in_4bit=four_bit))
            )
    return out


@dataclass(frozen=True)
class Budget:
    """A device's memory and the share of it held back for what the plan does not count."""

    device: float  # bytes
    headroom: float  # share of ``device``, --memory-headroom

    @property
    def usable(self) -> float:
        """What the plan's total must fit in."""
        return self.device * (1.0 - self.headroom)

    def describe(self) -> str:
        return (
            f"device memory {self.device / GiB:.2f} GiB, {self.headroom:.0%} held back "
            f"(--memory-headroom): {self.usable / GiB:.2f} GiB for the plan"
        )


def device_memory(device: torch.device, override_gib: float | None = None) -> float:
    """Bytes one process may use: ``--device-memory``, the GPU's total, or RAM per local rank."""
    if override_gib is not None:
        return override_gib * GiB
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(1, local)


def settings_for(
    config: Any,
    device: torch.device,
    *,
    world_size: int,
    strategy: str,
    default_attention: str = "sdpa",
) -> PlanSettings:
    """The plan's settings for a :class:`trainers.config.TrainConfig` run.

    ``default_attention`` is the attention transformers picks for the model when the run names
    none (:attr:`ModelShape.attention`).
    """
    from trainers.strategy import resolve_precision

    return PlanSettings(
        strategy=strategy,
        world_size=world_size,
        precision=resolve_precision(config.precision, device),
        lora=bool(config.lora_r),
        load_in_4bit=config.load_in_4bit,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        max_length=config.max_length,
        checkpointing=config.gradient_checkpointing,
        offload=config.offload,
        separate_reference=config.ref_model is not None,
        device=device.type,
        attention=config.attn_implementation or default_attention,
    )


def for_config(
    config: Any, device: torch.device, *, world_size: int, alternatives_too: bool = True
) -> tuple[ModelShape, MemoryPlan, list[MemoryPlan], Budget]:
    """The run's plan, with ``--strategy auto`` resolved, its alternatives and the budget.

    ``auto`` is ddp unless several processes run and a replica does not fit, then fsdp. The
    alternatives include a LoRA adapter (r = 16 unless the run has one), which costs a PEFT
    import; ``alternatives_too=False`` skips them (an empty list).
    """
    from trainers.lora import LoraSettings

    planned_lora = config.lora
    if planned_lora is None and alternatives_too:
        planned_lora = LoraSettings(r=16, target=config.lora_target)
    shape = model_shape(config.model, lora=planned_lora, trust_remote_code=config.trust_remote_code)
    if config.device_memory is None and device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "no CUDA device here to read the memory of",
            fix="pass --device-memory GB to plan for a GPU this machine does not have",
        )
    budget = Budget(device_memory(device, config.device_memory), config.memory_headroom)

    def settings(strategy: str) -> PlanSettings:
        return settings_for(config, device, world_size=world_size, strategy=strategy,
                            default_attention=shape.attention)  # fmt: skip

    strategy = config.strategy
    if strategy == "auto":
        replicated = plan(shape, settings("ddp"))
        strategy = "fsdp" if world_size > 1 and replicated.total > budget.usable else "ddp"
    chosen = plan(shape, settings(strategy))
    if not alternatives_too:
        return shape, chosen, [], budget
    return shape, chosen, alternatives(shape, chosen.settings, cuda=device.type == "cuda"), budget


def check(config: Any, device: torch.device, *, world_size: int) -> MemoryPlan:
    """The run's plan; an :class:`InputError` naming what would fit when the run would not."""
    shape, chosen, _, budget = for_config(
        config, device, world_size=world_size, alternatives_too=False
    )
    if chosen.total > budget.usable:
        _, _, others, _ = for_config(config, device, world_size=world_size)
        fitting = [o.settings.label for o in others if o.total <= budget.usable]
        raise InputError(
            f"the memory plan needs {chosen.total / GiB:.2f} GiB per device "
            f"({chosen.settings.label}) but a device has {budget.usable / GiB:.2f} GiB "
            f"after {budget.headroom:.0%} headroom",
            where=shape.name,
            fix=(f"{'; '.join(fitting)} would fit" if fitting else "none of ddp/fsdp/LoRA fits")
            + "; see prefcurate train --dry-run (or lower --batch-size / --max-length, add "
            "--gradient-checkpointing, or lower --memory-headroom)",
        )
    return chosen


def render(shape: ModelShape, chosen: MemoryPlan, others: list[MemoryPlan], budget: Budget) -> str:
    """The plan as a few plain lines: the chosen run in detail, its assumptions, the
    alternatives as totals."""
    gib = chosen.to_dict()["gib"]
    lines = [
        f"memory plan for {shape.name}: {shape.parameters / 1e6:,.1f}M parameters "
        f"({shape.layers} layers), per device",
        f"  {chosen.settings.label}, batch {chosen.settings.batch_size}, "
        f"max length {chosen.settings.max_length}"
        + (", activation checkpointing" if chosen.settings.checkpointing else ""),
    ]
    for key in PARTS:
        lines.append(f"    {key:<12} {gib[key]:>10.2f} GiB")
    lines.append(f"  {budget.describe()}: " + fits_word(chosen, budget))
    lines.append("  assumes:")
    lines += [f"    - {line}" for line in chosen.assumptions]
    lines.append("  alternatives (total per device):")
    for other in others:
        lines.append(
            f"    {other.settings.label:<36} {other.total / GiB:>10.2f} GiB  "
            + fits_word(other, budget)
        )
    return "\n".join(lines)


def fits_word(memory: MemoryPlan, budget: Budget) -> str:
    return "fits" if memory.total <= budget.usable else "does not fit"


def to_json(shape: ModelShape, chosen: MemoryPlan, others: list[MemoryPlan], budget: Budget) -> str:
    usable = budget.usable
    payload = {
        "model": asdict(shape),
        "device_memory_gib": round(budget.device / GiB, 3),
        "headroom": budget.headroom,
        "usable_gib": round(usable / GiB, 3),
        "plan": chosen.to_dict() | {"fits": chosen.total <= usable},
        "alternatives": [o.to_dict() | {"fits": o.total <= usable} for o in others],
    }
    return json.dumps(payload, indent=2)


def dry_run(config: Any, *, world_size: int | None = None, as_json: bool = False) -> str:
    """``prefcurate train --dry-run``: the plan as text or JSON; nothing is loaded or written.

    ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 without torchrun). ``--device cuda``
    plans for a GPU even on a machine without one (with ``--device-memory``).
    """
    config.validate()
    if world_size is None:  # 0 is a value given, and refused; only no value means torchrun's
        world_size = dist.launched().world_size
    if world_size < 1:
        raise InputError(f"--world-size {world_size} is out of range", fix="use 1 or more")
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    with warnings.catch_warnings():  # transformers' deprecations of its own API, met by PEFT
        warnings.simplefilter("ignore", FutureWarning)
        shape, chosen, others, budget = for_config(config, device, world_size=world_size)
    if as_json:
        return to_json(shape, chosen, others, budget)
    return render(shape, chosen, others, budget)
