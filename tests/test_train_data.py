"""The split contract, tokenisation, truncation, collation and the curriculum order."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from split_helpers import synthetic_rows, write_split
from transformers import ByT5Tokenizer

from prefcurate.base.errors import InputError
from trainers.data import (
    Curriculum,
    TokenizedPairs,
    collate,
    leading_special_tokens,
    read_split,
    render_messages,
    render_response,
    tokenize_split,
    truncate_pair,
)

EOS = 1  # ByT5: pad 0, eos 1, unk 2; byte b is token b + 3


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


def one_pair_split(tmp_path, prompt, chosen, rejected, route="dpo"):
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return write_split(
        tmp_path / "s", [{**row, "score_chosen": 9.0, "score_rejected": 1.0}], routes=[route]
    )


# --------------------------------------------------------------------------- the contract


def test_read_split_orders_by_rank(tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(20))
    path = split_dir / "train.parquet"
    pl.read_parquet(path).reverse().write_parquet(path)  # rows out of rank order on disk
    split = read_split(split_dir)
    assert split.frame["rank"].to_list() == list(range(20))
    assert not split.conversational
    assert split.summary()["routes"] == dict(split.frame["route"].value_counts().rows())


def test_split_without_route_column_is_an_error_naming_column_and_file(tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(5), drop=("route",))
    with pytest.raises(InputError) as err:
        read_split(split_dir)
    assert "'route'" in str(err.value)
    assert str(split_dir / "train.parquet") in str(err.value)


def test_split_without_plan_is_an_error(tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(5))
    (split_dir / "plan.json").unlink()
    with pytest.raises(InputError, match="plan.json"):
        read_split(split_dir)


def test_unknown_route_value_names_the_pair(tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(3), routes=["dpo", "sft", "kto"])
    with pytest.raises(InputError, match="'kto' of pair"):
        read_split(split_dir)


def test_rank_with_gaps_is_an_error(tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(4))
    path = split_dir / "train.parquet"
    pl.read_parquet(path).with_columns(pl.col("rank") * 2).write_parquet(path)
    with pytest.raises(InputError, match="rank"):
        read_split(split_dir)


def test_mixed_text_kinds_are_an_error(tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(3, conversational=True))
    path = split_dir / "train.parquet"
    pl.read_parquet(path).with_columns(pl.lit("x").alias("prompt")).write_parquet(path)
    with pytest.raises(InputError, match="all be strings or all message lists"):
        read_split(split_dir)


# --------------------------------------------------------------------------- tokenising


def test_plain_text_is_prompt_response_eos(tmp_path):
    pairs = tokenize_split(
        read_split(one_pair_split(tmp_path, "ab", "cd", "e")), ByT5Tokenizer(), max_length=64
    )
    assert pairs.prompt[0].tolist() == byte_ids("ab")
    assert pairs.chosen[0].tolist() == byte_ids("cd") + [EOS]
    assert pairs.rejected[0].tolist() == byte_ids("e") + [EOS]
    assert pairs.is_dpo.tolist() == [True]


def test_leading_special_tokens_are_the_tokenizers_own():
    class WithBos:
        """A tokenizer that, like Llama's, puts BOS (id 7) before every text."""

        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for c in text]
            return {"input_ids": [7, *ids] if add_special_tokens else ids}

    assert leading_special_tokens(WithBos()) == [7]
    assert leading_special_tokens(ByT5Tokenizer()) == []  # ByT5 only appends EOS


def test_conversational_data_uses_the_chat_template(tmp_path):
    tokenizer = ByT5Tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    user = [{"role": "user", "content": "hi"}]
    split_dir = one_pair_split(
        tmp_path,
        user,
        [{"role": "assistant", "content": "yo"}],
        [{"role": "assistant", "content": "no"}],
    )
    pairs = tokenize_split(read_split(split_dir), tokenizer, max_length=64)
    assert pairs.chat_template
    assert pairs.prompt[0].tolist() == byte_ids("<user>hi|<assistant>")
    assert pairs.chosen[0].tolist() == byte_ids("yo|")  # the template's own end, no extra EOS
    assert pairs.rejected[0].tolist() == byte_ids("no|")


def test_conversational_data_without_template_is_rendered_as_text(tmp_path):
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chosen = [{"role": "assistant", "content": "yo"}]
    assert render_messages(prompt) == "system: be brief\n\nuser: hi\n\nassistant: "
    assert render_response(chosen) == "yo"
    split_dir = one_pair_split(tmp_path, prompt, chosen, [{"role": "assistant", "content": "x"}])
    pairs = tokenize_split(read_split(split_dir), ByT5Tokenizer(), max_length=128)
    assert not pairs.chat_template
    assert pairs.prompt[0].tolist() == byte_ids(render_messages(prompt))
    assert pairs.chosen[0].tolist() == byte_ids("yo") + [EOS]


def test_truncation_keeps_the_starts():
    p, c, r = list(range(100)), list(range(200, 260)), list(range(300, 340))
    # prompt 100 + longest 60 > 64: prompt keeps max(64 − 60, 32) = 32, responses the other 32
    tp, tc, tr = truncate_pair(p, c, r, 64)
    assert (tp, tc, tr) == (p[:32], c[:32], r[:32])
    # a short prompt keeps everything and leaves the rest to the responses
    tp, tc, tr = truncate_pair(p[:10], c, r, 64)
    assert (tp, tc, tr) == (p[:10], c[:54], r)
    # short responses: the prompt keeps 64 − 20 = 44
    tp, tc, tr = truncate_pair(p, c[:20], r[:5], 64)
    assert (tp, tc, tr) == (p[:44], c[:20], r[:5])
    assert truncate_pair(p[:3], c[:3], r[:3], 64) == (p[:3], c[:3], r[:3])


def test_pairs_identical_after_truncation_become_sft(tmp_path):
    rows = [
        {
            "prompt": "p",
            "chosen": "same start, then A",
            "rejected": "same start, then B",
            "score_chosen": 9.0,
            "score_rejected": 1.0,
        },
        {
            "prompt": "q",
            "chosen": "different",
            "rejected": "responses",
            "score_chosen": 8.0,
            "score_rejected": 1.0,
        },
    ]
    split = read_split(write_split(tmp_path / "s", rows))
    long = tokenize_split(split, ByT5Tokenizer(), max_length=64)
    assert long.identical == 0 and long.is_dpo.tolist() == [True, True]
    short = tokenize_split(split, ByT5Tokenizer(), max_length=12)  # "p" + 11 bytes of each
    assert short.identical == 1
    assert short.is_dpo.tolist() == [False, True]
    assert short.counts() == {
        "pairs": 2,
        "dpo": 1,
        "sft": 1,
        "truncated": 1,
        "identical_after_truncation": 1,
    }


def test_token_cache_round_trip_and_digest(tmp_path):
    split = read_split(write_split(tmp_path / "s", synthetic_rows(6)))
    pairs = tokenize_split(split, ByT5Tokenizer(), max_length=40)
    meta = {
        "pair_ids": pairs.pair_ids,
        "truncated": pairs.truncated,
        "identical": pairs.identical,
        "chat_template": False,
    }
    again = TokenizedPairs.from_tensors(pairs.to_tensors(), meta)
    assert again.digest() == pairs.digest()
    assert tokenize_split(split, ByT5Tokenizer(), max_length=20).digest() != pairs.digest()


def _first_rows(path, n, tmp_path):
    head = tmp_path / "head.jsonl"
    head.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    return head


def test_real_ultrafeedback_tokenises(uf1k, tmp_path):
    split = read_split(write_split(tmp_path / "s", _first_rows(uf1k, 200, tmp_path)))
    pairs = tokenize_split(split, ByT5Tokenizer(), max_length=256)
    lengths = pairs.prompt.lengths() + torch.maximum(
        pairs.chosen.lengths(), pairs.rejected.lengths()
    )
    assert int(lengths.max()) <= 256
    assert pairs.counts()["sft"] == int((split.frame["route"] == "sft").sum()) + pairs.identical


# --------------------------------------------------------------------------- batches


def test_collate_puts_chosen_rows_then_rejected_rows_of_dpo_pairs(tmp_path):
    rows = [
        {
            "prompt": "ab",
            "chosen": "c",
            "rejected": "dd",
            "score_chosen": 9.0,
            "score_rejected": 1.0,
        },
        {
            "prompt": "e",
            "chosen": "fgh",
            "rejected": "i",
            "score_chosen": 9.0,
            "score_rejected": 9.0,
        },
    ]
    split = read_split(write_split(tmp_path / "s", rows))  # pair 0 dpo, pair 1 sft (margin 0)
    pairs = tokenize_split(split, ByT5Tokenizer(), max_length=64)
    ref = torch.tensor([-1.0, float("nan")])
    batch = collate(pairs, torch.tensor([0, 1]), pad_id=0, ref_chosen=ref, ref_rejected=ref - 1)
    assert batch.is_dpo.tolist() == [True, False]
    # rows: chosen of pair 0, chosen of pair 1, rejected of pair 0; width = longest (e+fgh+EOS)
    assert batch.input_ids.tolist() == [
        byte_ids("abc") + [EOS, 0],
        byte_ids("efgh") + [EOS],
        byte_ids("abdd") + [EOS],
    ]
    assert batch.attention_mask.sum(1).tolist() == [4, 5, 5]
    assert batch.response_mask.tolist() == [
        [False, False, True, True, False],
        [False, True, True, True, True],
        [False, False, True, True, True],
    ]
    assert batch.ref_chosen[0] == -1.0 and batch.ref_rejected[0] == -2.0


# --------------------------------------------------------------------------- order


def test_sequential_order_follows_rank():
    curriculum = Curriculum(n_pairs=10, global_batch=4)
    assert curriculum.total_steps == 3
    assert [curriculum.step_pairs(s).tolist() for s in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]


def test_shuffle_is_seeded_and_fresh_each_epoch():
    a = Curriculum(n_pairs=50, global_batch=5, epochs=2, shuffle=True, seed=3)
    b = Curriculum(n_pairs=50, global_batch=5, epochs=2, shuffle=True, seed=3)
    assert torch.equal(a.epoch_order(0), b.epoch_order(0))
    assert not torch.equal(a.epoch_order(0), a.epoch_order(1))
    assert sorted(a.epoch_order(1).tolist()) == list(range(50))
    assert not torch.equal(a.epoch_order(0), Curriculum(50, 5, shuffle=True, seed=4).epoch_order(0))


def test_epochs_and_max_steps():
    assert Curriculum(n_pairs=10, global_batch=4, epochs=3).total_steps == 9
    assert Curriculum(n_pairs=10, global_batch=4, epochs=3, max_steps=5).total_steps == 5
    # step 4 is the second step of epoch 1
    assert Curriculum(n_pairs=10, global_batch=4, epochs=3).step_pairs(4).tolist() == [4, 5, 6, 7]


def test_ranks_take_strided_shares_of_each_step():
    """2 ranks × batch 2 × accum 2 = global batch 8: rank 0 takes positions 0, 2, 4, 6."""
    curriculum = Curriculum(n_pairs=20, global_batch=8)
    shares = [
        curriculum.micro_batches(1, rank=r, world_size=2, batch_size=2, grad_accum=2)
        for r in range(2)
    ]
    assert [m.tolist() for m in shares[0]] == [[8, 10], [12, 14]]
    assert [m.tolist() for m in shares[1]] == [[9, 11], [13, 15]]
    # the last step holds 4 pairs: each rank gets one full micro-batch and one empty one
    last = curriculum.micro_batches(2, rank=1, world_size=2, batch_size=2, grad_accum=2)
    assert [m.tolist() for m in last] == [[17, 19], []]


def test_plan_json_is_not_needed_beyond_reading(tmp_path):
    split_dir = write_split(tmp_path / "s", synthetic_rows(3))
    plan = json.loads((split_dir / "plan.json").read_text())
    assert read_split(split_dir).plan == plan
