"""``--strategy fsdp``: FSDP2 over 2 gloo processes trains like 1 process, and its DCP
checkpoints survive a SIGKILL and a change of world size.

One module-scoped set of runs on the tiny model (37 pairs, 2 epochs, 20 steps), shared by the
tests below: 1 process (ddp, batch 4); torchrun × 2 fsdp (batch 2) uninterrupted; the same
killed with SIGKILL (the whole process group) after its step-10 checkpoint, then resumed on 2
processes; and a copy of the killed run resumed on 1 process (DCP reshards the checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from split_helpers import synthetic_rows, write_split
from test_train import FAST, assert_same_losses, free_port, metrics, subprocess_env
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

ARGS = [*FAST, "--shuffle", "--epochs", "2", "--save-every", "5"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


def launcher() -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    if torchrun.exists():
        return [str(torchrun)]
    return [sys.executable, "-m", "torch.distributed.run"]


def torchrun_command(split: Path, out: Path, *extra: str) -> list[str]:
    return [
        *launcher(),
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "prefcurate",
        "train",
        str(split),
        *ARGS,
        "--strategy",
        "fsdp",
        "--batch-size",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def run_torchrun(split: Path, out: Path, *extra: str) -> None:
    done = subprocess.run(
        torchrun_command(split, out, *extra),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_one(split: Path, out: Path, *extra: str) -> None:
    """One process, one thread (as each torchrun rank), through the real CLI in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "prefcurate", "train", str(split), *ARGS, "--batch-size", "4"]
        + ["--out", str(out), *extra],
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsdp")
    saved = os.environ.get("PREFCURATE_CACHE_DIR")
    os.environ["PREFCURATE_CACHE_DIR"] = str(root / "cache")
    try:
        split = write_split(root / "split", synthetic_rows(37, seed=1))
        out = {name: root / name for name in ("one", "fsdp", "killed", "resharded")}
        run_one(split, out["one"])
        run_torchrun(split, out["fsdp"], "--save-total-limit", "2")

        proc = subprocess.Popen(
            torchrun_command(split, out["killed"], "--save-total-limit", "2"),
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the agent and both ranks
        )
        marker = out["killed"] / "checkpoints" / "step-10" / "state.json"
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        shutil.copytree(out["killed"], out["resharded"])
        run_torchrun(split, out["killed"], "--resume")
        run_one(split, out["resharded"], "--resume")
        yield out
    finally:
        if saved is None:
            os.environ.pop("PREFCURATE_CACHE_DIR", None)
        else:
            os.environ["PREFCURATE_CACHE_DIR"] = saved


def test_two_fsdp_processes_match_one_process_for_20_steps(runs):
    one, two = metrics(runs["one"]), metrics(runs["fsdp"])
    assert len(one) == len(two) == 20
    assert_close(
        torch.tensor([r["loss"] for r in two]),
        torch.tensor([r["loss"] for r in one]),
        atol=1e-5,
        rtol=0,
    )
    run = json.loads((runs["fsdp"] / "run.json").read_text())
    assert (run["world_size"], run["strategy"]) == (2, "fsdp")


def test_fsdp_final_weights_equal_one_process_and_load_with_transformers(runs):
    one = load_file(runs["one"] / "model" / "model.safetensors")
    two = load_file(runs["fsdp"] / "model" / "model.safetensors")
    assert sorted(one) == sorted(two)
    for name in one:
        assert_close(two[name], one[name], atol=1e-5, rtol=0, msg=name)
    model = AutoModelForCausalLM.from_pretrained(runs["fsdp"] / "model")
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in two.values())


def test_fsdp_checkpoints_are_dcp_shards_and_only_the_newest_two_are_kept(runs):
    steps = sorted(p.name for p in (runs["fsdp"] / "checkpoints").iterdir())
    assert steps == ["step-15", "step-20"]
    step = runs["fsdp"] / "checkpoints" / "step-20"
    shards = sorted(p.name for p in (step / "dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert json.loads((step / "state.json").read_text())["format"] == "dcp"


def test_sigkill_then_resume_on_two_processes_is_bit_identical(runs):
    killed, full = runs["killed"], runs["fsdp"]
    assert (killed / "model" / "model.safetensors").read_bytes() == (
        full / "model" / "model.safetensors"
    ).read_bytes()
    timing = ("tokens_per_s", "pairs_per_s", "elapsed_s")
    strip = [{k: v for k, v in row.items() if k not in timing} for row in metrics(killed)]
    assert strip == [{k: v for k, v in row.items() if k not in timing} for row in metrics(full)]
    assert json.loads((killed / "run.json").read_text())["resumed_from"] >= 10


def test_two_process_checkpoint_resumes_on_one_process(runs):
    """DCP reshards the 2-rank checkpoint for 1 process (batch 4: the same global batch)."""
    resumed = runs["resharded"]
    run = json.loads((resumed / "run.json").read_text())
    assert run["world_size"] == 1 and run["resumed_from"] >= 10
    assert_same_losses(resumed, runs["fsdp"])
    one = load_file(resumed / "model" / "model.safetensors")
    two = load_file(runs["fsdp"] / "model" / "model.safetensors")
    for name in one:
        assert_close(one[name], two[name], atol=1e-5, rtol=0, msg=name)


def test_unsharded_checkpoint_cannot_resume_sharded(cli, tmp_path):
    split = write_split(tmp_path / "split", synthetic_rows(12, seed=2))
    out = tmp_path / "run"
    assert (
        cli("train", split, *FAST, "--max-steps", "2", "--save-every", "1", "--out", out).code == 0
    )
    (out / "checkpoints" / "step-2").rename(out / "checkpoints" / "step-1x")  # keep step-1
    result = cli(
        "train", split, *FAST, "--max-steps", "2", "--out", out, "--resume", "--strategy", "fsdp"
    )
    assert result.code == 2
    assert "--strategy ddp" in result.err


def test_sharded_final_model_is_written_in_hf_shards_that_load(cli, tmp_path):
    """FSDP2 on a 1-rank group; --max-shard-size 200KB splits the 0.56 MB model into files."""
    split = write_split(tmp_path / "split", synthetic_rows(8, seed=2))
    out = tmp_path / "run"
    result = cli(
        "train", split, *FAST, "--max-steps", "2", "--out", out, "--strategy", "fsdp",
        "--max-shard-size", "200KB",
    )  # fmt: skip
    assert result.code == 0, result.err
    shards = sorted(p.name for p in (out / "model").glob("model-*.safetensors"))
    assert len(shards) >= 3 and (out / "model" / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    weights = {}
    for shard in shards:
        weights.update(load_file(out / "model" / shard))
    for name, param in model.state_dict().items():
        assert torch.equal(param, weights[name]), name
