"""MixDPO inside TRL: the same method as ``prefcurate train``, in curriculum order, never plain DPO.

The tiny Llama (trainers.model) is trained both ways on the same split; the equality test holds
the tokens, the per-pair loss terms and every parameter's gradient of ``MixDPOTrainer`` to
prefcurate's own trainer within 1e-5 on a batch that mixes dpo and sft pairs, with a Llama of
hidden size 128, large enough for ``MixDPOTrainer`` to share each prompt (its default).
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from split_helpers import synthetic_rows, write_split  # noqa: E402
from terminal import DEPENDENCY_NOISE, run_in_terminal  # noqa: E402
from test_shared_prompt import small_model  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from prefcurate.base.errors import InputError  # noqa: E402
from prefcurate.integrations.trl import (  # noqa: E402
    MixDPOConfig,
    MixDPOTrainer,
    load_pairs,
)
from prefcurate.routing.presets import PAPER
from trainers.data import collate, read_split, tokenize_split  # noqa: E402
from trainers.logps import SequenceLogps, reference_logps  # noqa: E402
from trainers.model import load_model  # noqa: E402
from trainers.objective import Objective  # noqa: E402

#: 10 pairs, four of them sft (which rank last, after the six dpo pairs).
ROUTES = ["dpo", "sft", "dpo", "dpo", "sft", "dpo", "sft", "dpo", "dpo", "sft"]
#: The batch takes the pairs in this order, so that sft pairs sit between dpo pairs.
MIXED = [0, 6, 1, 7, 2, 8, 3, 9, 4, 5]
BETA, EPSILON = 0.1, 0.1


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")


def config(tmp_path: Path, **overrides) -> MixDPOConfig:
    """CPU, float32, no checkpoints or reports: a test-sized MixDPOConfig."""
    settings = {
        "output_dir": str(tmp_path / "out"),
        "beta": BETA,
        "label_smoothing": EPSILON,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "logging_steps": 1,
        "bf16": False,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "max_length": 256,
        "seed": 0,
    }
    settings.update(overrides)
    return MixDPOConfig(**settings)


#: A minimal chat template for the tiny byte-level tokenizer (it has none of its own).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory) -> Path:
    """A random Llama large enough to share prompts (trainers.shared_prompt.MIN_HIDDEN_SIZE)."""
    directory = tmp_path_factory.mktemp("small") / "model"
    small_model().save_pretrained(directory)
    load_model("tiny").tokenizer.save_pretrained(directory)
    return directory


def trainer_for(
    split_dir: Path,
    tmp_path: Path,
    *,
    ref: bool = True,
    chat_template=None,
    model: str = "tiny",
    **overrides,
):
    loaded = load_model(model, seed=0)
    loaded.tokenizer.chat_template = chat_template
    return MixDPOTrainer(
        loaded.model,
        ref_model=copy.deepcopy(loaded.model) if ref else None,
        args=config(tmp_path, **overrides),
        train_dataset=load_pairs(split_dir),
        processing_class=loaded.tokenizer,
    )


@pytest.mark.parametrize(
    ("layout", "variant"),
    [
        ("standard", "hard"),
        ("conversational", "hard"),
        ("standard", "soft"),
        ("conversational", "soft"),
        ("standard", "nll"),
        ("standard", "unshared"),
    ],
)
def test_per_pair_losses_and_gradients_equal_prefcurate_train(
    tmp_path, small_model_dir, layout, variant
):
    """One mixed batch (6 dpo + 4 sft pairs), cDPO with β = 0.1, ε = 0.1, at a policy that has
    moved away from its reference (one SGD step on the policy only, so the DPO terms are not all
    log 2): the same tokens, the same 10 loss terms and the same gradient of their mean for
    every parameter, within 1e-5. Conversations go through a chat template on both sides.
    MixDPOTrainer shares each prompt (its default; the policy's and the reference's forwards),
    prefcurate's objective here runs the ordinary batch.

    ``soft``: the split of ``route --soft 0.5`` (every pair mixes its two terms by its weight);
    ``nll``: DPO+NLL, ``nll_weight`` 0.1 on both sides; ``unshared``: ``shared_prompt=False``."""
    conversational = layout == "conversational"
    template = CHAT_TEMPLATE if conversational else None
    rows = synthetic_rows(10, seed=3, conversational=conversational)
    soft = 0.5 if variant == "soft" else None
    split_dir = write_split(tmp_path / "split", rows, routes=ROUTES, soft=soft)
    nll_weight = 0.1 if variant == "nll" else 0.0
    n = len(ROUTES)

    # prefcurate train's path: read → tokenise → reference pass → collate → objective
    ours = load_model(str(small_model_dir))
    ours.tokenizer.chat_template = template
    split = read_split(split_dir)
    assert split.conversational == conversational
    routes = split.frame["route"].to_list()  # rank order: the 4 sft pairs rank after the dpo ones
    pairs = tokenize_split(split, ours.tokenizer, max_length=256)
    assert pairs.chat_template == conversational
    module = SequenceLogps(ours.model)
    ref = reference_logps(
        module,
        pairs,
        batch_size=n,
        device=torch.device("cpu"),
        autocast=torch.autocast("cpu", enabled=False),
        pad_id=ours.tokenizer.pad_token_id,
    )
    moved = _nudge(ours.model)
    batch = collate(
        pairs,
        torch.tensor(MIXED),
        pad_id=ours.tokenizer.pad_token_id,
        ref_chosen=ref[0],
        ref_rejected=ref[1],
    )
    objective = Objective(
        loss="sigmoid", beta=BETA, label_smoothing=EPSILON, sft_weight=1.0, nll_weight=nll_weight
    )
    expected = objective(module, batch)
    if soft is not None:  # the weights are shares strictly between 0 and 1, not a hard switch
        assert ((batch.sft_mix > 0.01) & (batch.sft_mix < 0.99)).sum() >= 5
    ours.model.zero_grad()
    expected.loss.mean().backward()

    # MixDPOTrainer's path: TRL's dataset preparation → the routed collator → pair_terms
    trainer = trainer_for(
        split_dir,
        tmp_path,
        chat_template=template,
        gradient_checkpointing=False,
        nll_weight=nll_weight,
        shared_prompt=variant != "unshared",
        model=str(small_model_dir),
    )
    model = trainer.model
    _nudge(model, moved)
    examples = [trainer.train_dataset[i] for i in MIXED]
    assert [e["route"] for e in examples] == [routes[i] for i in MIXED]  # kept through TRL
    for i, example in zip(MIXED, examples, strict=True):  # the same tokens
        assert example["prompt_ids"] == pairs.prompt[i].tolist()
        assert example["chosen_ids"] == pairs.chosen[i].tolist()
        assert example["rejected_ids"] == pairs.rejected[i].tolist()
    inputs = trainer.data_collator(examples)
    n_dpo = int(pairs.is_dpo.sum())
    assert inputs["input_ids"].shape[0] == n + n_dpo  # no rejected row without a preference term
    assert_close(inputs["sft_mix"], batch.sft_mix, atol=0, rtol=0)  # one rule, both engines
    model.train()
    got = trainer.pair_terms(model, inputs)
    shared = trainer._layout(model, inputs)
    assert (shared is None) == (variant == "unshared")
    if shared is not None:  # both models share prompts, and the batch computes fewer positions
        assert trainer.shared_prompt_off == {}
        assert shared.tokens < inputs["input_ids"].numel()
    model.zero_grad()
    got.loss.mean().backward()

    assert_close(got.loss.detach(), expected.loss.detach(), atol=1e-5, rtol=0)
    assert got.is_dpo.tolist() == pairs.is_dpo[MIXED].tolist()
    dpo_terms = got.loss.detach()[got.is_dpo]
    assert (dpo_terms - math.log(2)).abs().max() > 1e-3  # the preference terms are not trivial
    sft = ~got.is_dpo
    assert_close(got.loss.detach()[sft], got.chosen_nll[sft], atol=0, rtol=0)  # SFT = NLL
    if variant == "hard":
        assert got.is_dpo.tolist() == [routes[i] == "dpo" for i in MIXED]
    theirs = dict(model.named_parameters())
    for name, param in ours.model.named_parameters():
        assert_close(theirs[name].grad, param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_precomputed_reference_is_the_same_with_the_prompt_shared(tmp_path, small_model_dir):
    """``precompute_ref_log_probs=True``: the reference pass before training gives each dpo
    pair's log-probs within 1e-5 (of their size: fp32 sums of about 170) of the unshared pass,
    and NaN for sft pairs, which need none."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(10, seed=3), routes=ROUTES)
    columns = {}
    for shared in (True, False):
        trainer = trainer_for(split_dir, tmp_path / str(shared), ref=False,
                              precompute_ref_log_probs=True, shared_prompt=shared,
                              model=str(small_model_dir))  # fmt: skip
        assert trainer.shared_prompt_off == ({} if shared else None)
        data = trainer.train_dataset
        columns[shared] = [
            torch.tensor(data[k]) for k in ("ref_chosen_logps", "ref_rejected_logps")
        ]
    dpo = torch.tensor([route == "dpo" for route in trainer.train_dataset["route"]])
    for got, want in zip(columns[True], columns[False], strict=True):
        assert want[dpo].isfinite().all() and want[~dpo].isnan().all()
        assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)


def _nudge(model: torch.nn.Module, grads: dict[str, torch.Tensor] | None = None):
    """Move the policy one SGD step along a fixed direction; return that direction."""
    if grads is None:
        generator = torch.Generator().manual_seed(7)
        grads = {
            n: torch.randn(p.shape, generator=generator) * 0.02 for n, p in model.named_parameters()
        }
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(grads[name])
    return grads


def test_a_run_reads_the_pairs_in_curriculum_order(tmp_path):
    """12 pairs, batch 4, one epoch: step k trains ranks 4k..4k+3, i.e. the split's pair ids in
    its order (largest margin first, the sft pairs last); shuffling happens only when asked."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(12, seed=1), threshold=1.0)
    frame = read_split(split_dir).frame
    seen = _pair_ids_per_step(split_dir, tmp_path / "seq")
    ids = frame["pair_id"].to_list()
    assert seen == [ids[0:4], ids[4:8], ids[8:12]]
    routes = frame["route"].to_list()
    assert routes[-1] == "sft" and "dpo" in routes  # mixed, sft last
    shuffled = _pair_ids_per_step(split_dir, tmp_path / "rand", train_sampling_strategy="random")
    assert sorted(sum(shuffled, [])) == sorted(ids)
    assert shuffled != seen


def _pair_ids_per_step(split_dir: Path, tmp_path: Path, **overrides) -> list[list[str]]:
    trainer = trainer_for(split_dir, tmp_path, **overrides)
    ids = dict(zip(trainer.train_dataset["rank"], trainer.train_dataset["pair_id"], strict=True))
    seen: list[list[str]] = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        seen.append([ids[int(r)] for r in inputs["rank"]])
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    return seen


def test_logs_route_losses_and_rewards_under_trls_names(tmp_path):
    """The metrics reach the callbacks that report_to's integrations (TensorBoard, W&B) are."""
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        def __init__(self):
            self.logs: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    split_dir = write_split(tmp_path / "split", synthetic_rows(12, seed=1), threshold=1.0)
    trainer = trainer_for(split_dir, tmp_path)
    reporter = Reporter()
    trainer.add_callback(reporter)
    trainer.train()
    steps = [r for r in trainer.state.log_history if "loss" in r]
    reported = [r for r in reporter.logs if "loss" in r]
    assert [r["loss/dpo"] for r in reported if "loss/dpo" in r] == [
        r["loss/dpo"] for r in steps if "loss/dpo" in r
    ]
    assert any("loss/sft" in r for r in reported)
    assert len(steps) == 3
    first = steps[0]
    assert first["loss/dpo"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for record in steps:
        d, s = record["pairs/dpo"], record["pairs/sft"]
        terms = d * record.get("loss/dpo", 0.0) + s * record.get("loss/sft", 0.0)
        assert record["loss"] == pytest.approx(terms / (d + s), rel=1e-5)
        assert ("loss/sft" in record) == (s > 0)
        assert ("rewards/chosen" in record) == (d > 0)


def _two_ties_last(tmp_path: Path, **plan: str) -> Path:
    """40 pairs, the first two ties (margin 0, routed to sft, last in the curriculum), the rest
    margins ≥ 1."""
    rows = synthetic_rows(40, seed=2)
    for i, row in enumerate(rows):
        row["score_rejected"] = row["score_chosen"] - (0.0 if i < 2 else 1.0 + (i % 3))
    return write_split(tmp_path / ("split-" + "-".join(plan.values())), rows, **plan)


def test_a_starved_sft_route_is_warned_with_the_fix(tmp_path, caplog):
    """TRL's default linear decay without warmup, 2 pairs per step: 20 steps, the factor of step
    s is (20 − s)/20. The two sft pairs are step 19's: 1/20 = 5% of the peak; the dpo pairs
    average steps 0–18: (20 + 19 + … + 2) / 19 / 20 = 209/380 = 55%. phased_schedule gives the
    sft phase (step 19 alone) its own schedule: 100%, and the dpo phase cosine over 19 steps:
    ½ + ½·(Σ cos(πs/19))/19 = ½ + 1/38 = 0.526316."""
    split_dir = _two_ties_last(tmp_path)
    trainer = trainer_for(split_dir, tmp_path / "linear", per_device_train_batch_size=2)
    with caplog.at_level("INFO", logger="prefcurate"):
        trainer.create_optimizer_and_scheduler(num_training_steps=20)
    assert trainer.route_lr.shares == pytest.approx({"dpo": 0.55, "sft": 0.05})
    said = "mean learning rate, as a share of the peak: dpo 55.0%, sft 5.0% (TRL's linear schedule)"
    assert said in [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    (warning,) = warnings
    assert warning.startswith("the sft pairs (2 pair visits) train at 5.0% of the peak")
    assert "--placement spread" in warning and "phased_schedule=True" in warning
    phased = trainer_for(
        split_dir, tmp_path / "phased", per_device_train_batch_size=2, phased_schedule=True
    )
    caplog.clear()
    with caplog.at_level("INFO", logger="prefcurate"):
        phased.create_optimizer_and_scheduler(num_training_steps=20)
    assert phased.route_lr.shares == pytest.approx({"dpo": 0.5 + 1 / 38, "sft": 1.0})
    assert any(r.getMessage().endswith("(phased schedule)") for r in caplog.records)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_phased_schedule_needs_the_sft_pairs_last(tmp_path):
    spread = _two_ties_last(tmp_path, placement="spread")
    trainer = trainer_for(
        spread, tmp_path / "t", per_device_train_batch_size=2, phased_schedule=True
    )
    with pytest.raises(InputError, match="phased_schedule .* holds a dpo pair"):
        trainer.create_optimizer_and_scheduler(num_training_steps=20)


def test_logs_each_routes_share_of_the_peak_rate_so_far(tmp_path):
    """The running shares reach TRL's logs at every logging step and end at the run's shares."""
    split_dir = _two_ties_last(tmp_path)
    trainer = trainer_for(split_dir, tmp_path, per_device_train_batch_size=8)
    trainer.train()
    steps = [r for r in trainer.state.log_history if "loss" in r]
    assert len(steps) == 5
    assert [r["lr_share/dpo"] for r in steps] == pytest.approx(
        [lr["dpo"] for lr in trainer.route_lr.running]
    )
    assert "lr_share/sft" not in steps[0] and steps[-1]["lr_share/sft"] == pytest.approx(
        trainer.route_lr.shares["sft"]
    )


def test_a_split_without_route_is_an_error_never_plain_dpo(tmp_path):
    split_dir = write_split(tmp_path / "split", synthetic_rows(6, seed=1))
    pairs = load_pairs(split_dir).remove_columns("route")
    loaded = load_model("tiny", seed=0)
    with pytest.raises(InputError, match="no 'route' column"):
        MixDPOTrainer(
            loaded.model,
            args=config(tmp_path),
            train_dataset=pairs,
            processing_class=loaded.tokenizer,
        )
    bad = load_pairs(split_dir).map(lambda e: {"route": "maybe"})
    with pytest.raises(InputError, match="route 'maybe'"):
        MixDPOTrainer(
            loaded.model,
            args=config(tmp_path),
            train_dataset=bad,
            processing_class=loaded.tokenizer,
        )


def test_flipping_a_route_changes_only_that_pairs_term(tmp_path):
    """At the reference policy every DPO term is log 2; routing pair 2 to sft turns its term
    into its chosen response's NLL and leaves the other three unchanged."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(4, seed=1), routes=["dpo"] * 4)
    trainer = trainer_for(split_dir, tmp_path)
    examples = [trainer.train_dataset[i] for i in range(4)]
    with torch.no_grad():
        before = trainer.pair_terms(trainer.model, trainer.data_collator(examples))
        examples[2] = {**examples[2], "route": "sft"}
        after = trainer.pair_terms(trainer.model, trainer.data_collator(examples))
    assert_close(before.loss, torch.full((4,), math.log(2)), atol=1e-6, rtol=0)
    assert after.loss[2].item() == pytest.approx(before.chosen_nll[2].item(), abs=1e-6)
    assert after.loss[2].item() > 3.0
    assert_close(after.loss[[0, 1, 3]], before.loss[[0, 1, 3]], atol=1e-6, rtol=0)


def test_a_batch_that_lost_its_route_is_an_error(tmp_path):
    """A user's own collator that drops the route cannot silently train plain DPO."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(4, seed=1))
    trainer = trainer_for(split_dir, tmp_path)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    del inputs["is_dpo"]
    with pytest.raises(InputError, match="no route"):
        trainer.compute_loss(trainer.model, inputs)


def test_load_pairs_reads_the_held_out_pairs_of_the_export(uf1k, tmp_path):
    """load_pairs(dir, split="eval") and the export's mixdpo_eval.jsonl are the same pairs."""
    from prefcurate.data.io import open_pairs
    from prefcurate.routing.plan import plan_routes
    from prefcurate.routing.writer import write_route

    plan = plan_routes(open_pairs(uf1k), threshold=0.5, eval_fraction=0.1)
    write_route(plan, tmp_path / "uf", export="trl-mixdpo")
    held = load_pairs(tmp_path / "uf", split="eval")
    exported = load_pairs(tmp_path / "uf" / "mixdpo_eval.jsonl")
    assert held["pair_id"] == exported["pair_id"] and len(held) == 100
    assert held["route"] == exported["route"] and held["rank"] == list(range(100))


def test_the_config_picks_bf16_from_the_machine_and_raises_no_futurewarning(tmp_path):
    """TRL defaults bf16 to True, which transformers refuses without a bf16 GPU; MixDPOConfig
    asks the device when neither bf16 nor fp16 is given (an explicit bf16=True still asks for
    it), and passes TRL's activation checkpointing under transformers' current name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = MixDPOConfig(str(tmp_path / "o"))
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    off = MixDPOConfig(str(tmp_path / "o"), gradient_checkpointing=False, use_cpu=True)
    assert off.activation_checkpointing is False and off.bf16 is False
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16"):
            MixDPOConfig(str(tmp_path / "o"), bf16=True)


def test_a_plain_dpo_config_is_refused(tmp_path):
    from trl import DPOConfig

    split_dir = write_split(tmp_path / "split", synthetic_rows(4, seed=1))
    loaded = load_model("tiny", seed=0)
    with pytest.raises(InputError, match="not a MixDPOConfig"):
        MixDPOTrainer(
            loaded.model,
            args=DPOConfig(str(tmp_path / "o"), bf16=False, use_cpu=True),
            train_dataset=load_pairs(split_dir),
            processing_class=loaded.tokenizer,
        )
    with pytest.raises(ValueError, match="one of sigmoid, robust, hinge"):
        config(tmp_path, loss_type=["ipo"])


@pytest.mark.slow
def test_lora_through_peft_config_trains_only_the_adapter(tmp_path):
    """LoRA via TRL's peft_config: the reference is the base model (adapter off), so the first
    step's DPO loss is log 2; after training only lora_ weights changed."""
    peft = pytest.importorskip("peft")
    split_dir = write_split(tmp_path / "split", synthetic_rows(8, seed=1), threshold=1.0)
    loaded = load_model("tiny", seed=0)
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = MixDPOTrainer(
        loaded.model,
        args=config(tmp_path, learning_rate=1e-2),
        train_dataset=load_pairs(split_dir),
        processing_class=loaded.tokenizer,
        peft_config=lora,
    )
    assert trainer.ref_model is None
    trainer.train()
    steps = [r for r in trainer.state.log_history if "loss" in r]
    assert steps[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert steps[-1]["rewards/margins"] != 0.0
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" in n]
    assert changed
    for name, param in trainer.model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param.detach(), base[key]), name


@pytest.mark.slow
def test_precomputed_reference_gives_the_same_losses(tmp_path):
    """precompute_ref_log_probs stores NaN for sft pairs and the same values for dpo pairs."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(8, seed=1), threshold=1.0)
    live = trainer_for(split_dir, tmp_path / "live")
    live.train()
    pre = trainer_for(split_dir, tmp_path / "pre", ref=False, precompute_ref_log_probs=True)
    stored = pre.train_dataset["ref_chosen_logps"]
    routes = pre.train_dataset["route"]
    assert [math.isnan(v) for v in stored] == [r == "sft" for r in routes]
    pre.train()
    losses = [[r["loss"] for r in t.state.log_history if "loss" in r] for t in (live, pre)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.slow
def test_accelerate_two_cpu_processes_match_one_process(tmp_path):
    """accelerate launch, 2 gloo processes × batch 2 against 1 process × batch 4 on 12 pairs:
    the same loss curve within 1e-5 and the curriculum kept across processes (step k trains
    ranks 4k..4k+3: process 0 the first two, process 1 the next two). accelerate's ``--cpu``
    launcher needs MPI for several processes; ``--multi_gpu`` starts them through torchrun,
    which on a machine without GPUs runs them on CPU with gloo."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(12, seed=1), threshold=1.0)
    worker = str(Path(__file__).with_name("trl_launch_worker.py"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TQDM_DISABLE="1")
    accelerate = Path(sys.executable).with_name("accelerate")
    runs = {
        "one": [sys.executable, worker, str(split_dir), str(tmp_path / "one"), "4"],
        "two": [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes=2",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            f"--main_process_port={_free_port()}",
            worker,
            str(split_dir),
            str(tmp_path / "two"),
            "2",
        ],
    }
    for argv in runs.values():
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "log.json").read_text())
    two = json.loads((tmp_path / "two" / "log.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["distributed_type"] == "DistributedType.MULTI_CPU"
    losses = [[r["loss"] for r in run["log"] if "loss" in r] for run in (one, two)]
    assert len(losses[0]) == 3
    assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-5, rtol=0)
    seen = [json.loads((tmp_path / "two" / f"seen-{p}.json").read_text()) for p in (0, 1)]
    assert seen == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [10, 11]]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docs_example(folder: Path, uf1k: Path, cli) -> str:
    """docs/integrations.md, section TRL: its bash block's prefcurate commands run verbatim in
    ``folder`` on the first 32 UltraFeedback pairs, and the tiny model saved as the local model
    directory the script names; returns the script, verbatim."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "integrations.md").read_text()
    section = doc.split("## TRL: `MixDPOTrainer`")[1].split("\n## ")[0]
    lines = uf1k.read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "ultrafeedback.jsonl").write_text("".join(lines[:32]), encoding="utf-8")
    commands = [c for c in _code_block(section, "bash").splitlines() if c.startswith("prefcurate ")]
    assert len(commands) == 2 and "python train_mixdpo.py" in _code_block(section, "bash")
    for line in commands:
        result = cli(*shlex.split(line.split("#")[0])[1:])
        assert result.code == 0, (line, result.err)
    tiny = load_model("tiny", seed=0)
    tiny.model.save_pretrained(folder / "models/Qwen2.5-0.5B-Instruct")
    tiny.tokenizer.save_pretrained(folder / "models/Qwen2.5-0.5B-Instruct")
    return _code_block(section, "python")


def test_the_trl_example_of_the_docs_runs_as_written(cli, uf1k, tmp_path, monkeypatch):
    """The docs' commands and script, verbatim, on a machine without a GPU (bf16 is chosen from
    what it has): both routes train, the held-out pairs are evaluated, the model is saved.
    (TRL drops the pairs whose prompt alone fills max_length, 1024 byte tokens of the tiny
    model: 7 of the 30 training pairs, none of the 2 held out.)"""
    monkeypatch.chdir(tmp_path)
    script = docs_example(tmp_path, uf1k, cli)
    assert not torch.cuda.is_available()  # the case the docs' text used to fail on
    namespace: dict = {}
    exec(compile(script, "train_mixdpo.py", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.args.bf16 is False and trainer.args.use_cpu is False
    assert (trainer.args.beta, trainer.args.label_smoothing) == (PAPER.beta, PAPER.label_smoothing)
    assert trainer.state.global_step == 3  # 23 pairs, batch 8
    trained = trainer._metrics["train"]  # the steps' figures (logging_steps 10 > 3 steps)
    assert sum(trained["pairs/dpo"]) > 0 and sum(trained["pairs/sft"]) > 0
    evaluated = next(r for r in trainer.state.log_history if "eval_loss" in r)
    assert evaluated["eval_pairs/dpo"] + evaluated["eval_pairs/sft"] == 2  # 5% of 30 held out
    assert (tmp_path / "uf-mixdpo" / "model.safetensors").is_file()


#: The Trainer's own progress bar, as tqdm leaves it: "100%|████| 3/3 [00:15<00:00, 5.2s/it]".
TRAINING_BAR = re.compile(r"\s*100%\|[█ ]*\| (\d+)/\1 \[[^\]]+\]")


def test_the_trl_example_shows_nothing_from_its_dependencies(cli, uf1k, tmp_path, monkeypatch):
    """`python train_mixdpo.py` on a terminal, as a user runs it: the screen holds the training's
    own output, TRL's logged metrics and the Trainer's progress bar, and nothing else (no torchao
    import noise, no warning, no loading, split or saving bars)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train_mixdpo.py").write_text(docs_example(tmp_path, uf1k, cli), encoding="utf-8")
    run = run_in_terminal(
        ["train_mixdpo.py"],
        program=["python"],
        columns=200,
        cwd=tmp_path,
        # as a user's shell has it: no TQDM_DISABLE (the fixture above sets it for the rest)
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TQDM_DISABLE": None},
        timeout=600,
    ).check()
    for sign in DEPENDENCY_NOISE:
        assert sign not in run.screen, (sign, run.screen)
    lines = run.screen.splitlines()
    bars = [line for line in lines if TRAINING_BAR.fullmatch(line)]
    assert len(bars) == 1 and TRAINING_BAR.fullmatch(bars[0]).group(1) == "3", run.screen
    rest = "".join(line for line in lines if line not in bars)  # the dicts, wrapped at 200
    logged = [ast.literal_eval(d) for d in re.findall(r"\{[^{}]*\}", rest)]
    assert re.sub(r"\{[^{}]*\}", "", rest).strip() == ""  # nothing but the logged dicts
    assert any("eval_loss" in r for r in logged) and any("train_loss" in r for r in logged)
    assert (tmp_path / "uf-mixdpo" / "model.safetensors").is_file()


def _code_block(markdown: str, language: str) -> str:
    return markdown.split(f"```{language}\n")[1].split("```")[0]
