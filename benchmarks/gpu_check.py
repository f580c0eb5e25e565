"""The trainer on a GPU, in one command: throughput, MFU, memory against the plan, fsdp = ddp, LoRA,
and TRL's DPOTrainer on the same batches.

    python benchmarks/gpu_check.py --json gpu.json          # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --cpu-smoke              # the same code paths, tiny, on a CPU

Models are random-initialised from configs (nothing is downloaded): a Qwen2.5-0.5B shape and a
Llama-3-8B shape cut to 4 decoder layers (its full-width embeddings, head and layers). Batches
are random token ids (prompt 256 + response 768 tokens, 4 pairs per micro-batch, the two
responses of a pair after one shared prompt), bf16-mixed (fp32 master weights, bf16 compute).
For each shape, one process on one GPU:

* ``ddp`` (one process: the plain module under bf16 autocast) and ``fsdp`` (FSDP2 on a 1-rank
  group, bf16 mixed-precision policy): tokens/s; model-FLOPs utilisation from the FLOPs the
  trainer computes (:func:`flops_per_step`: the decoder's matmuls on every token, causal
  attention, the output head on the response positions only, never the embedding lookup) over
  the device's dense bf16 peak (:data:`PEAK_TFLOPS`, by exact device name; ``--peak-tflops``
  overrides); the peak ``torch.cuda.max_memory_allocated`` against the memory plan
  (``prefcurate train --dry-run``), every earlier model freed and the counter reset first; and
  the largest difference between the two strategies' losses on the same batches;
* LoRA r=16 on all linear layers (Qwen shape) as the trainer runs it: the frozen base in bf16,
  the adapter in fp32 under autocast: tokens/s and peak memory against the plan;
* TRL's ``DPOTrainer`` on the very same token ids, batch size and reference log-probs (Qwen
  shape): both sides take their reference log-probs as given before training (prefcurate's
  split carries them after its one reference pass; TRL's ``precompute_ref_log_probs``), both
  synchronise the GPU around every step and drop the same warm-up steps, so seconds per step
  compare like with like; their first-step losses must agree.

It prints one JSON object. Without CUDA it exits 2 (``--cpu-smoke`` runs tiny shapes in fp32 on
the CPU to check the script itself; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Dense bf16 tensor-core TFLOP/s by the exact name ``torch.cuda.get_device_name`` reports, from
#: NVIDIA's data sheets (which print twice these figures "with sparsity"). A PCIe or NVL part is
#: not its SXM sibling: an unknown name gets no MFU until ``--peak-tflops`` gives its peak.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,  # H200 SXM
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L40S": 362.05,
    "NVIDIA A10": 125.0,
    "NVIDIA L4": 121.0,
}

SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b-shape": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    "llama-3-8b-shape-4-layers": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 4,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
    },
}
SMOKE_SHAPE = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 384,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
}
FULL = {"pairs": 4, "prompt": 256, "response": 768, "steps": 10, "warmup": 2}
SMOKE = {"pairs": 2, "prompt": 8, "response": 24, "steps": 3, "warmup": 1}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------------------------------
# what is measured against: FLOPs, the device's peak, the memory plan


def linear_parameters(shape: dict[str, Any]) -> int:
    """Weights of one decoder layer's matmuls (q, k, v, o and the SwiGLU's three), from the
    config: ``2·h·h_q + 2·h·kv + 3·h·i`` with ``h_q`` = heads × head_dim, ``kv`` its KV width."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    heads = shape["num_attention_heads"]
    head_dim = shape.get("head_dim") or h // heads
    q = heads * head_dim
    kv = shape.get("num_key_value_heads", heads) * head_dim
    return 2 * h * q + 2 * h * kv + 3 * h * i


def flops_per_step(shape: dict[str, Any], sizes: dict[str, int]) -> float:
    """The model FLOPs of one optimizer step as the trainer computes it (forward + backward).

    Per row of ``S`` = prompt + response tokens, ``L`` layers (``N`` = :func:`linear_parameters`):

    * the decoder's matmuls on every token: ``6 · N · L · S`` (2 per weight per token forward,
      4 backward);
    * causal attention (scores and values, half the ``S × S`` square): ``6 · L · h_q · S²``;
    * the output head on the response positions only (:class:`trainers.logps.SequenceLogps`
      gathers them first): ``6 · h · V · R``;

    and none for the embedding, a lookup. Rows: both responses of every pair. Recomputation
    (the head's checkpointed chunks) is not counted: model FLOPs, not hardware FLOPs.
    """
    h, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    heads = shape["num_attention_heads"]
    q = heads * (shape.get("head_dim") or h // heads)
    seq, response = sizes["prompt"] + sizes["response"], sizes["response"]
    per_row = 6 * linear_parameters(shape) * layers * seq
    per_row += 6 * layers * q * seq * seq
    per_row += 6 * h * vocab * response
    return float(2 * sizes["pairs"] * per_row)


def peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak and where it came from."""
    if override is not None:
        return override, "--peak-tflops"
    if name in PEAK_TFLOPS:
        return PEAK_TFLOPS[name], "data sheet"
    return None, f"unknown device {name!r}: pass --peak-tflops for an MFU"


def planned_total(shape: dict[str, Any], strategy: str, sizes, *, lora: bool, device) -> float:
    """The memory plan's total for this run, from the shape's config.json alone."""
    from transformers import AutoConfig

    from trainers import memory
    from trainers.lora import LoraSettings

    with tempfile.TemporaryDirectory() as tmp:
        AutoConfig.for_model(**shape).save_pretrained(tmp)
        model_shape = memory.model_shape(tmp, lora=LoraSettings(r=16, alpha=32))
    settings = memory.PlanSettings(
        strategy=strategy,
        precision="bf16-mixed" if device.type == "cuda" else "fp32",
        lora=lora,
        batch_size=sizes["pairs"],
        max_length=sizes["prompt"] + sizes["response"],
        device=device.type,
        attention="sdpa",
    )
    return memory.plan(model_shape, settings).total


# --------------------------------------------------------------------------------------------------
# prefcurate's steps


def build(shape: dict[str, Any], device, dtype=None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**shape, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(dtype) if dtype is not None else model


def batches(sizes: dict[str, int], vocab: int, n: int, device):
    """``n`` micro-batches of random pairs, all dpo, with fixed made-up reference log-probs."""
    import torch

    from trainers.data import Batch

    generator = torch.Generator().manual_seed(1)
    out = []
    pairs, length = sizes["pairs"], sizes["prompt"] + sizes["response"]
    for _ in range(n):
        ids = torch.randint(3, min(vocab, 384), (2 * pairs, length), generator=generator)
        ids[pairs:, : sizes["prompt"]] = ids[:pairs, : sizes["prompt"]]  # one prompt per pair
        response = torch.zeros_like(ids, dtype=torch.bool)
        response[:, sizes["prompt"] :] = True
        ref = -float(sizes["response"]) * math.log(vocab) * torch.ones(pairs)
        out.append(
            Batch(
                input_ids=ids,
                attention_mask=torch.ones_like(ids, dtype=torch.bool),
                response_mask=response,
                is_dpo=torch.ones(pairs, dtype=torch.bool),
                index=torch.arange(pairs),
                ref_chosen=ref,
                ref_rejected=ref,
            ).to(device)
        )
    return out


def sync_for(device):
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def free_memory(device) -> None:
    """Free what earlier measurements left, then start the peak counter afresh."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_steps(model, strategy: str, data, sizes, *, precision: str, lora: bool = False):
    """prefcurate's step (SequenceLogps → Objective → AdamW) on ``data``; losses, timings and
    the peak memory since the caller's :func:`free_memory` (the model's own weights included)."""
    import torch

    from trainers import dist
    from trainers.logps import SequenceLogps
    from trainers.lora import LoraSettings, apply_lora
    from trainers.objective import Objective
    from trainers.strategy import autocast_for, wrap

    device = next(model.parameters()).device
    if lora:
        model = apply_lora(model, LoraSettings(r=16, alpha=32)).get_base_model()
    if strategy == "fsdp":
        dist.single_process_group(device.type)
    module = wrap(SequenceLogps(model), model, strategy=strategy, world_size=1, precision=precision)
    autocast = autocast_for(strategy, precision, device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    objective = Objective(
        loss="sigmoid", beta=0.1, label_smoothing=0.0, sft_weight=1.0, nll_weight=0.0
    )
    losses, times, sync = [], [], sync_for(device)
    for batch in data:
        sync()
        started = time.perf_counter()
        with autocast():
            terms = objective(module, batch)
        terms.loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - started)
        losses.append(float(terms.loss.detach().mean()))
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    dist.teardown()
    steady = times[sizes["warmup"] :] or times
    tokens = 2 * sizes["pairs"] * (sizes["prompt"] + sizes["response"])
    return {"losses": losses, "step_s": statistics.median(steady), "tokens": tokens, "peak": peak}


def gib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**30, 2)


def check_shape(shape: dict[str, Any], sizes, *, precision: str, device, peak) -> dict[str, Any]:
    """ddp and fsdp on one shape: throughput, MFU, peak memory against the plan, agreement."""
    data = batches(sizes, shape["vocab_size"], sizes["steps"], device)
    flops = flops_per_step(shape, sizes)
    figures: dict[str, Any] = {"flops_per_step": flops}
    for strategy in ("ddp", "fsdp"):
        free_memory(device)
        model = build(shape, device)
        n_params = sum(p.numel() for p in model.parameters())
        result = train_steps(model, strategy, data, sizes, precision=precision)
        del model
        mfu = flops / result["step_s"] / (peak * 1e12) if peak else None
        plan = planned_total(shape, strategy, sizes, lora=False, device=device)
        figures[strategy] = {
            "parameters": n_params,
            "step_s": round(result["step_s"], 5),
            "tokens_per_s": round(result["tokens"] / result["step_s"], 1),
            "mfu": None if mfu is None else round(mfu, 4),
            "peak_gib": gib(result["peak"]),
            "plan_gib": gib(plan),
            "plan_over_peak": None if result["peak"] is None else round(plan / result["peak"], 3),
            "losses": result["losses"],
        }
    pairs = zip(figures["ddp"]["losses"], figures["fsdp"]["losses"], strict=True)
    figures["fsdp_vs_ddp_max_loss_diff"] = max(abs(a - b) for a, b in pairs)
    return figures


def check_lora(shape: dict[str, Any], sizes, *, precision: str, device) -> dict[str, Any]:
    """LoRA as the trainer runs it: the frozen base in bf16 under bf16-mixed, the adapter fp32."""
    import torch

    data = batches(sizes, shape["vocab_size"], sizes["steps"], device)
    free_memory(device)
    base_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    model = build(shape, device, dtype=base_dtype)
    result = train_steps(model, "ddp", data, sizes, precision=precision, lora=True)
    del model
    plan = planned_total(shape, "ddp", sizes, lora=True, device=device)
    return {
        "base_dtype": str(base_dtype or torch.float32),
        "tokens_per_s": round(result["tokens"] / result["step_s"], 1),
        "peak_gib": gib(result["peak"]),
        "plan_gib": gib(plan),
        "plan_over_peak": None if result["peak"] is None else round(plan / result["peak"], 3),
    }


# --------------------------------------------------------------------------------------------------
# TRL on the same batches


def trl_dataset(data, sizes: dict[str, int]):
    """The batches' own token ids and reference log-probs, pair by pair, as TRL reads them."""
    from datasets import Dataset

    prompt, pairs = sizes["prompt"], sizes["pairs"]
    columns: dict[str, list] = {
        k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps")
    }
    columns["ref_rejected_logps"] = []
    for batch in data:
        ids = batch.input_ids.cpu()
        for i in range(pairs):
            columns["prompt_ids"].append(ids[i, :prompt].tolist())
            columns["chosen_ids"].append(ids[i, prompt:].tolist())
            columns["rejected_ids"].append(ids[pairs + i, prompt:].tolist())
            columns["ref_chosen_logps"].append(float(batch.ref_chosen[i]))
            columns["ref_rejected_logps"].append(float(batch.ref_rejected[i]))
    return Dataset.from_dict(columns)


def run_trl(shape: dict[str, Any], data, sizes: dict[str, int], device) -> dict[str, Any]:
    """TRL's DPOTrainer on the same pairs: seconds per step after the same warm-up, timed
    between GPU synchronisations by a callback; the reference log-probs given, as ours are."""
    from transformers import ByT5Tokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    sync = sync_for(device)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.times.append(time.perf_counter() - self.started)

    class GivenTokensDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids / chosen_ids / rejected_ids already

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset  # ref_chosen_logps / ref_rejected_logps already

    free_memory(device)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=sizes["pairs"],
            max_steps=sizes["steps"],
            learning_rate=1e-6,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            beta=0.1,
            max_length=sizes["prompt"] + sizes["response"],
            precompute_ref_log_probs=True,
            bf16=device.type == "cuda",
            use_cpu=device.type != "cuda",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
        )
        trainer = GivenTokensDPOTrainer(
            model=build(shape, device),
            args=args,
            train_dataset=trl_dataset(data, sizes),
            processing_class=ByT5Tokenizer(),
            callbacks=[timer],
        )
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the report only
            trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    steady = timer.times[sizes["warmup"] :] or timer.times
    return {"steps_timed": len(steady), "step_s": statistics.median(steady), "losses": losses}


def compare_trl(shape, sizes, device, ours: dict[str, Any]) -> dict[str, Any]:
    """TRL's seconds per step over prefcurate's (ddp, same shape, same batches)."""
    data = batches(sizes, shape["vocab_size"], sizes["steps"], device)
    trl = run_trl(shape, data, sizes, device)
    return {
        "same_token_ids": True,
        "reference": "given before training on both sides, not timed",
        "warmup_steps_dropped": sizes["warmup"],
        "steps_timed": trl["steps_timed"],
        "trl_step_s": round(trl["step_s"], 5),
        "prefcurate_step_s": ours["step_s"],
        "trl_over_prefcurate": round(trl["step_s"] / ours["step_s"], 3),
        "first_loss": {"trl": trl["losses"][0], "prefcurate": ours["losses"][0]},
    }


# --------------------------------------------------------------------------------------------------
# the report


def check(smoke: bool, peak_override: float | None) -> dict[str, Any]:
    import torch
    from machine import describe

    device = torch.device("cuda" if not smoke else "cpu")
    sizes = SMOKE if smoke else FULL
    precision = "fp32" if smoke else "bf16-mixed"
    name = torch.cuda.get_device_name(0) if not smoke else "cpu"
    peak, source = peak_tflops(name, peak_override) if not smoke else (peak_override, "smoke")
    shapes = {"smoke": SMOKE_SHAPE} if smoke else SHAPES
    report: dict[str, Any] = {"device": name, "machine": describe(torch=True), "sizes": sizes}
    report["peak_tflops"], report["peak_tflops_source"] = peak, source
    for label, shape in shapes.items():
        report[label] = check_shape(shape, sizes, precision=precision, device=device, peak=peak)
    first = next(iter(shapes))
    report["lora"] = {"shape": first} | check_lora(
        shapes[first], sizes, precision=precision, device=device
    )
    report["trl"] = {"shape": first} | compare_trl(
        shapes[first], sizes, device, report[first]["ddp"]
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's dense bf16 peak (overrides the table)"
    )
    args = parser.parse_args()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        fail(
            "no CUDA GPU here: benchmarks/gpu_check.py measures the trainer on a GPU "
            "(run it on a machine with one, or pass --cpu-smoke to check the script on the CPU)"
        )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    report = check(args.cpu_smoke, args.peak_tflops)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
