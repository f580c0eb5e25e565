"""The thin CLI: shared options declared once, train's flags and defaults read from TrainConfig."""

from __future__ import annotations

from dataclasses import MISSING, fields

import typer.main

from prefcurate.base.errors import InputError
from prefcurate.cli import app
from prefcurate.cli.common import Columns
from prefcurate.cli.train import TRAIN_HELP
from trainers.config import TrainConfig

COLUMN_FLAGS = {"--prompt", "--chosen", "--rejected", "--score-chosen", "--score-rejected",
                "--source", "--binarize", "--split"}  # fmt: skip


def _params(name: str):
    command = typer.main.get_command(app).commands[name]
    return {p.name: p for p in command.params}


def test_every_train_flag_shows_and_uses_the_default_written_in_train_config():
    params = _params("train")
    flags = [f for f in fields(TrainConfig) if f.name != "allowed_token_ids"]
    assert set(TRAIN_HELP) == {f.name for f in flags}
    for f in flags:
        if f.default is MISSING:
            assert params[f.name].required, f.name
        else:
            assert params[f.name].default == f.default, f.name
    assert params["beta"].default == TrainConfig.beta == 0.1


def test_train_passes_one_train_config_built_from_the_flags(cli, tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, reporter=None):
        seen["config"] = config
        raise InputError("stopped before training")

    monkeypatch.setattr("trainers.loop.train", fake_train)
    args = ["train", tmp_path / "split", "--model", "tiny", "--out", tmp_path / "run"]
    result = cli(*args, "--beta", "0.25", "--shuffle")
    assert result.code == 2 and "stopped before training" in result.err
    config = seen["config"]
    expected = TrainConfig(tmp_path / "split", "tiny", tmp_path / "run", beta=0.25, shuffle=True)
    assert config == expected


def test_the_column_flags_are_the_same_on_every_command_that_reads_data():
    names = {f.name for f in fields(Columns)}
    for command in ("analyze", "route", "score", "sql"):
        params = _params(command)
        assert names <= set(params), command
        flags = {opt for name in names for opt in params[name].opts}
        assert flags == COLUMN_FLAGS, command
