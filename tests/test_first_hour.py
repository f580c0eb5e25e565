"""What a first hour at the terminal showed, as library facts: each a figure a user reads.

Training summaries that never mix the two routes' losses, the share of the learning rate the sft
tail gets, plots that draw τ at τ and choose their length scale from the data, figures that are
never cut, JSON errors that read as sentences.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from prefcurate.base.errors import json_problem
from prefcurate.cli.train import train_summary
from prefcurate.recipes.benchreport import chart_label
from prefcurate.reporting import plots
from prefcurate.reporting.terminal import _FittedRow
from trainers.data import Curriculum
from trainers.loop import LOW_LR_FIX, summarize
from trainers.schedule import LOW_LR_SHARE, Schedule, low_lr_warnings, route_lr

# --------------------------------------------------------------------------------------------------
# training summaries


def _metrics(tmp_path, rows):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(step, dpo, sft, loss_dpo=None, loss_sft=None, acc=None):
    return {
        "step": step,
        "loss": 0.0,
        "loss/dpo": loss_dpo,
        "loss/sft": loss_sft,
        "rewards/accuracies": acc,
        "pairs/dpo": dpo,
        "pairs/sft": sft,
    }


def test_each_route_is_summarised_over_its_own_last_steps(tmp_path):
    """A curriculum of 20 steps: 16 of dpo pairs only, one mixed, three of sft pairs only.

    loss/dpo:last is over the last 10% of the 17 steps with dpo pairs (1 step: step 17, whose
    3 dpo pairs have mean loss 0.5), loss/sft:last over the last 10% of the 4 steps with sft
    pairs (1 step: step 20, 5.0); over the last 2 steps of the run there is no dpo pair at all.
    The pair counts are the pairs trained: 16·4 + 3 = 67 dpo, 1 + 3·4 = 13 sft.
    """
    rows = [_row(s, 4, 0, loss_dpo=0.7, acc=0.5) for s in range(1, 17)]
    rows.append(_row(17, 3, 1, loss_dpo=0.5, loss_sft=6.0, acc=1.0))
    rows += [_row(s, 0, 4, loss_sft=5.0 + (s == 19)) for s in (18, 19, 20)]
    s = summarize(_metrics(tmp_path, rows))
    assert (s["pairs/dpo"], s["pairs/sft"]) == (67, 13)
    assert (s["window/dpo"], s["window/sft"]) == (1, 1)
    assert s["loss/dpo:last"] == pytest.approx(0.5)
    assert s["rewards/accuracies:last"] == pytest.approx(1.0)
    assert s["loss/sft:last"] == pytest.approx(5.0)
    assert s["loss/dpo:first"] == pytest.approx(0.7) and s["loss/sft:first"] == pytest.approx(6.0)


def test_a_windows_mean_is_weighted_by_the_routes_pairs(tmp_path):
    """Two dpo steps in the window: 4 pairs at 1.0 and 1 pair at 0.0 → (4·1 + 1·0) / 5 = 0.8."""
    rows = [_row(s, 4, 0, loss_dpo=0.1) for s in range(1, 19)]
    rows += [_row(19, 4, 0, loss_dpo=1.0), _row(20, 1, 3, loss_dpo=0.0, loss_sft=2.0)]
    s = summarize(_metrics(tmp_path, rows))
    assert s["window/dpo"] == 2
    assert s["loss/dpo:last"] == pytest.approx(0.8)


def test_the_final_lines_name_each_route_and_the_pairs_trained(tmp_path):
    rows = [_row(1, 4, 0, loss_dpo=0.69, acc=0.5), _row(2, 2, 2, loss_dpo=0.6, loss_sft=5.84)]
    result = SimpleNamespace(
        summary=summarize(_metrics(tmp_path, rows)),
        steps=2,
        pairs_per_s=3.25,
        world_size=1,
        device="cpu",
        model_dir="runs/x/model",
    )
    lines = train_summary(result).splitlines()
    assert lines[0] == "trained 2 steps on 8 pairs (6 dpo + 2 sft), 3.2 pairs/s on 1×cpu"
    assert "loss/dpo 0.6000" in lines[1] and "(last step with dpo pairs)" in lines[1]
    assert "loss/sft 5.8400 (last step with sft pairs)" in lines[1]
    assert lines[2] == "model in runs/x/model"


# --------------------------------------------------------------------------------------------------
# the learning rate the sft tail gets


def _shares(curriculum: Curriculum, n_dpo: int, n_sft: int, schedule: str) -> dict:
    steps = [curriculum.step_pairs(s).tolist() for s in range(curriculum.total_steps)]
    factor = Schedule(schedule, 0.1, curriculum.total_steps).factor
    return route_lr([0.0] * n_dpo + [1.0] * n_sft, steps, factor)


def test_cosine_gives_a_curriculums_sft_tail_a_tiny_share_and_says_so():
    """863 dpo then 137 sft pairs, 4 per step: 250 steps, the sft pairs in the last 35 (216-250),
    where 0.5·(1 + cos(π·p)) has fallen from 0.05 to 0: about 1.7% of the peak on average."""
    curriculum = Curriculum(n_pairs=1000, global_batch=4)
    lr = _shares(curriculum, 863, 137, "cosine")
    assert lr.shares["sft"] < 0.03 and lr.shares["dpo"] > 0.5
    (warning,) = low_lr_warnings(lr, LOW_LR_FIX)
    assert "the sft pairs (137 pair visits)" in warning and f"{lr.shares['sft']:.1%}" in warning
    assert "--placement spread" in warning and "--lr-schedule phased" in warning
    constant = _shares(curriculum, 863, 137, "constant")
    assert constant.shares["sft"] == pytest.approx(1.0)
    assert low_lr_warnings(constant, LOW_LR_FIX) == []


def test_shuffled_sft_pairs_get_about_half_the_peak_and_no_warning():
    curriculum = Curriculum(n_pairs=1000, global_batch=4, shuffle=True, seed=0)
    lr = _shares(curriculum, 863, 137, "cosine")
    assert 0.35 < lr.shares["sft"] < 0.65 and lr.shares["sft"] >= LOW_LR_SHARE
    assert low_lr_warnings(lr, LOW_LR_FIX) == []
    no_sft = _shares(curriculum, 1000, 0, "cosine")
    assert no_sft.shares["sft"] is None and low_lr_warnings(no_sft, LOW_LR_FIX) == []


# --------------------------------------------------------------------------------------------------
# plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept instead of closed."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _vertical_lines(ax) -> list[float]:
    return [
        line.get_xdata()[0]
        for line in ax.get_lines()
        if len(set(line.get_xdata())) == 1 and line.get_linestyle() == "--"
    ]


def test_tau_is_drawn_at_tau_and_discrete_bars_are_centred_on_their_values(figures, tmp_path):
    import polars as pl

    from prefcurate.reporting.analyze import histogram

    margins = pl.Series([0.0] * 11 + [0.5] * 19 + [1.0] * 19 + [1.5] * 12 + [3.0] * 5)
    hist = histogram(margins, threshold=0.5)
    plots.margin_histogram(hist, tmp_path / "h.png", threshold=0.5)
    plots.margin_cdf(margins.to_numpy(), tmp_path / "c.png", threshold=0.5)
    x = margins.to_numpy()
    plots.margin_vs_length(x, np.arange(x.size) % 7 - 3.0, tmp_path / "v.png", threshold=0.5,
                           grid=0.5)  # fmt: skip
    for fig in figures:
        assert _vertical_lines(fig.axes[0]) == [0.5]  # τ's line, exactly at τ, in every plot
    bars = figures[0].axes[0].containers[0].patches  # the bars, not the SFT shading
    centres = sorted({round(b.get_x() + b.get_width() / 2, 9) for b in bars if b.get_height()})
    assert centres == [0.0, 0.5, 1.0, 1.5, 3.0]
    assert all(b.get_width() < 0.5 for b in bars)  # narrower than the grid: τ falls between


def test_length_axis_is_linear_for_short_texts_and_log_for_chat_lengths(figures, tmp_path):
    short = np.arange(1, 13, dtype=float)
    plots.lengths(short, short[::-1], tmp_path / "short.png")
    chat = np.geomspace(5, 8000, 200)
    plots.lengths(chat, chat[::-1], tmp_path / "chat.png")
    assert figures[0].axes[0].get_xscale() == "linear"
    assert figures[1].axes[0].get_xscale() == "log"
    assert len(figures[0].axes[0].get_xticks()) >= 5


def test_mixdpo_bars_are_labelled_with_the_share_they_routed():
    assert chart_label({"arm": "mixdpo-30", "sft_share": 0.367}) == "mixdpo-30 (36.7% sft)"
    assert chart_label({"arm": "filter", "sft_share": 0.0}) == "filter"


# --------------------------------------------------------------------------------------------------
# text


@pytest.mark.parametrize("width", [80, 200])
def test_a_row_of_fractional_margins_is_never_cut(width):
    names = ["count", "null", "min", "p05", "p25", "median", "p75", "p95", "max", "mean"]
    cells = ["1,000", "0", "0.0023925", "0.075769", "0.17615", "0.29127", "0.59097", "0.92942",
             "1.0546", "0.40229"]  # fmt: skip
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(_FittedRow("margin", names, cells))
    text = console.export_text()
    assert "…" not in text
    for cell in cells:
        assert cell in text
    assert len(text.strip().splitlines()) == (3 if width == 200 else 5)


def test_json_errors_read_as_a_sentence():
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads('{"prompt": "unterminated')
    assert json_problem(info.value) == "unterminated string starting at column 12"
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads("")
    assert json_problem(info.value) == "expecting value at column 1"


# --------------------------------------------------------------------------------------------------
# progress


def test_long_work_prints_plain_progress_lines_when_not_a_terminal(capsys):
    """bench mixdpo's bar, with stderr redirected: one line per update instead of silence."""
    from prefcurate.base.progress import bar

    with bar("bench mixdpo", 9, unit="arms", plain=True) as progress:
        progress.update(0, completed=0, description="base policy (trained once, cached)")
        progress.update(0, completed=2, description="seed 0: arm sft")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("bench mixdpo 0/9 arms: base policy (trained once, cached); ")
    assert lines[1].startswith("bench mixdpo 2/9 arms: seed 0: arm sft; ")
    assert all(line.endswith(" s elapsed") for line in lines) and len(lines) == 2


def test_short_work_stays_silent_when_not_a_terminal(capsys):
    from prefcurate.base.progress import bar

    with bar("writing plots", 4) as progress:
        progress.advance(0)
    assert capsys.readouterr().err == ""
