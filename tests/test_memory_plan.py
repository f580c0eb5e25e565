"""``prefcurate train --dry-run``: the memory plan from config.json alone, checked against the
peak a real run measures (benchmarks/memory_check.py) and against Llama-3-8B by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from split_helpers import synthetic_rows, write_split

from trainers.config import TrainConfig
from trainers.memory import for_config, model_shape

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

#: Llama-3-8B's config.json (meta-llama/Meta-Llama-3-8B-Instruct), the fields that shape it
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture
def llama3_8b(tmp_path) -> Path:
    directory = tmp_path / "llama3-8b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(LLAMA3_8B))
    return directory  # a config, no weights: the plan must not need them


@pytest.fixture
def split(tmp_path) -> Path:
    return write_split(tmp_path / "split", synthetic_rows(8, seed=4))


def test_llama3_8b_parameter_count_from_config_alone(llama3_8b):
    shape = model_shape(str(llama3_8b))
    assert shape.parameters == 8_030_261_248  # Meta's published count
    assert shape.layers == 32
    assert shape.root == 2 * 128256 * 4096 + 4096  # embeddings, head, final norm


def test_llama3_8b_plan_matches_the_rule_of_thumb(cli, llama3_8b, split, tmp_path):
    """Full AdamW in bf16-mixed: 4 (fp32 weight) + 4 (grad) + 8 (two moments) = 16 bytes per
    parameter. On 8 GPUs, fsdp: 16 × 8.03e9 / 8 = 16.06e9 bytes = 14.96 GiB of sharded state
    per GPU; ddp keeps all of it on each: 119.7 GiB, more than 80."""
    result = cli(
        "train", split, "--model", llama3_8b, "--out", tmp_path / "run", "--dry-run", "--json",
        "--device", "cuda", "--device-memory", "80", "--world-size", "8", "--batch-size", "1",
        "--max-length", "2048", "--gradient-checkpointing",
    )  # fmt: skip
    assert result.code == 0, result.err
    payload = json.loads(result.out)
    plan = payload["plan"]
    assert plan["settings"]["strategy"] == "fsdp"  # auto: a replica does not fit in 80 GB
    b = plan["bytes"]
    P = 8_030_261_248
    sharded = P * 4 / 8
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096  # 218.1M
    # FSDP2 at once: root + 2 layers in bf16, 3 layers of fp32 gradient buffers
    gathered = (2 * 128256 * 4096 + 4096 + 2 * layer) * 2 + 3 * layer * 4
    assert b["parameters"] == pytest.approx(sharded + gathered, rel=1e-3)
    assert b["gradients"] + b["optimizer"] == pytest.approx(3 * sharded, rel=1e-6)
    assert b["parameters"] + b["gradients"] + b["optimizer"] - gathered == pytest.approx(
        16 * P / 8, rel=1e-3
    )
    assert plan["fits"] and plan["gib"]["total"] < 80
    by_label = {alt["label"]: alt for alt in payload["alternatives"]}
    assert not by_label["ddp × 8, full, bf16-mixed"]["fits"]
    assert by_label["ddp × 8, full, bf16-mixed"]["bytes"]["optimizer"] == 8 * P
    assert by_label["ddp × 8, qlora, bf16-mixed"]["fits"]
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_dry_run_text_names_each_part(cli, split, tmp_path):
    result = cli("train", split, "--model", "tiny", "--out", tmp_path / "r", "--dry-run")
    assert result.code == 0, result.err
    for word in ("parameters", "gradients", "optimizer", "reference", "activations", "total"):
        assert word in result.out
    assert "alternatives" in result.out and "fsdp × 1, lora, fp32" in result.out


def test_auto_strategy_shards_only_when_a_replica_does_not_fit(llama3_8b, split, tmp_path):
    def strategy(world_size: int, gib: float) -> str:
        config = TrainConfig(
            split, model=str(llama3_8b), out=tmp_path / "r", device_memory=gib, batch_size=1
        )
        _, chosen, _, _ = for_config(config, torch.device("cuda"), world_size=world_size)
        return chosen.settings.strategy

    assert strategy(8, 80) == "fsdp"
    assert strategy(8, 1000) == "ddp"
    assert strategy(1, 80) == "ddp"  # one process: nothing to shard over


def test_a_run_that_will_not_fit_exits_2_before_loading(cli, split, tmp_path):
    out = tmp_path / "run"
    result = cli("train", split, "--model", "tiny", "--out", out, "--device-memory", "0.001")
    assert result.code == 2
    assert "the memory plan needs" in result.err and "GiB per device" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not out.exists()


def plan_json(cli, split, model, tmp_path, *flags) -> dict:
    result = cli(
        "train", split, "--model", model, "--out", tmp_path / "run", "--dry-run", "--json",
        "--device", "cuda", "--device-memory", "80", *flags,
    )  # fmt: skip
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_ddp_on_several_processes_keeps_its_gradient_buckets_for_the_whole_run(
    cli, llama3_8b, split, tmp_path
):
    """DDP's gradients are views into its all-reduce buckets (gradient_as_bucket_view), which
    live as long as the wrapper: the plan counts them during the forward pass too."""
    one = plan_json(cli, split, llama3_8b, tmp_path, "--world-size", "1", "--strategy", "ddp")
    two = plan_json(cli, split, llama3_8b, tmp_path, "--world-size", "2", "--strategy", "ddp")
    b1, b2 = one["plan"]["bytes"], two["plan"]["bytes"]
    P = 8_030_261_248
    assert b2["gradients"] == b1["gradients"] == 4 * P
    # one process: the gradients are freed between steps, so only the step's peak holds them
    step = 4 * P  # the multi-tensor AdamW's temporary copy on CUDA
    assert b1["total"] == pytest.approx(
        b1["parameters"] + b1["optimizer"] + max(b1["activations"], 4 * P + step), rel=1e-9
    )
    # several: the buckets live through the forward pass, beside the activations
    assert b2["total"] == pytest.approx(
        b2["parameters"] + b2["optimizer"] + b2["gradients"] + max(b2["activations"], step),
        rel=1e-9,
    )
    assert any("buckets" in line for line in two["plan"]["assumptions"])


def test_docs_8_gpu_command_plans_sharded_gradients_with_grad_accum(
    cli, llama3_8b, split, tmp_path
):
    """docs/training.md's 8-GPU command (--grad-accum 4): fsdp reduce-scatters every micro-batch,
    so the accumulated gradients are a shard, 4 · P / 8 bytes, not a whole fp32 copy."""
    payload = plan_json(
        cli, split, llama3_8b, tmp_path, "--world-size", "8", "--strategy", "fsdp",
        "--precision", "bf16-mixed", "--gradient-checkpointing", "--batch-size", "2",
        "--grad-accum", "4", "--max-length", "1024",
    )  # fmt: skip
    b = payload["plan"]["bytes"]
    assert b["gradients"] == 4 * 8_030_261_248 / 8
    assert payload["plan"]["gib"]["total"] < 30  # not the ~46 GiB of unsharded accumulation


def test_qlora_plans_the_fp32_upcast_of_embeddings_head_and_norms(cli, llama3_8b, split, tmp_path):
    """PEFT's prepare_model_for_kbit_training upcasts every parameter that is not 4-bit to fp32:
    Llama-3-8B's 6,979,321,856 decoder linear weights are NF4 (4.127 bits), the other
    1,050,939,392 (embeddings, head, norms) 4 bytes, the r=16 adapter 41.9M × 4 bytes."""
    payload = plan_json(
        cli, split, llama3_8b, tmp_path, "--world-size", "1", "--lora-r", "16",
        "--load-in-4bit", "--gradient-checkpointing", "--batch-size", "2", "--max-length", "1024",
    )  # fmt: skip
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert linear == 6_979_321_856
    rest = 8_030_261_248 - linear
    adapter = payload["model"]["lora_trainable"]
    nf4 = (4 + 8 / 64 + 32 / (64 * 256)) / 8
    expected = linear * nf4 + rest * 4 + adapter * 4
    assert payload["plan"]["bytes"]["parameters"] == pytest.approx(expected, rel=1e-9)
    assert any("fp32" in line for line in payload["plan"]["assumptions"])


def test_eager_attention_plans_the_attention_probabilities(cli, split, tmp_path):
    """Eager attention keeps each head's L×L softmax output (fp32) and its cast: for the tiny
    model in fp32, 2 layers × 4 heads × 8 rows (batch 4) × 64² × (4 + 4) bytes = 2 MiB more."""
    sdpa = cli("train", split, "--model", "tiny", "--out", tmp_path / "r", "--dry-run", "--json",
               "--max-length", "64", "--attn-implementation", "sdpa")  # fmt: skip
    eager = cli("train", split, "--model", "tiny", "--out", tmp_path / "r", "--dry-run", "--json",
                "--max-length", "64", "--attn-implementation", "eager")  # fmt: skip
    a, b = (json.loads(r.out)["plan"]["bytes"]["activations"] for r in (sdpa, eager))
    assert b - a == 2 * 4 * 8 * 64 * 64 * 8


def test_headroom_holds_back_a_share_of_the_device(cli, split, tmp_path):
    def plan(device_gib: float, headroom: str) -> dict:
        flags = ("--json", "--device-memory", str(device_gib), "--memory-headroom", headroom)
        result = cli(
            "train", split, "--model", "tiny", "--out", tmp_path / "r", "--dry-run", *flags
        )
        assert result.code == 0, result.err
        return json.loads(result.out)

    total = plan(1.0, "0.1")["plan"]["bytes"]["total"] / 2**30
    device = total / 0.85  # the plan is 85% of the device
    default = plan(device, "0.1")
    assert default["usable_gib"] == pytest.approx(0.9 * device, abs=2e-3)
    assert default["plan"]["fits"]  # 85% < 90%
    half = plan(device, "0.5")
    assert half["usable_gib"] == pytest.approx(0.5 * device, abs=2e-3)
    assert not half["plan"]["fits"]  # 85% > 50%


def test_dry_run_prints_what_the_plan_assumes(cli, split, tmp_path):
    result = cli("train", split, "--model", "tiny", "--out", tmp_path / "r", "--dry-run")
    assert result.code == 0, result.err
    assert "assumes:" in result.out
    assert "every pair dpo and every row at --max-length 1024" in result.out
    assert "sdpa attention" in result.out
    assert "10% held back (--memory-headroom)" in result.out


#: The plan against the measured peak (benchmarks/memory_check.py): ddp on 2 processes, fsdp on
#: 2 processes with --grad-accum 2, and LoRA (r 16, one process), at the three shapes.
SHOW = [
    ("tiny", "ddp", 2, 1, 0),
    ("tiny", "fsdp", 2, 2, 0),
    ("tiny", "ddp", 1, 1, 16),
    ("20m", "ddp", 1, 1, 0),
    ("20m", "ddp", 1, 1, 16),
    *(
        pytest.param(*case, marks=pytest.mark.slow)
        for case in (
            ("20m", "ddp", 2, 1, 0),
            ("20m", "fsdp", 2, 2, 0),
            ("100m", "ddp", 2, 1, 0),
            ("100m", "fsdp", 2, 2, 0),
            ("100m", "ddp", 1, 1, 16),
        )
    ),
]


@pytest.mark.parametrize(("shape", "strategy", "nproc", "grad_accum", "lora_r"), SHOW)
def test_plan_is_within_15_percent_of_the_measured_peak(shape, strategy, nproc, grad_accum, lora_r):
    from memory_check import run

    result = run(shape, strategy, nproc, grad_accum=grad_accum, lora_r=lora_r)
    assert len(result["ranks"]) == nproc
    for rank in result["ranks"]:
        assert 0.85 <= rank["planned_over_measured"] <= 1.15, rank
