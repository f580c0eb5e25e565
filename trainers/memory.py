"""A memory plan before anything loads: what one training process will hold at its peak.

:func:`model_shape` reads a model's ``config.json`` only and builds the architecture on the meta
device (no weights, no memory) to count its parameters exactly; :func:`plan` then adds up, per
device, the bytes of:

* **parameters**: ``P · w`` (``w`` = 4 for fp32 and bf16-mixed masters, 2 for bf16; a LoRA base
  is frozen in its load dtype (bf16 unless fp32), a QLoRA base's decoder layers in 4-bit NF4 ≈
  0.52 bytes, its embeddings and head in bf16); under fsdp the sharded
  ``P · w / W`` plus what FSDP2 gathers at once: the root (embeddings, head) and two decoder
  layers (the one running and the one prefetched) in the compute dtype, and in the backward
  pass about three layers' worth of fp32 gradient buffers (the layer being reduced, its
  reduce-scatter output, the next layer's gradient);
* **gradients**: ``T · w`` for the ``T`` trainable parameters (sharded ``/ W`` under fsdp);
* **optimizer**: AdamW's two moments, ``2 · T · w`` (sharded ``/ W``);
* **reference**: a separate ``--ref-model`` during the one-off reference pass (0 when the
  reference is the initial policy, LoRA's disabled adapter, or already cached);
* **activations**: what autograd keeps for the backward pass of one micro-batch of ``2·B`` rows
  of ``L`` tokens (every pair dpo, every row full: the worst case). A Llama-style decoder layer
  keeps about ``9·h + 2·kv + 4·i`` values per token (two RMSNorms' inputs and outputs, the
  rotated queries and keys, the values, the attention output before and after its reshape, the
  SwiGLU's four ``i``-wide tensors); with
  activation checkpointing only each layer's input ``h`` is kept and one layer is recomputed at
  a time. The output head adds the response tokens' logits (``min(tokens, chunk) · vocab``
  floats, twice: forward and gradient).

The peak is not the plain sum: gradients are set to None after every step, so during the forward
pass only the parameters, the moments and the growing activations are alive; the backward pass
frees activations as it creates gradients; and the optimizer step holds the gradients and, on
CUDA (multi-tensor AdamW), one ``T · w`` temporary. So::

    total = parameters + optimizer + max(activations (+ gradients when accumulating),
                                         gradients (+ T · w / shards on CUDA))

or the reference pass's peak if that is larger. The rule it follows is the usual one (16 bytes
per parameter for full AdamW training in mixed precision, divided by the world size under full
sharding); docs/training.md checks it by hand for Llama-3-8B.
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

    @property
    def label(self) -> str:
        kind = "qlora" if self.load_in_4bit else "lora" if self.lora else "full"
        return f"{self.strategy} × {self.world_size}, {kind}, {self.precision}"


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

    def to_dict(self) -> dict[str, Any]:
        parts = ("parameters", "gradients", "optimizer", "reference", "activations", "total")
        return {
            "settings": asdict(self.settings),
            "label": self.settings.label,
            "gib": {k: round(getattr(self, k) / GiB, 3) for k in parts},
            "bytes": {k: int(getattr(self, k)) for k in parts},
        }


def model_shape(spec: str, *, lora: Any = None, trust_remote_code: bool = False) -> ModelShape:
    """Count ``spec``'s parameters from its config.json alone (meta device: no weights read).

    ``lora`` (a :class:`trainers.lora.LoraSettings`) also counts the adapter's parameters.
    """
    from transformers import AutoModelForCausalLM

    from trainers.model import MODEL_FIX, TINY, read_config, tiny_config

    if spec == TINY:
        config = tiny_config()
    else:
        path = Path(spec)
        config = read_config(path, trust_remote_code=trust_remote_code, fix=MODEL_FIX)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise InputError(
            f"{getattr(config, 'model_type', 'this model')} is not a causal language model",
            where=spec,
            fix=MODEL_FIX,
        ) from exc
    layers = decoder_layers(model)
    parameters = sum(p.numel() for p in model.parameters())
    in_layers = sum(p.numel() for layer in layers for p in layer.parameters())
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
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
    )


def plan(shape: ModelShape, settings: PlanSettings) -> MemoryPlan:
    """Per-device bytes of a run of ``shape`` with ``settings`` (see the module docstring)."""
    s = settings
    shards = s.world_size if s.strategy == "fsdp" else 1
    master = 2 if s.precision == "bf16" else 4  # bytes of a trained (master) parameter
    compute = 4 if s.precision == "fp32" else 2  # bytes of a value in the forward pass
    lora = s.lora or s.load_in_4bit
    trainable = shape.lora_trainable if lora else shape.parameters
    if lora and s.precision != "fp32":
        frozen_bytes = 2.0  # the frozen base is loaded in bf16
    else:
        frozen_bytes = float(master)
    # parameters: the (sharded) store, plus FSDP2's gathered root and two layers at a time
    if s.load_in_4bit:  # bitsandbytes quantises the decoder's linear layers, not embeddings/head
        stored = (shape.parameters - shape.root) * NF4_BYTES + shape.root * 2.0
        stored += trainable * master
    elif lora:
        stored = shape.parameters * frozen_bytes + trainable * master
    else:
        stored = shape.parameters * master
    parameters = stored / shards
    if s.strategy == "fsdp" and shards > 1:
        gathered_bytes = compute if not lora else max(compute, frozen_bytes)
        parameters += (shape.root + 2 * shape.layer) * gathered_bytes
        # backward: a layer's unsharded fp32 gradient, its reduce-scatter output, and the next
        # layer's gradient already in flight
        parameters += 3 * shape.layer * 4
    if s.offload:
        parameters -= stored / shards  # the shards live in CPU memory
    gradients = trainable * master / shards
    optimizer = 2 * trainable * master / shards  # AdamW's two moments
    # AdamW's multi-tensor (foreach) step, torch's default on CUDA, makes one temporary copy;
    # on the CPU it steps one tensor at a time
    step_temporary = trainable * master / shards if s.device == "cuda" else 0.0
    if s.offload:
        gradients = optimizer = step_temporary = 0.0
    activations = activation_bytes(shape, s, compute)
    reference = 0.0
    if s.separate_reference:
        reference = shape.parameters * (2 if s.precision != "fp32" else 4) / shards
    accumulating = gradients if s.grad_accum > 1 else 0.0
    training = parameters + optimizer + max(activations + accumulating, gradients + step_temporary)
    reference_pass = parameters + reference + activations / (2 * shape.layers or 1)
    return MemoryPlan(
        settings=settings,
        parameters=parameters,
        gradients=gradients,
        optimizer=optimizer,
        reference=reference,
        activations=activations,
        total=max(training, reference_pass),
    )


def activation_bytes(shape: ModelShape, settings: PlanSettings, compute: int) -> float:
    """Autograd's saved tensors for one micro-batch at full length (see the module docstring)."""
    from trainers.logps import CHUNK_ELEMENTS  # the logits the output head holds at once

    tokens = 2 * settings.batch_size * settings.max_length
    per_layer = (9 * shape.hidden + 2 * shape.kv + 4 * shape.intermediate) * compute
    if settings.checkpointing:
        layers = shape.layers * shape.hidden * compute + per_layer
    else:
        layers = shape.layers * per_layer
    head_tokens = min(tokens, max(1, CHUNK_ELEMENTS // shape.vocab))
    head = 2 * head_tokens * shape.vocab * 4 + 2 * shape.hidden * compute
    return tokens * (layers + 2 * shape.hidden * compute) + head


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


def device_memory(device: torch.device, override_gib: float | None = None) -> float:
    """Bytes one process may use: ``--device-memory``, the GPU's total, or RAM per local rank."""
    if override_gib is not None:
        return override_gib * GiB
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(1, local)


def settings_for(
    config: Any, device: torch.device, *, world_size: int, strategy: str
) -> PlanSettings:
    """The plan's settings for a :class:`trainers.config.TrainConfig` run."""
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
    )


def for_config(
    config: Any, device: torch.device, *, world_size: int, alternatives_too: bool = True
) -> tuple[ModelShape, MemoryPlan, list[MemoryPlan], float]:
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
    budget = device_memory(device, config.device_memory)
    strategy = config.strategy
    if strategy == "auto":
        replicated = plan(shape, settings_for(config, device, world_size=world_size,
                                              strategy="ddp"))  # fmt: skip
        strategy = "fsdp" if world_size > 1 and replicated.total > budget else "ddp"
    chosen = plan(shape, settings_for(config, device, world_size=world_size, strategy=strategy))
    if not alternatives_too:
        return shape, chosen, [], budget
    return shape, chosen, alternatives(shape, chosen.settings, cuda=device.type == "cuda"), budget


def check(config: Any, device: torch.device, *, world_size: int) -> MemoryPlan:
    """The run's plan; an :class:`InputError` naming what would fit when the run would not."""
    shape, chosen, _, budget = for_config(
        config, device, world_size=world_size, alternatives_too=False
    )
    if chosen.total > budget:
        _, _, others, _ = for_config(config, device, world_size=world_size)
        fitting = [o.settings.label for o in others if o.total <= budget]
        raise InputError(
            f"the memory plan needs {chosen.total / GiB:.2f} GiB per device "
            f"({chosen.settings.label}) but a device has {budget / GiB:.2f} GiB",
            where=shape.name,
            fix=(f"{'; '.join(fitting)} would fit" if fitting else "none of ddp/fsdp/LoRA fits")
            + "; see prefcurate train --dry-run (or lower --batch-size / --max-length, add "
            "--gradient-checkpointing)",
        )
    return chosen


def render(shape: ModelShape, chosen: MemoryPlan, others: list[MemoryPlan], budget: float) -> str:
    """The plan as a few plain lines: the chosen run in detail, the alternatives as totals."""
    gib = chosen.to_dict()["gib"]
    lines = [
        f"memory plan for {shape.name}: {shape.parameters / 1e6:,.1f}M parameters "
        f"({shape.layers} layers), per device",
        f"  {chosen.settings.label}, batch {chosen.settings.batch_size}, "
        f"max length {chosen.settings.max_length}"
        + (", activation checkpointing" if chosen.settings.checkpointing else ""),
    ]
    for key in ("parameters", "gradients", "optimizer", "reference", "activations", "total"):
        lines.append(f"    {key:<12} {gib[key]:>10.2f} GiB")
    lines.append(f"  device memory {budget / GiB:.2f} GiB: " + fits_word(chosen, budget))
    lines.append("  alternatives (total per device):")
    for other in others:
        lines.append(
            f"    {other.settings.label:<36} {other.total / GiB:>10.2f} GiB  "
            + fits_word(other, budget)
        )
    return "\n".join(lines)


def fits_word(memory: MemoryPlan, budget: float) -> str:
    return "fits" if memory.total <= budget else "does not fit"


def to_json(shape: ModelShape, chosen: MemoryPlan, others: list[MemoryPlan], budget: float) -> str:
    payload = {
        "model": asdict(shape),
        "device_memory_gib": round(budget / GiB, 3),
        "plan": chosen.to_dict() | {"fits": chosen.total <= budget},
        "alternatives": [o.to_dict() | {"fits": o.total <= budget} for o in others],
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
