"""``--config FILE``: train and route read their settings from YAML, flags typed on the command
line win, and a run's run.json replays it with the same losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from split_helpers import synthetic_rows, write_split


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def split(tmp_path) -> Path:
    return write_split(tmp_path / "split", synthetic_rows(24, seed=1))


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_train_reads_a_yaml_file_and_typed_flags_win(cli, split, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"split_dir: {split}\nmodel: tiny\nout: {tmp_path / 'from-file'}\n"
        "max-length: 64\nlr: 1.0e-3\nbatch_size: 4\nmax_steps: 3\nshuffle: true\n"
        "catalog: 'off'\n"
    )
    result = cli("train", "--config", config, "--max-steps", "2", "--no-shuffle")
    assert result.code == 0, result.err
    run = json.loads((tmp_path / "from-file" / "run.json").read_text())
    settings = run["config"]
    assert settings["max_length"] == 64 and settings["lr"] == 1e-3  # from the file
    assert settings["max_steps"] == 2 and settings["shuffle"] is False  # typed: they win
    assert len(losses(tmp_path / "from-file")) == 2


def test_a_run_json_replays_the_run_with_the_same_losses(cli, split, tmp_path):
    first = tmp_path / "first"
    result = cli("train", split, "--model", "tiny", "--out", first, "--max-length", "64",
                 "--lr", "1e-3", "--batch-size", "4", "--shuffle", "--seed", "3",
                 "--label-smoothing", "0.1", "--catalog", "off")  # fmt: skip
    assert result.code == 0, result.err
    replay = tmp_path / "replay"
    result = cli("train", "--config", first / "run.json", "--out", replay, "--catalog", "off")
    assert result.code == 0, result.err
    assert losses(replay) == losses(first)  # the same floats, step by step
    recorded = json.loads((first / "run.json").read_text())["config"]
    replayed = json.loads((replay / "run.json").read_text())["config"]
    assert {k: v for k, v in replayed.items() if k != "out"} == {
        k: v for k, v in recorded.items() if k != "out"
    }


def test_settings_without_a_flag_come_from_the_file(cli, split, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"split_dir: {split}\nmodel: tiny\nout: {tmp_path / 'run'}\nmax_length: 64\n"
        "max_steps: 1\nallowed_token_ids: [1, " + ", ".join(str(i) for i in range(3, 259)) + "]\n"
    )
    result = cli("train", "--config", config, "--catalog", "off")
    assert result.code == 0, result.err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["allowed_token_ids"][:3] == [1, 3, 4]  # EOS and the bytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: 1e-3\nlearning_rate: 2\n", "unknown setting 'learning_rate'"),
        ("lr: fast\n", "bad value for 'lr'"),
        ("- lr\n- beta\n", "must be a mapping"),
        ("lr: [1\n", "not valid YAML"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(cli, split, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = cli("train", split, "--model", "tiny", "--out", tmp_path / "run", "--config", config)
    assert result.code == 2
    assert message in result.err and str(config) in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_route_reads_a_yaml_file_and_typed_flags_win(cli, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(30, seed=2)))
    config = tmp_path / "route.yaml"
    config.write_text(f"data: {data}\nout: {tmp_path / 'split'}\nthreshold: 0.5\n"
                      "eval-fraction: 0.2\nseed: 4\n")  # fmt: skip
    result = cli("route", "--config", config, "--threshold", "1.0", "--catalog", "off")
    assert result.code == 0, result.err
    plan = json.loads((tmp_path / "split" / "plan.json").read_text())
    assert plan["threshold"] == 1.0  # typed
    assert plan["eval_fraction"] == 0.2 and plan["seed"] == 4  # from the file
    assert (tmp_path / "split" / "eval.parquet").is_file()
