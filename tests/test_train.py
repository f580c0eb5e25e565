"""``prefcurate train`` end to end: the route reaches the loss, resume is exact, DDP = 1 process.

Runs use the tiny random Llama on small splits written by the tests (tests/split_helpers.py), a
few steps each; the SIGKILL and torchrun tests start real subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from split_helpers import synthetic_rows, write_split
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.data import collate, read_split, tokenize_split
from trainers.logps import SequenceLogps, reference_logps
from trainers.loop import TrainConfig, lr_factor, train
from trainers.model import load_model
from trainers.objective import Objective

REPO = Path(__file__).resolve().parent.parent
FAST = ("--model", "tiny", "--max-length", "64", "--lr", "1e-3", "--seed", "0")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def split(tmp_path) -> Path:
    """37 synthetic pairs; margins 0..3, so some pairs route to sft (margin < 0.5)."""
    return write_split(tmp_path / "split", synthetic_rows(37, seed=1))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(run_dir: Path, expected_run_dir: Path) -> None:
    """The two runs logged the same loss at every step, within 1e-5."""
    assert_close(
        torch.tensor([r["loss"] for r in metrics(run_dir)]),
        torch.tensor([r["loss"] for r in metrics(expected_run_dir)]),
        atol=1e-5,
        rtol=0,
    )


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("PREFCURATE_DEBUG", None)
    return env


# --------------------------------------------------------------------------- a run's outputs


def test_train_writes_metrics_run_json_and_a_loadable_model(cli, split, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", split, "--out", out, *FAST, "--batch-size", "4", "--shuffle", "--save-every", "5"
    )
    assert result.code == 0, result.err
    assert "trained 10 steps" in result.out
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 11))
    keys = {
        "loss",
        "loss/dpo",
        "loss/sft",
        "nll/dpo",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "pairs/dpo",
        "pairs/sft",
    }
    assert keys <= set(rows[0])
    # per-route keys are null, not zero, when a step has no pair of that route
    assert all((r["loss/sft"] is None) == (r["pairs/sft"] == 0) for r in rows)
    assert any(r["pairs/sft"] for r in rows) and any(r["pairs/dpo"] for r in rows)
    # the reference is the initial policy: at step 1 every reward is exactly 0
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["pairs/dpo"] + rows[-1]["pairs/sft"] == 1  # 37 = 9 × 4 + 1
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed"
    assert run["tokens"]["dpo"] + run["tokens"]["sft"] == 37
    assert run["result"]["steps"] == 10
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-10", "step-5"]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.model_type == "llama"
    assert tokenizer("a").input_ids == [100, 1]


def test_loss_is_the_mean_over_pairs_of_the_routed_terms(cli, split, tmp_path):
    """With D dpo and S sft pairs in a step: loss = (D·(loss/dpo + w·nll/dpo) + S·w_sft·loss/sft)
    / (D + S); checked on every step of a run with both weights set."""
    out = tmp_path / "run"
    result = cli(
        "train",
        split,
        "--out",
        out,
        *FAST,
        "--batch-size",
        "8",
        "--shuffle",
        "--nll-weight",
        "0.3",
        "--sft-weight",
        "0.5",
        "--beta",
        "0.2",
    )
    assert result.code == 0, result.err
    for r in metrics(out):
        d, s = r["pairs/dpo"], r["pairs/sft"]
        expected = (d * (r["loss/dpo"] + 0.3 * r["nll/dpo"]) if d else 0.0) + (
            s * 0.5 * r["loss/sft"] if s else 0.0
        )
        assert r["loss"] == pytest.approx(expected / (d + s), rel=1e-5)


def test_real_ultrafeedback_split(cli, uf1k, tmp_path):
    """UltraFeedback 1k routed at τ = 0.5: the ties (111 pairs) are sft; 6 shuffled steps."""
    split_dir = write_split(tmp_path / "uf", uf1k, threshold=0.5)
    out = tmp_path / "run"
    result = cli(
        "train",
        split_dir,
        "--out",
        out,
        "--model",
        "tiny",
        "--max-length",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "6",
        "--shuffle",
        "--lr",
        "1e-3",
    )
    assert result.code == 0, result.err
    run = json.loads((out / "run.json").read_text())
    assert run["split"]["routes"] == {"dpo": 885, "sft": 110}
    tokens = run["tokens"]
    assert tokens["sft"] == 110 + tokens["identical_after_truncation"]
    rows = metrics(out)
    assert sum(r["pairs/sft"] for r in rows) > 0
    assert all(r["loss/dpo"] is not None for r in rows)


def test_conversational_split_trains(cli, tmp_path):
    split_dir = write_split(tmp_path / "chat", synthetic_rows(12, conversational=True))
    out = tmp_path / "run"
    result = cli("train", split_dir, "--out", out, *FAST, "--batch-size", "4")
    assert result.code == 0, result.err
    assert json.loads((out / "run.json").read_text())["split"]["conversational"] is True
    assert len(metrics(out)) == 3


# --------------------------------------------------------------------------- routing


def test_flipping_one_pairs_route_changes_that_pairs_loss_term(tmp_path):
    """The route column reaches the loss: the same pairs through read → tokenise → collate →
    objective, with one route flipped dpo → sft, change exactly that pair's term from the DPO
    loss (log 2 at the reference policy) to its chosen response's length-normalised NLL."""
    rows = synthetic_rows(6, seed=2)
    loaded = load_model("tiny", seed=0)
    module = SequenceLogps(loaded.model)
    terms = {}
    for name, routes in (
        ("all_dpo", ["dpo"] * 6),
        ("flipped", ["dpo", "dpo", "sft"] + ["dpo"] * 3),
    ):
        split = read_split(write_split(tmp_path / name, rows, routes=routes))
        pairs = tokenize_split(split, loaded.tokenizer, max_length=64)
        ref = reference_logps(
            module,
            pairs,
            batch_size=6,
            device=torch.device("cpu"),
            autocast=torch.autocast("cpu", enabled=False),
            pad_id=0,
        )
        batch = collate(pairs, torch.arange(6), pad_id=0, ref_chosen=ref[0], ref_rejected=ref[1])
        with torch.no_grad():
            out = Objective("sigmoid", 0.1, 0.0, 1.0, 0.0)(module, batch)
        terms[name] = dict(zip(pairs.pair_ids, out.loss.tolist(), strict=True))
        nll = dict(zip(pairs.pair_ids, out.chosen_nll.tolist(), strict=True))
    flipped_id = split.frame.filter(split.frame["route"] == "sft")["pair_id"][0]
    for pid, value in terms["all_dpo"].items():
        assert value == pytest.approx(0.6931472, abs=1e-6)  # −log σ(0) = log 2
        if pid == flipped_id:
            assert terms["flipped"][pid] == pytest.approx(nll[pid], abs=1e-6)
            assert terms["flipped"][pid] > 3.0
        else:
            assert terms["flipped"][pid] == pytest.approx(value, abs=1e-6)


def test_flipped_route_changes_the_trained_loss(cli, tmp_path):
    """Through the CLI: one step on 6 pairs, with and without one pair routed to sft."""
    rows = synthetic_rows(6, seed=2)
    losses = {}
    for name, routes in (("a", ["dpo"] * 6), ("b", ["sft"] + ["dpo"] * 5)):
        split_dir = write_split(tmp_path / name, rows, routes=routes)
        result = cli(
            "train", split_dir, "--out", tmp_path / f"run-{name}", *FAST, "--batch-size", "6"
        )
        assert result.code == 0, result.err
        (row,) = metrics(tmp_path / f"run-{name}")
        losses[name] = row
    assert losses["a"]["pairs/sft"] == 0 and losses["b"]["pairs/sft"] == 1
    assert losses["a"]["loss"] == pytest.approx(0.6931472, abs=1e-6)
    assert losses["b"]["loss"] == pytest.approx(
        (5 * 0.6931472 + losses["b"]["loss/sft"]) / 6, abs=1e-5
    )


# --------------------------------------------------------------------------- equivalences


def test_lr_schedule_is_linear_warmup_then_cosine():
    """warmup 2 of 10 steps: 1/2, 2/2, then 0.5·(1 + cos(π·(s − 2)/8)): s = 6 → 0.5, s = 10 → 0."""
    factors = [lr_factor(s, warmup=2, total=10) for s in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[6] == pytest.approx(0.5)
    assert factors[10] == 0.0
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))


def test_lr_schedule_flag_reaches_the_optimizer(cli, split, tmp_path):
    """``--lr-schedule constant`` holds the peak after warmup; an unknown name is exit 2."""
    flags = (*FAST, "--max-steps", "6", "--batch-size", "4", "--warmup-ratio", "0.34")
    assert (
        cli("train", split, "--out", tmp_path / "c", *flags, "--lr-schedule", "constant").code == 0
    )
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "c" / "metrics.jsonl").open()]
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3])  # warmup ceil(2.04)
    bad = cli("train", split, "--out", tmp_path / "x", *flags, "--lr-schedule", "linear")
    assert bad.code == 2 and "unknown --lr-schedule 'linear'" in bad.err
    assert not (tmp_path / "x").exists()


def test_gradient_accumulation_matches_one_big_batch(cli, split, tmp_path):
    """Global batch 4 as 4×1, 2×2 and 1×4 micro-batches: the same loss curve (mean over pairs)."""
    curves = []
    for batch_size, accum in ((4, 1), (2, 2), (1, 4)):
        out = tmp_path / f"run-{batch_size}"
        result = cli(
            "train",
            split,
            "--out",
            out,
            *FAST,
            "--shuffle",
            "--max-steps",
            "6",
            "--batch-size",
            batch_size,
            "--grad-accum",
            accum,
        )
        assert result.code == 0, result.err
        curves.append([r["loss"] for r in metrics(out)])
    assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), atol=1e-5, rtol=0)
    assert_close(torch.tensor(curves[2]), torch.tensor(curves[0]), atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_losses(cli, split, tmp_path):
    curves = []
    for extra in ((), ("--gradient-checkpointing",)):
        out = tmp_path / f"run{len(extra)}"
        result = cli(
            "train",
            split,
            "--out",
            out,
            *FAST,
            "--batch-size",
            "4",
            "--max-steps",
            "4",
            "--shuffle",
            *extra,
        )
        assert result.code == 0, result.err
        curves.append([r["loss"] for r in metrics(out)])
    assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", ["ipo", "hinge", "robust"])
def test_each_preference_loss_trains(cli, split, tmp_path, loss):
    extra = ("--label-smoothing", "0.1") if loss == "robust" else ()
    out = tmp_path / loss
    result = cli(
        "train",
        split,
        "--out",
        out,
        *FAST,
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--loss",
        loss,
        "--beta",
        "0.5",
        *extra,
    )
    assert result.code == 0, result.err
    first = metrics(out)[0]
    at_reference = {"ipo": 1.0, "hinge": 1.0, "robust": 0.6931472}[loss]  # h = 0 at step 1
    assert first["loss/dpo"] == pytest.approx(at_reference, abs=1e-5)


def test_model_directory_and_ref_model(cli, split, tmp_path):
    """Any save_pretrained directory works as --model and as --ref-model."""
    first = tmp_path / "first"
    assert cli("train", split, "--out", first, *FAST, "--max-steps", "3").code == 0
    out = tmp_path / "second"
    result = cli(
        "train",
        split,
        "--out",
        out,
        "--model",
        first / "model",
        "--ref-model",
        first / "model",
        "--max-length",
        "64",
        "--max-steps",
        "2",
    )
    assert result.code == 0, result.err
    # same weights as the reference (up to the float noise of different padding in the two passes)
    assert metrics(out)[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    other = tmp_path / "third"
    result = cli(
        "train", split, "--out", other, *FAST, "--ref-model", first / "model", "--max-steps", "1"
    )
    assert result.code == 0, result.err
    assert abs(metrics(other)[0]["rewards/margins"]) > 1e-3  # a reference other than the policy


# --------------------------------------------------------------------------- resume and DDP


def test_sigkill_then_resume_ends_with_bit_identical_weights(cli, split, tmp_path):
    args = [
        split,
        *FAST,
        "--batch-size",
        "2",
        "--max-steps",
        "40",
        "--shuffle",
        "--save-every",
        "4",
    ]
    assert cli("train", *args, "--out", tmp_path / "full").code == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefcurate", "train", *map(str, args), "--out", str(killed)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = killed / "checkpoints" / "step-8" / "state.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model").exists()
    result = cli("train", *args, "--out", killed, "--resume")
    assert result.code == 0, result.err
    assert (killed / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "full" / "model" / "model.safetensors"
    ).read_bytes()
    assert metrics(killed) == [
        {**row, **{k: metrics(killed)[i][k] for k in ("tokens_per_s", "pairs_per_s", "elapsed_s")}}
        for i, row in enumerate(metrics(tmp_path / "full"))
    ]  # every logged step, same values apart from timings
    run = json.loads((killed / "run.json").read_text())
    assert run["resumed_from"] >= 8


def test_checkpoint_holds_weights_optimizer_scheduler_rng_and_position(cli, split, tmp_path):
    out = tmp_path / "run"
    assert (
        cli("train", split, "--out", out, *FAST, "--max-steps", "3", "--save-every", "3").code == 0
    )
    step = out / "checkpoints" / "step-3"
    assert {p.name for p in step.iterdir()} == {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng-rank0.pt",
        "state.json",
    }
    state = json.loads((step / "state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (3, 0, 12)
    with safe_open(step / "model.safetensors", "pt") as handle:
        assert "model.embed_tokens.weight" in handle.keys()
    optimizer = torch.load(step / "optimizer.pt", weights_only=True)
    assert optimizer["state"][0]["step"] == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one_process(cli, split, tmp_path):
    """2 gloo ranks × batch 2 vs 1 process × batch 4, same global batch and order: the same loss
    curve within 1e-5, including the last step where rank 1 has no pair (37 = 9 × 4 + 1)."""
    args = [split, *FAST, "--shuffle"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun runs each rank on one thread
    try:
        assert cli("train", *args, "--batch-size", "4", "--out", tmp_path / "one").code == 0
    finally:
        torch.set_num_threads(threads)
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = (
        [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    done = subprocess.run(
        [
            *launcher,
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "prefcurate",
            "train",
            *map(str, args),
            "--batch-size",
            "2",
            "--out",
            str(tmp_path / "two"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 10
    assert_close(
        torch.tensor([r["loss"] for r in two]),
        torch.tensor([r["loss"] for r in one]),
        atol=1e-5,
        rtol=0,
    )
    assert [r["pairs/sft"] for r in two] == [r["pairs/sft"] for r in one]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


# --------------------------------------------------------------------------- errors


def test_missing_model_path_is_exit_2(cli, split, tmp_path):
    result = cli("train", split, "--out", tmp_path / "r", "--model", tmp_path / "nope")
    assert result.code == 2
    assert "model directory not found" in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_model_that_is_not_a_causal_lm_is_exit_2(cli, split, tmp_path):
    from safetensors.torch import save_file
    from transformers import T5Config

    model_dir = tmp_path / "t5"
    T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8).save_pretrained(model_dir)
    save_file({"shared.weight": torch.zeros(2, 8)}, model_dir / "model.safetensors")
    result = cli("train", split, "--out", tmp_path / "r", "--model", model_dir)
    assert result.code == 2
    assert "t5 is not a causal language model" in result.err
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("train", split, "--out", tmp_path / "r", "--model", empty)
    assert result.code == 2 and "no config.json" in result.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_exit_2(cli, split, tmp_path):
    result = cli("train", split, "--out", tmp_path / "r", *FAST, "--device", "cuda")
    assert result.code == 2 and "CUDA is not available" in result.err


def test_split_without_route_column_is_exit_2(cli, tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(5), drop=("route",))
    result = cli("train", split_dir, "--out", tmp_path / "r", *FAST)
    assert result.code == 2
    assert "missing column 'route'" in result.err and "train.parquet" in result.err


def test_nan_loss_stops_names_step_and_pairs_and_keeps_last_good_checkpoint(cli, split, tmp_path):
    out = tmp_path / "r"
    result = cli(
        "train",
        split,
        "--out",
        out,
        "--model",
        "tiny",
        "--max-length",
        "64",
        "--lr",
        "1e30",
        "--warmup-ratio",
        "0",
        "--save-every",
        "1",
    )
    assert result.code == 1
    error = result.err.splitlines()[-1]  # one line, after any progress lines
    assert error.startswith("error: non-finite loss at step") and "(pairs: " in error
    assert "please report" not in error
    step = int(error.split("at step ")[1].split()[0])
    last_good = out / "checkpoints" / f"step-{step - 1}"
    assert str(last_good) in result.err and (last_good / "state.json").is_file()
    assert not (out / "checkpoints" / f"step-{step}").exists()
    assert not (out / "model").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert len(metrics(out)) == step - 1


def test_resume_without_checkpoint_is_exit_2(cli, split, tmp_path):
    result = cli("train", split, "--out", tmp_path / "r", *FAST, "--resume")
    assert result.code == 2 and "no complete checkpoint" in result.err


def test_existing_run_dir_needs_force(cli, split, tmp_path):
    out = tmp_path / "r"
    assert cli("train", split, "--out", out, *FAST, "--max-steps", "1").code == 0
    before = (out / "model" / "model.safetensors").read_bytes()
    result = cli("train", split, "--out", out, *FAST, "--max-steps", "1", "--lr", "1e-2")
    assert result.code == 2 and "--force" in result.err
    assert (out / "model" / "model.safetensors").read_bytes() == before  # nothing overwritten
    assert cli("train", split, "--out", out, *FAST, "--max-steps", "1", "--force").code == 0


def test_resume_with_other_settings_is_exit_2(cli, split, tmp_path):
    out = tmp_path / "r"
    assert (
        cli("train", split, "--out", out, *FAST, "--max-steps", "2", "--save-every", "1").code == 0
    )
    result = cli(
        "train", split, "--out", out, *FAST, "--max-steps", "2", "--beta", "0.5", "--resume"
    )
    assert result.code == 2 and "beta" in result.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--loss", "ipo", "--label-smoothing", "0.1"), "--label-smoothing applies"),
        (("--loss", "kto"), "unknown --loss"),
        (("--label-smoothing", "0.5"), "[0, 0.5)"),
        (("--batch-size", "0"), "--batch-size 0 is out of range"),
        (("--max-length", "1"), "--max-length 1 is out of range"),
    ],
)
def test_bad_flags_are_exit_2(cli, split, tmp_path, flags, message):
    result = cli("train", split, "--out", tmp_path / "r", "--model", "tiny", *flags)
    assert result.code == 2 and message in result.err


# --------------------------------------------------------------------------- plot and imports


def test_plot_draws_the_curves(cli, split, tmp_path):
    out = tmp_path / "run"
    assert cli("train", split, "--out", out, *FAST, "--max-steps", "5").code == 0
    result = cli("plot", out)
    assert result.code == 0, result.err
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli("plot", out, out, "--out", tmp_path / "both.png").code == 0
    assert cli("plot", tmp_path / "nothing").code == 2


def test_curves_bridge_a_few_steps_without_a_route_and_break_across_a_phase():
    """A shuffled run misses sft pairs in a step now and then: one curve. A curriculum trains
    them after a long dpo phase: no line across it."""
    from prefcurate.reporting.runplots import segments

    with_sft = {1, 2, 4, 5, 40, 41}
    rows = [{"step": s, "loss/sft": float(s) if s in with_sft else None} for s in range(1, 42)]
    assert segments(rows, "loss/sft", max_gap=2) == [
        ([1, 2, 4, 5], [1.0, 2.0, 4.0, 5.0]),
        ([40, 41], [40.0, 41.0]),
    ]
    assert [steps for steps, _ in segments(rows, "loss/sft")] == [[1, 2], [4, 5], [40, 41]]


def test_moving_average_is_trailing():
    from prefcurate.reporting.runplots import moving_average

    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_importing_prefcurate_does_not_import_torch():
    code = (
        "import sys, prefcurate, prefcurate.cli, prefcurate.reporting.runplots; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_library_returns_a_result(split, tmp_path):
    result = train(
        TrainConfig(split, model="tiny", out=tmp_path / "lib", max_length=64, lr=1e-3, max_steps=2)
    )
    assert result.steps == 2 and result.world_size == 1 and result.device == "cpu"
    assert result.pairs["dpo"] + result.pairs["sft"] == 37
    assert result.final["step"] == 2
    assert result.to_dict()["model_dir"] == str(tmp_path / "lib" / "model")
