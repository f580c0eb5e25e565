"""The inspect page's charts as Plotly figure data: histogram, ratings, lengths, sources, a run.

Each function takes figures already computed (a :class:`~prefcurate.reporting.analyze.Report`,
an inspection's tables, a run's metrics) and returns a validated figure as JSON-native data; the
page (:mod:`prefcurate.reporting.page`) embeds them. Nothing here reads a file.
"""

from __future__ import annotations

import json
from typing import Any

from prefcurate.reporting.analyze import Histogram, Report
from prefcurate.reporting.palette import DPO_COLOR, MARGIN_LABEL, NEUTRAL_COLOR, SFT_COLOR

#: The fields of a trace that carry values, which may come from the data (a source's name).
_DATA_FIELDS = ("x", "y", "text", "hovertext", "name", "customdata")


def _fig(figure) -> dict[str, Any]:
    """A validated ``go.Figure`` as JSON-native data (numbers only, no NaN); every string among
    the traces' values is plain text (:func:`plain_text`), never Plotly markup."""
    data = json.loads(figure.to_json())
    for trace in data.get("data", []):
        for key in _DATA_FIELDS:
            if key in trace:
                trace[key] = _plain(trace[key])
    return data


def plain_text(text: str) -> str:
    """``text`` as Plotly shows it verbatim: Plotly reads labels as a small HTML (``<a href>``
    becomes a live link, ``<br>`` a line break), so ``&``, ``<`` and ``>`` are written as
    entities, which it turns back into the characters on screen."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return plain_text(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _layout(**kwargs) -> dict[str, Any]:
    base = {
        "template": "plotly_white",
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "height": 360,
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
    }
    base.update(kwargs)
    return base


def histogram_figure(report: Report) -> dict[str, Any] | None:
    """Bars of analyze's histogram; colours and the τ line are set by the page's τ control."""
    import plotly.graph_objects as go

    hist = report.histogram
    if hist is None:
        return None
    centres = [round((a + b) / 2, 10) for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
    labels = [hist.label(i) for i in range(len(hist.counts))]
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=hist.counts,
            width=[hist.width * 0.92] * len(centres),
            customdata=list(range(len(centres))),
            hovertext=labels,
            hovertemplate="margin %{hovertext}<br>%{y:,} pairs<extra></extra>",
            marker={"color": NEUTRAL_COLOR},
        ),
        layout=_layout(
            title={"text": "margin histogram — click a bar to read its pairs", "x": 0},
            xaxis={"title": {"text": MARGIN_LABEL}},
            yaxis={"title": {"text": "pairs"}},
            hovermode="closest",
            bargap=0,
            dragmode=False,
        ),
    )
    return _fig(fig)


def ratings_figure(ratings: dict[str, Any] | None) -> dict[str, Any] | None:
    import plotly.graph_objects as go

    if ratings is None:
        return None
    levels = [f"{v:g}" for v in ratings["levels"]]
    z = [[c if c else None for c in row] for row in ratings["counts"]]
    fig = go.Figure(
        go.Heatmap(
            x=levels,
            y=levels,
            z=z,
            colorscale="Blues",
            hovertemplate="chosen %{x}, rejected %{y}: %{z:,} pairs<extra></extra>",
            colorbar={"title": {"text": "pairs"}},
        ),
        layout=_layout(
            title={"text": "chosen × rejected rating (pairs)", "x": 0},
            xaxis={"title": {"text": "score_chosen"}, "type": "category"},
            yaxis={"title": {"text": "score_rejected"}, "type": "category"},
            height=420,
        ),
    )
    return _fig(fig)


def _box(name_key: str, rows: list[dict[str, Any]], names: list[str], color: str):
    import plotly.graph_objects as go

    return go.Box(
        x=names,
        q1=[r["q25"] for r in rows],
        median=[r["q50"] for r in rows],
        q3=[r["q75"] for r in rows],
        lowerfence=[r["q05"] for r in rows],
        upperfence=[r["q95"] for r in rows],
        mean=[r["mean"] for r in rows],
        marker={"color": color},
        name=name_key,
        hoverinfo="x+y",
    )


def length_figure(hist: Histogram | None, rows: list[dict[str, Any]] | None) -> dict | None:
    """Per margin bin, a box of chosen − rejected length (whiskers p05–p95, dashed line: mean)."""
    import plotly.graph_objects as go

    if hist is None or not rows:
        return None
    names = [hist.label(r["bin"]) for r in rows]
    fig = go.Figure(
        _box("chosen − rejected chars", rows, names, DPO_COLOR),
        layout=_layout(
            title={"text": "length difference by margin (box p25–p75, whiskers p05–p95)", "x": 0},
            xaxis={"title": {"text": MARGIN_LABEL}, "type": "category"},
            yaxis={"title": {"text": "chosen − rejected (characters)"}, "zeroline": True},
            showlegend=False,
        ),
    )
    return _fig(fig)


def sources_figure(rows: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    import plotly.graph_objects as go

    if not rows:
        return None
    names = [("(none)" if r["source"] is None else str(r["source"])) for r in rows]
    fig = go.Figure(
        _box("margin", rows, names, SFT_COLOR),
        layout=_layout(
            title={"text": "margin by source (box p25–p75, whiskers p05–p95)", "x": 0},
            xaxis={"title": {"text": "source"}, "type": "category"},
            yaxis={"title": {"text": "margin"}},
            showlegend=False,
        ),
    )
    return _fig(fig)


def curves_figure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Three panels over the steps: loss per route, reward accuracy, pairs per route; with the
    held-out pairs' evaluations (``train --eval-every``) as dashed lines through markers."""
    from plotly.subplots import make_subplots

    steps = [r["step"] for r in rows]

    def series(key: str) -> list[float | None]:
        return [r.get(key) for r in rows]

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("loss by route", "reward accuracy (DPO pairs)", "pairs per step by route"),
    )
    lines = (
        ("loss/dpo", "loss/dpo", {"color": DPO_COLOR}, 1),
        ("loss/sft", "loss/sft (NLL)", {"color": SFT_COLOR}, 1),
        ("rewards/accuracies", "rewards/accuracies", {"color": DPO_COLOR, "dash": "dot"}, 2),
    )
    for key, name, line, col in lines:
        fig.add_scatter(x=steps, y=series(key), name=name, line=line, row=1, col=col)
        evals = [(r["step"], r[f"eval/{key}"]) for r in rows if r.get(f"eval/{key}") is not None]
        if evals:
            x, y = zip(*evals, strict=True)
            fig.add_scatter(x=x, y=y, name=f"eval/{key}", mode="lines+markers", row=1, col=col,
                            line={**line, "dash": "dash"})  # fmt: skip
    fig.add_hline(y=0.5, line={"color": "grey", "dash": "dash", "width": 1}, row=1, col=2)
    for key, color in (("pairs/dpo", DPO_COLOR), ("pairs/sft", SFT_COLOR)):
        fig.add_scatter(x=steps, y=series(key), name=key, stackgroup="pairs",
                        line={"color": color, "width": 0.5}, row=1, col=3)  # fmt: skip
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_layout(
        template="plotly_white",
        height=380,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.25},
        title={"text": "training curves by route", "x": 0},
    )
    return json.loads(fig.to_json())


def eval_figure(rows: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """The held-out pairs' reward accuracy and mean reward margin per margin bin, at ``step``
    (``eval/by_margin`` of metrics.jsonl: every pair of a bin, sft-routed ones included)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("reward accuracy", "mean reward margin (β·h)")
    )
    labels = [r["bin"] for r in rows]
    colors = [DPO_COLOR if r["dpo"] else SFT_COLOR for r in rows]
    hover = [[r["pairs"], r["dpo"], r["pairs"] - r["dpo"]] for r in rows]
    template = "margin %{x}: %{y:.3f}<br>%{customdata[0]} pairs (%{customdata[1]} dpo, "
    template += "%{customdata[2]} sft)<extra></extra>"
    for col, key in ((1, "rewards/accuracies"), (2, "rewards/margins")):
        fig.add_bar(x=labels, y=[r[key] for r in rows], marker={"color": colors},
                    customdata=hover, hovertemplate=template, showlegend=False,
                    row=1, col=col)  # fmt: skip
        fig.update_xaxes(title_text="margin", type="category", row=1, col=col)
    fig.add_hline(y=0.5, line={"color": "grey", "dash": "dash", "width": 1}, row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_layout(
        template="plotly_white",
        height=360,
        margin={"l": 50, "r": 20, "t": 60, "b": 50},
        title={"text": f"held-out pairs per margin bin, evaluated at step {step}", "x": 0},
    )
    return json.loads(fig.to_json())


def accuracy_figure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            x=[r["label"] for r in rows],
            y=[r["accuracy"] for r in rows],
            customdata=[[r["dpo_pairs"], r["steps"]] for r in rows],
            hovertemplate="margin %{x}: accuracy %{y:.3f}<br>%{customdata[0]} DPO pairs, "
            "%{customdata[1]} steps<extra></extra>",
            marker={"color": DPO_COLOR},
        ),
        layout={
            "template": "plotly_white",
            "height": 360,
            "title": {
                "text": "reward accuracy per margin bin (DPO pairs, during training)",
                "x": 0,
            },
            "xaxis": {"title": {"text": "margin"}, "type": "category"},
            "yaxis": {"title": {"text": "reward accuracy"}, "range": [0, 1]},
            "shapes": [
                {
                    "type": "line",
                    "xref": "paper",
                    "x0": 0,
                    "x1": 1,
                    "y0": 0.5,
                    "y1": 0.5,
                    "line": {"color": "grey", "dash": "dash", "width": 1},
                }
            ],
        },
    )
    return json.loads(fig.to_json())
