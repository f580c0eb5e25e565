"""Loading: every format and layout into the canonical frame, and every bad input as one line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import zstandard

from prefcurate.base.errors import InputError
from prefcurate.data.io import PAIR_COLUMNS, open_pairs, read_pairs
from prefcurate.data.schema import ColumnMap, Layout

ROWS = [
    {
        "prompt": f"prompt {i}",
        "chosen": f"good {i}",
        "rejected": f"bad {i}",
        "score_chosen": 5.0 + i * 0.5,
        "score_rejected": 5.0,
    }
    for i in range(6)
]


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text(jsonl_text(rows))
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --------------------------------------------------------------------------------------------------
# formats: the same six pairs stored every way a user might store them


def _jsonl(tmp: Path) -> str:
    return str(write_jsonl(tmp / "pairs.jsonl", ROWS))


def _jsonl_gz(tmp: Path) -> str:
    path = tmp / "pairs.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_text(ROWS).encode()))
    return str(path)


def _jsonl_zst(tmp: Path) -> str:
    path = tmp / "pairs.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(jsonl_text(ROWS).encode()))
    return str(path)


def _json_array(tmp: Path) -> str:
    path = tmp / "pairs.json"
    path.write_text(json.dumps(ROWS, indent=1))
    return str(path)


def _parquet(tmp: Path) -> str:
    path = tmp / "pairs.parquet"
    pl.DataFrame(ROWS).write_parquet(path)
    return str(path)


def _parquet_dir(tmp: Path) -> str:
    (tmp / "shards").mkdir()
    pl.DataFrame(ROWS[:4]).write_parquet(tmp / "shards" / "part-0.parquet")
    pl.DataFrame(ROWS[4:]).write_parquet(tmp / "shards" / "part-1.parquet")
    return str(tmp / "shards")


def _parquet_glob(tmp: Path) -> str:
    _parquet_dir(tmp)
    return str(tmp / "shards" / "part-*.parquet")


def _hf_repo(tmp: Path) -> str:
    """A Hugging Face dataset repository: data/<split>-NNNNN-of-NNNNN.parquet plus a README."""
    data = tmp / "repo" / "data"
    data.mkdir(parents=True)
    pl.DataFrame(ROWS[:3]).write_parquet(data / "train-00000-of-00002.parquet")
    pl.DataFrame(ROWS[3:]).write_parquet(data / "train-00001-of-00002.parquet")
    pl.DataFrame(ROWS[:1]).write_parquet(data / "test-00000-of-00001.parquet")
    (tmp / "repo" / "README.md").write_text("# a dataset card\n")
    return str(tmp / "repo")


def _csv(tmp: Path) -> str:
    path = tmp / "pairs.csv"
    pl.DataFrame(ROWS).write_csv(path)
    return str(path)


def _tsv(tmp: Path) -> str:
    path = tmp / "pairs.tsv"
    pl.DataFrame(ROWS).write_csv(path, separator="\t")
    return str(path)


def _save_to_disk(tmp: Path) -> str:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp / "ds"))
    return str(tmp / "ds")


def _save_to_disk_dict(tmp: Path) -> str:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp / "dd"))
    return str(tmp / "dd")


FORMATS = {
    "jsonl": (_jsonl, "jsonl"),
    "jsonl.gz": (_jsonl_gz, "jsonl"),
    "jsonl.zst": (_jsonl_zst, "jsonl"),
    "json array": (_json_array, "json"),
    "parquet": (_parquet, "parquet"),
    "parquet dir": (_parquet_dir, "parquet"),
    "parquet glob": (_parquet_glob, "parquet"),
    "hf sharded repo": (_hf_repo, "parquet"),
    "csv": (_csv, "csv"),
    "tsv": (_tsv, "tsv"),
    "datasets save_to_disk": (_save_to_disk, "arrow"),
    "datasets DatasetDict": (_save_to_disk_dict, "arrow"),
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_loads_the_same_pairs(tmp_path, name):
    make, fmt = FORMATS[name]
    source = open_pairs(make(tmp_path))
    df = source.collect()
    assert source.raw.format == fmt
    assert source.layout is Layout.STANDARD
    assert df.columns == list(PAIR_COLUMNS)
    assert df["prompt"].to_list() == [r["prompt"] for r in ROWS]
    assert df["margin"].to_list() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert df["difficulty"].to_list() == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])


def test_hf_repo_split_selects_shards(tmp_path):
    df = read_pairs(_hf_repo(tmp_path), split="test")
    assert df["prompt"].to_list() == ["prompt 0"]


def test_datasets_dict_split(tmp_path):
    assert read_pairs(_save_to_disk_dict(tmp_path), split="test").height == 1


def test_scan_is_lazy_and_projects(tmp_path):
    """Selecting two columns from the scan must not need the text columns' values."""
    source = open_pairs(_parquet(tmp_path))
    lazy = source.scan()
    assert isinstance(lazy, pl.LazyFrame)
    narrow = source.collect(lazy.select("margin", "_row", "_issue"))
    assert narrow.columns == ["margin"]


def test_pair_id_is_a_stable_xxh3(tmp_path):
    """XXH3-64 (seed 0) of b"prompt 0\\x1fgood 0\\x1fbad 0", from the xxHash reference."""
    df = read_pairs(_jsonl(tmp_path))
    assert df["pair_id"][0] == "17501213622631980706"
    assert df["pair_id"].n_unique() == len(ROWS)


# --------------------------------------------------------------------------------------------------
# layouts


def test_conversational_splits_prompt_turns_off(tmp_path):
    rows = [
        {
            "prompt": "q1",
            "chosen": [user("q1"), assistant("good")],
            "rejected": [user("q1"), assistant("bad")],
            "score_chosen": 8.0,
            "score_rejected": 5.0,
        },
        {
            "prompt": "q2",
            "chosen": [user("q2"), assistant("a"), user("more?"), assistant("yes")],
            "rejected": [user("q2"), assistant("a"), user("more?"), assistant("no")],
            "score_chosen": 7.0,
            "score_rejected": 7.0,
        },
        {
            "prompt": "q3",
            "chosen": [user("q3"), assistant("x")],
            "rejected": [user("another question"), assistant("y")],
            "score_chosen": 6.0,
            "score_rejected": 2.0,
        },
    ]
    source = open_pairs(write_jsonl(tmp_path / "conv.jsonl", rows))
    df = source.collect()
    assert source.layout is Layout.CONVERSATIONAL
    assert df["prompt"].to_list()[0] == [user("q1")]
    assert df["prompt"].to_list()[1] == [user("q2"), assistant("a"), user("more?")]
    assert df["chosen"].to_list()[1] == [assistant("yes")]
    assert df["rejected"].to_list()[1] == [assistant("no")]
    assert df["margin"].to_list() == [3.0, 0.0, 4.0]
    assert df["history_mismatch"].to_list() == [False, False, True]


def test_trl_conversational_keeps_the_prompt_column(tmp_path):
    rows = [{"prompt": [user("q")], "chosen": [assistant("good")], "rejected": [assistant("bad")]}]
    df = read_pairs(write_jsonl(tmp_path / "trl.jsonl", rows))
    assert df.row(0, named=True)["prompt"] == [user("q")]
    assert df.row(0, named=True)["chosen"] == [assistant("good")]
    assert df["margin"].to_list() == [None]


def test_conversational_without_prompt_column(tmp_path):
    rows = [
        {"chosen": [assistant("good")], "rejected": [assistant("bad")]},
        {"chosen": [user("q"), assistant("good")], "rejected": [user("q"), assistant("no")]},
    ]
    df = read_pairs(write_jsonl(tmp_path / "np.jsonl", rows))
    assert df["prompt"].to_list() == [[], [user("q")]]
    assert df["pair_id"].null_count() == 0 and df["pair_id"].n_unique() == 2


def test_implicit_prompt_hh_style(tmp_path):
    history = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to bake bread?\n\nAssistant:"
    rows = [
        {"chosen": history + " Mix flour and water.", "rejected": history + " No idea."},
        {
            "chosen": "\n\nHuman: a\n\nAssistant: b",
            "rejected": "\n\nHuman: different\n\nAssistant: c",
        },
    ]
    source = open_pairs(write_jsonl(tmp_path / "hh.jsonl", rows))
    df = source.collect()
    assert source.layout is Layout.IMPLICIT
    assert df["prompt"][0] == history
    assert df["chosen"][0] == " Mix flour and water."
    assert df["rejected"][0] == " No idea."
    assert df["history_mismatch"].to_list() == [False, True]
    assert df["rejected"][1] == " c"  # flagged, not dropped: the rejected keeps its own reply


@pytest.mark.parametrize(
    ("chosen_key", "rejected_key"),
    [
        ("score_chosen", "score_rejected"),
        ("chosen_score", "rejected_score"),
        ("chosen_rating", "rejected_rating"),
    ],
)
def test_rating_names(tmp_path, chosen_key, rejected_key):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", chosen_key: 4.5, rejected_key: 3}]
    source = open_pairs(write_jsonl(tmp_path / "r.jsonl", rows))
    assert source.detected.score_chosen == chosen_key
    assert source.collect()["margin"].to_list() == [1.5]


def test_nested_ratings_are_found(tmp_path):
    rows = [
        {
            "prompt": "p",
            "chosen": "a",
            "rejected": "b",
            "metadata": {"score_chosen": 9.0, "score_rejected": 2.5},
        }
    ]
    source = open_pairs(write_jsonl(tmp_path / "n.jsonl", rows))
    assert source.detected.score_chosen == "metadata.score_chosen"
    assert source.collect()["margin"].to_list() == [6.5]


def test_flags_override_detection_with_dotted_paths(tmp_path):
    rows = [
        {
            "q": "p",
            "good": "a",
            "bad": "b",
            "origin": "web",
            "judge": {"a": 7, "b": 6},
            "score_chosen": 1,
            "score_rejected": 9,
        }
    ]
    columns = ColumnMap(
        prompt="q",
        chosen="good",
        rejected="bad",
        score_chosen="judge.a",
        score_rejected="judge.b",
        source="origin",
    )
    df = read_pairs(write_jsonl(tmp_path / "o.jsonl", rows), columns=columns)
    row = df.row(0, named=True)
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("p", "a", "b")
    assert (row["margin"], row["source"]) == (1.0, "web")


def test_source_column_is_detected(tmp_path):
    rows = [{**ROWS[0], "dataset": "flan"}, {**ROWS[1], "dataset": "sharegpt"}]
    assert read_pairs(write_jsonl(tmp_path / "s.jsonl", rows))["source"].to_list() == [
        "flan",
        "sharegpt",
    ]


def test_existing_margin_column_wins_over_scores(tmp_path):
    """Data written by `prefcurate score` carries its own margin next to the original ratings."""
    rows = [
        {
            "prompt": "p",
            "chosen": "a",
            "rejected": "b",
            "score_chosen": 5,
            "score_rejected": 3,
            "margin": 0.25,
        }
    ]
    assert read_pairs(write_jsonl(tmp_path / "m.jsonl", rows))["margin"].to_list() == [0.25]


def test_keep_input_carries_other_columns(tmp_path):
    rows = [{**r, "source_index": i} for i, r in enumerate(ROWS)]
    source = open_pairs(write_jsonl(tmp_path / "k.jsonl", rows))
    df = source.collect(source.scan(keep_input=True))
    assert df["source_index"].to_list() == list(range(len(ROWS)))


MULTI = [
    {
        "instruction": "i1",
        "completions": [
            {"response": "a", "overall_score": 3.0},
            {"response": "b", "overall_score": 8.5},
            {"response": "c", "overall_score": 5.0},
            {"response": "d", "overall_score": 3.0},
        ],
    },
    {
        "instruction": "i2",
        "completions": [
            {"response": "x", "overall_score": 4.0},
            {"response": "y", "overall_score": 4.0},
        ],
    },
    {"instruction": "i3", "completions": [{"response": "alone", "overall_score": 4.0}]},
]


def test_multi_completion_best_vs_worst(tmp_path):
    source = open_pairs(write_jsonl(tmp_path / "m.jsonl", MULTI))
    df = source.collect()
    assert source.layout is Layout.MULTI_COMPLETION
    assert df.select("prompt", "chosen", "rejected", "margin").rows() == [
        ("i1", "b", "d", 5.5),  # worst is a tie of a and d: the later completion
        ("i2", "x", "y", 0.0),  # a full tie pairs first with last, margin 0
    ]  # i3 has one completion: no pair


def test_multi_completion_all_pairs(tmp_path):
    df = read_pairs(write_jsonl(tmp_path / "m.jsonl", MULTI), binarize="all-pairs")
    pairs = set(df.select("prompt", "chosen", "rejected").rows())
    # C(4,2) = 6 pairs for i1 (higher rating chosen; the a/d tie keeps input order), 1 for i2.
    assert pairs == {
        ("i1", "b", "a"),
        ("i1", "b", "c"),
        ("i1", "b", "d"),
        ("i1", "c", "a"),
        ("i1", "c", "d"),
        ("i1", "a", "d"),
        ("i2", "x", "y"),
    }


def test_multi_completion_best_vs_random_lower_is_seeded(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", MULTI)
    picks = [
        read_pairs(path, binarize="best-vs-random-lower", seed=s)["rejected"][0] for s in range(60)
    ]
    assert set(picks) == {"a", "c", "d"}  # only completions rated strictly lower than b
    again = [
        read_pairs(path, binarize="best-vs-random-lower", seed=s)["rejected"][0] for s in range(60)
    ]
    assert picks == again


def test_multi_completion_parallel_lists(tmp_path):
    rows = [{"prompt": "p", "completions": ["a", "b", "c"], "ratings": [1, 5, 3]}]
    df = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert df.select("chosen", "rejected", "margin").rows() == [("b", "a", 4.0)]


def test_no_scores_gives_null_margin(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    source = open_pairs(write_jsonl(tmp_path / "n.jsonl", rows))
    assert not source.has_margins
    df = source.collect()
    assert df["margin"].to_list() == [None] and df["difficulty"].to_list() == [None]


# --------------------------------------------------------------------------------------------------
# the real files in ../shared/data


def test_ultrafeedback_1k(uf1k):
    source = open_pairs(uf1k)
    df = source.collect()
    assert source.detected.score_chosen == "metadata.score_chosen"
    assert df.height == 1000
    counts = dict(df.group_by("margin").len().rows())
    assert (counts[0.0], counts[0.5], counts[1.0], counts[1.5]) == (111, 193, 193, 120)
    assert df["margin"].max() == 8.0
    assert df["pair_id"].n_unique() == 1000
    # difficulty: every tie is hardest, the single 8.0 pair easiest
    assert df.filter(pl.col("margin") == 0)["difficulty"].unique().to_list() == [1.0]
    assert df.filter(pl.col("margin") == 8.0)["difficulty"].to_list() == [0.0]


def test_hh_rlhf(hh):
    source = open_pairs(hh)
    df = source.collect()
    assert source.layout is Layout.IMPLICIT
    assert df.height == 2312
    assert df["margin"].null_count() == 2312
    assert df["prompt"].str.ends_with("\n\nAssistant:").all()
    assert df["prompt"].str.starts_with("\n\nHuman:").all()
    assert not df["chosen"].str.contains("\n\nAssistant:").any()
    mismatched = df.filter(pl.col("history_mismatch"))
    assert 0 < mismatched.height < 20  # a handful of real pairs whose histories differ


# --------------------------------------------------------------------------------------------------
# bad input: one located line each


def _error(path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        read_pairs(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unparsable_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(jsonl_text(ROWS[:3]) + "\n" + '{"prompt": "x", "chosen": \n' + jsonl_text(ROWS))
    message = _error(path)
    assert f"{path}, line 5: not valid JSON" in message


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(jsonl_text(ROWS[:2]).encode() + '{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    assert f"{path}, line 3: invalid UTF-8" in _error(path)


def test_score_not_a_number_names_line_and_column(tmp_path):
    bad = {**ROWS[0], "score_chosen": "high"}
    path = write_jsonl(tmp_path / "s.jsonl", [*ROWS, bad])
    message = _error(path)
    assert f"{path}, line 7: column 'score_chosen' holds a string here but a number" in message
    # a file whose score column is text from the start gets the same located line
    path = write_jsonl(tmp_path / "t.jsonl", [{**ROWS[0], "score_chosen": "7"}, bad])
    assert f"{path}, line 2: score_chosen is not a number: high" in _error(path)


def test_mixed_layouts_in_one_file_name_the_line(tmp_path):
    """Readers would turn the list into a string; the loader refuses instead."""
    conversational = {"prompt": "p", "chosen": [assistant("a")], "rejected": [assistant("b")]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [*ROWS[:3], conversational])
    assert f"{path}, line 4: column 'chosen' holds a list here but a string on line 1" in (
        _error(path)
    )


def test_duplicated_keys_and_columns(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "chosen": "b", "rejected": "r"}\n')
    assert f"{path}, line 1: key 'chosen' appears twice" in _error(path)
    path = tmp_path / "dup.csv"
    path.write_text("prompt,chosen,chosen,rejected\np,a,b,r\n")
    assert f"{path}, line 1: column 'chosen' appears twice in the header" in _error(path)


def test_truncated_zstd(tmp_path):
    data = zstandard.ZstdCompressor().compress(jsonl_text(ROWS * 50).encode())
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated zstd file" in _error(path)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_in_jsonl(tmp_path, constant):
    path = tmp_path / "nan.jsonl"
    line = (
        '{"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": %s, "score_rejected": 1}'
    )
    path.write_text(jsonl_text(ROWS) + line % constant + "\n")
    assert f"line 7: column 'score_chosen' is {constant}" in _error(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_in_parquet(tmp_path, value):
    path = tmp_path / "nan.parquet"
    pl.DataFrame([*ROWS[:2], {**ROWS[2], "score_rejected": value}]).write_parquet(path)
    message = _error(path)
    assert f"{path}, row 3: score_rejected is" in message


def test_nan_in_csv(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("prompt,chosen,rejected,score_chosen,score_rejected\np,a,b,1,2\np,c,d,nan,2\n")
    assert f"{path}, row 2: score_chosen is NaN" in _error(path)


def test_missing_override_column_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    message = _error(path, columns=ColumnMap(prompt="question"))
    assert "no column 'question' for --prompt" in message
    assert "columns are: prompt, chosen, rejected, score_chosen, score_rejected" in message


def test_undetectable_layout_says_which_flags(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": 1}])
    message = _error(path)
    assert "cannot detect the layout" in message and "--chosen and --rejected" in message


def test_empty_and_blank_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    assert "the file is empty" in _error(tmp_path / "empty.jsonl")
    assert "holds no rows" in _error(tmp_path / "blank.jsonl")


def test_truncated_gzip(tmp_path):
    data = gzip.compress(jsonl_text(ROWS * 50).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _error(path)


def test_missing_path_and_glob(tmp_path):
    assert "no such file or directory" in _error(tmp_path / "nope.jsonl")
    assert "no files match" in _error(str(tmp_path / "nope-*.parquet"))


def test_unreadable_file(tmp_path):
    """Root reads anything, so under root the child process drops to 'nobody' before reading."""
    path = write_jsonl(tmp_path / "secret.jsonl", ROWS)
    path.chmod(0)
    code = (
        "import os, sys\n"
        "from prefcurate.data.io import read_pairs\n"
        "from prefcurate.base.errors import InputError\n"
        "if os.geteuid() == 0: os.setuid(65534)\n"
        f"try: read_pairs({str(path)!r})\n"
        "except InputError as e: print(e); sys.exit(2)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert f"{path}: permission denied" in result.stdout


def test_symlink_loop(tmp_path):
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    assert "symbolic link loop" in _error(tmp_path / "a.jsonl")


def test_directory_mixing_types(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    pl.DataFrame(ROWS).write_parquet(tmp_path / "b.parquet")
    assert "mixes file types (jsonl, parquet)" in _error(tmp_path)


def test_byte_order_mark_is_tolerated(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_text(ROWS).encode())
    assert read_pairs(path).height == len(ROWS)


def test_null_response_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "null.jsonl", [*ROWS, {**ROWS[0], "rejected": None}])
    assert f"{path}, line 7: rejected is missing" in _error(path)


def test_wrong_type_for_responses(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "chosen": 1, "rejected": 2}])
    assert "column 'chosen' has type Int64" in _error(path)
