"""The trainer on a GPU, in one command: throughput, MFU, memory against the plan, fsdp = ddp, LoRA,
and TRL's DPOTrainer on the same batches.

    python benchmarks/gpu_check.py --json gpu.json          # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --cpu-smoke              # the same code paths, tiny, on a CPU

Models are random-initialised from configs (nothing is downloaded): a Qwen2.5-0.5B shape and a
Llama-3-8B shape cut to 4 decoder layers (its full-width embeddings, head and layers). Batches
are random token ids (prompt 256 + response 768 tokens, 4 pairs per micro-batch), bf16-mixed
(fp32 master weights, bf16 compute). For each shape, one process on one GPU:

* ``ddp`` (one process: the plain module under bf16 autocast) and ``fsdp`` (FSDP2 on a 1-rank
  group, bf16 mixed-precision policy): tokens/s, model-FLOPs utilisation (6·N per token for the
  weights plus 6·L·h·s for causal attention, over the device's dense bf16 peak), peak
  ``torch.cuda.max_memory_allocated`` against the memory plan (``prefcurate train --dry-run``),
  and the largest difference between the two strategies' losses on the same batches;
* LoRA r=16 on all linear layers (Qwen shape): tokens/s and peak memory;
* TRL's ``DPOTrainer`` on the same token ids and batch size (Qwen shape): seconds per step, and
  the ratio to prefcurate's.

It prints one JSON object. Without CUDA it exits 2 (``--cpu-smoke`` runs tiny shapes in fp32 on
the CPU to check the script itself; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: dense bf16 peak TFLOP/s by device name (NVIDIA's data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

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
SMOKE = {"pairs": 2, "prompt": 8, "response": 24, "steps": 2, "warmup": 1}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


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


def train_steps(model, strategy: str, data, sizes, *, precision: str, lora: bool = False):
    """prefcurate's step (SequenceLogps → Objective → AdamW) on ``data``; losses, timings."""
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
    logps = SequenceLogps(model)
    module = wrap(logps, model, strategy=strategy, world_size=1, precision=precision)
    autocast = autocast_for(strategy, precision, device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    objective = Objective(
        loss="sigmoid", beta=0.1, label_smoothing=0.0, sft_weight=1.0, nll_weight=0.0
    )
    losses, times = [], []
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
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
        losses.append(float(terms.loss.mean()))
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    dist.teardown()
    steady = times[sizes["warmup"] :] or times
    tokens = 2 * sizes["pairs"] * (sizes["prompt"] + sizes["response"])
    return {"losses": losses, "step_s": sum(steady) / len(steady), "tokens": tokens, "peak": peak}


def planned_total(shape: dict[str, Any], strategy: str, sizes, *, lora: bool, device) -> float:
    """The memory plan's total for this run, from the shape's config.json alone."""
    import tempfile

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
    )
    return memory.plan(model_shape, settings).total


def flops_per_token(shape: dict[str, Any], n_params: int, seq: int) -> float:
    """6·N for the weights (forward + backward) plus 6·L·h·s for causal attention scores."""
    return 6 * n_params + 6 * shape["num_hidden_layers"] * shape["hidden_size"] * seq


def run_trl(shape: dict[str, Any], sizes: dict[str, int], device, steps: int) -> dict[str, Any]:
    """TRL's DPOTrainer on the same kind of batches (token ids given, as train_bench.py does)."""
    import torch
    from datasets import Dataset
    from transformers import ByT5Tokenizer
    from trl import DPOConfig, DPOTrainer

    generator = torch.Generator().manual_seed(1)
    n = sizes["pairs"] * steps

    def ids(length: int) -> list[list[int]]:
        return torch.randint(3, 384, (n, length), generator=generator).tolist()

    dataset = Dataset.from_dict(
        {
            "prompt_ids": ids(sizes["prompt"]),
            "chosen_ids": ids(sizes["response"]),
            "rejected_ids": ids(sizes["response"]),
        }
    )

    class SameTokensDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    model = build(shape, device)
    args = DPOConfig(
        output_dir=str(Path("/tmp") / "gpu-check-trl"),
        per_device_train_batch_size=sizes["pairs"],
        max_steps=steps,
        learning_rate=1e-6,
        beta=0.1,
        max_length=sizes["prompt"] + sizes["response"],
        bf16=device.type == "cuda",
        use_cpu=device.type != "cuda",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        train_sampling_strategy="sequential",
    )
    trainer = SameTokensDPOTrainer(
        model=model,
        ref_model=build(shape, device),  # TRL's default: a second copy as the reference
        args=args,
        train_dataset=dataset,
        processing_class=ByT5Tokenizer(),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"steps": steps, "step_s": seconds / steps, "note": "includes TRL's reference forward"}


def check(smoke: bool, peak_tflops: float | None) -> dict[str, Any]:
    import torch
    from machine import describe

    device = torch.device("cuda" if not smoke else "cpu")
    sizes = SMOKE if smoke else FULL
    precision = "fp32" if smoke else "bf16-mixed"
    name = torch.cuda.get_device_name(0) if not smoke else "cpu"
    if peak_tflops is None and not smoke:
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    shapes = {"smoke": SMOKE_SHAPE} if smoke else SHAPES
    report: dict[str, Any] = {"device": name, "machine": describe(torch=True), "sizes": sizes}
    report["peak_tflops"] = peak_tflops
    for label, shape in shapes.items():
        data = batches(sizes, shape["vocab_size"], sizes["steps"], device)
        figures: dict[str, Any] = {}
        for strategy in ("ddp", "fsdp"):
            model = build(shape, device)
            n_params = sum(p.numel() for p in model.parameters())
            result = train_steps(model, strategy, data, sizes, precision=precision)
            del model
            seq = sizes["prompt"] + sizes["response"]
            tokens_per_s = result["tokens"] / result["step_s"]
            mfu = None
            if peak_tflops:
                mfu = tokens_per_s * flops_per_token(shape, n_params, seq) / (peak_tflops * 1e12)
            plan = planned_total(shape, strategy, sizes, lora=False, device=device)
            figures[strategy] = {
                "parameters": n_params,
                "tokens_per_s": round(tokens_per_s, 1),
                "mfu": None if mfu is None else round(mfu, 4),
                "peak_gib": None if result["peak"] is None else round(result["peak"] / 2**30, 2),
                "plan_gib": round(plan / 2**30, 2),
                "losses": result["losses"],
            }
        figures["fsdp_vs_ddp_max_loss_diff"] = max(
            abs(a - b)
            for a, b in zip(figures["ddp"]["losses"], figures["fsdp"]["losses"], strict=True)
        )
        report[label] = figures
    first = next(iter(shapes))
    shape = shapes[first]
    data = batches(sizes, shape["vocab_size"], sizes["steps"], device)
    lora = train_steps(build(shape, device), "ddp", data, sizes, precision=precision, lora=True)
    report["lora"] = {
        "shape": first,
        "tokens_per_s": round(lora["tokens"] / lora["step_s"], 1),
        "peak_gib": None if lora["peak"] is None else round(lora["peak"] / 2**30, 2),
        "plan_gib": round(planned_total(shape, "ddp", sizes, lora=True, device=device) / 2**30, 2),
    }
    trl = run_trl(shape, sizes, device, sizes["steps"])
    ours = report[first]["ddp"]["tokens_per_s"]
    report["trl"] = {
        "shape": first,
        **trl,
        "prefcurate_step_s": round(
            2 * sizes["pairs"] * (sizes["prompt"] + sizes["response"]) / ours, 4
        ),  # fmt: skip
    }
    report["trl"]["trl_over_prefcurate"] = round(
        trl["step_s"] / report["trl"]["prefcurate_step_s"], 3
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
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
