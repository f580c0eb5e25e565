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


@pytest.mark.parametrize(
    ("shape", "strategy", "nproc"),
    [
        ("tiny", "ddp", 1),
        ("tiny", "fsdp", 2),
        ("20m", "ddp", 1),
        pytest.param("20m", "fsdp", 2, marks=pytest.mark.slow),
        pytest.param("100m", "ddp", 1, marks=pytest.mark.slow),
        pytest.param("100m", "fsdp", 2, marks=pytest.mark.slow),
    ],
)
def test_plan_is_within_25_percent_of_the_measured_peak(shape, strategy, nproc):
    from memory_check import run

    result = run(shape, strategy, nproc)
    assert len(result["ranks"]) == nproc
    for rank in result["ranks"]:
        assert 0.75 <= rank["planned_over_measured"] <= 1.25, rank
