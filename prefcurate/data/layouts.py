"""Detect how a file stores its pairs and rewrite it, lazily, into the canonical columns.

Four layouts are recognised (docs/schema.md shows a row of each):

* ``standard`` — ``prompt``/``chosen``/``rejected`` strings (TRL's standard format);
* ``conversational`` — ``chosen``/``rejected`` as lists of ``{role, content}``; when they repeat
  the prompt's turns (UltraFeedback-binarized style) those turns are split off into ``prompt``;
* ``implicit_prompt`` — full transcripts sharing the prompt as a prefix (HH-RLHF); the prompt is
  the history up to the last assistant turn;
* ``multi_completion`` — a prompt with a list of rated completions, binarised into pairs.

Ratings are found under the usual names (``score_chosen``, ``chosen_rating``, ``chosen_score``,
...) at the top level or one struct deep (``metadata.score_chosen``). Flags override all of it.
Everything here builds Polars expressions; nothing is read until the caller collects.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.data.margins import LIMIT, beyond_limit
from prefcurate.data.schema import (
    MESSAGE_DTYPE,
    SCORE_DTYPE,
    Binarize,
    ColumnMap,
    Layout,
    is_messages,
)

PROMPT_NAMES = ("prompt", "instruction", "question", "input", "query")
CHOSEN_NAMES = ("chosen", "chosen_response", "response_chosen")
REJECTED_NAMES = ("rejected", "rejected_response", "response_rejected")
SOURCE_NAMES = ("source", "dataset", "data_source", "subset")
SCORE_NAME_PAIRS = (
    ("score_chosen", "score_rejected"),
    ("chosen_score", "rejected_score"),
    ("chosen_rating", "rejected_rating"),
    ("rating_chosen", "rating_rejected"),
    ("chosen_reward", "rejected_reward"),
)
#: ``generations`` + ``ratings`` (+ ``instruction``) is distilabel's raw UltraFeedback layout.
COMPLETION_LIST_NAMES = (
    "completions",
    "generations",
    "responses",
    "outputs",
    "answers",
    "candidates",
)
COMPLETION_TEXT_FIELDS = ("response", "text", "completion", "answer", "content", "output")
COMPLETION_RATING_FIELDS = ("overall_score", "rating", "score", "reward", "gpt4_rating")
RATING_LIST_NAMES = ("ratings", "scores", "rewards")

#: Assistant-turn markers of implicit-prompt transcripts, tried in this order.
ASSISTANT_MARKERS = ("\n\nAssistant:", "<|im_start|>assistant\n", "[/INST]", "### Response:")
#: For each assistant marker, the user marker of the same transcript style and the end-of-turn
#: tokens its turns may end with: what :func:`transcript_turns` splits a transcript by.
TURN_MARKERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "\n\nAssistant:": ("\n\nHuman:", ()),
    "<|im_start|>assistant\n": ("<|im_start|>user\n", ("<|im_end|>",)),
    "[/INST]": ("[INST]", ("</s>", "<s>")),
    "### Response:": ("### Instruction:", ()),
}

#: Internal columns that travel with the canonical frame until it is validated.
ROW = "_row"
ISSUE = "_issue"


@dataclass(frozen=True)
class Detected:
    """What :func:`detect` found: the layout and where each field lives."""

    layout: Layout
    prompt: str | None
    chosen: str | None
    rejected: str | None
    score_chosen: str | None
    score_rejected: str | None
    margin: str | None
    source: str | None
    marker: str | None = None  # implicit_prompt: the assistant marker
    completions: str | None = None  # multi_completion: list column (or list of texts)
    completion_text: str | None = None  # field of each completion holding the text
    completion_rating: str | None = None  # field (or parallel list column) holding the rating

    def describe(self) -> str:
        """One line a user can check: which column became which field."""
        parts = [str(self.layout)]
        if self.layout is Layout.MULTI_COMPLETION:
            parts.append(f"completions={self.completions}")
        else:
            parts += [f"{k}={v}" for k, v in (("chosen", self.chosen), ("rejected", self.rejected))]
        if self.prompt:
            parts.append(f"prompt={self.prompt}")
        if self.score_chosen:
            parts.append(f"scores={self.score_chosen},{self.score_rejected}")
        if self.margin:
            parts.append(f"margin={self.margin}")
        return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# field paths


def field_dtype(schema: pl.Schema, path: str) -> pl.DataType | None:
    """The dtype at a column name or dotted path into structs, or None where there is none."""
    if path in schema:
        return schema[path]
    head, *rest = path.split(".")
    dtype = schema.get(head)
    for part in rest:
        if not isinstance(dtype, pl.Struct):
            return None
        fields = {f.name: f.dtype for f in dtype.fields}
        if part not in fields:
            return None
        dtype = fields[part]
    return dtype


def field_expr(schema: pl.Schema, path: str) -> pl.Expr:
    """An expression reading a column or a dotted path into structs."""
    if path in schema:
        return pl.col(path)
    head, *rest = path.split(".")
    expr = pl.col(head)
    for part in rest:
        expr = expr.struct.field(part)
    return expr


def _require(schema: pl.Schema, path: str, flag: str, where: str) -> str:
    if field_dtype(schema, path) is None:
        raise InputError(
            f"no column {path!r} for {flag}",
            where=where,
            fix=f"columns are: {_column_list(schema)}",
        )
    return path


def _column_list(schema: pl.Schema) -> str:
    names = []
    for name, dtype in schema.items():
        names.append(name)
        if isinstance(dtype, pl.Struct):
            names += [f"{name}.{f.name}" for f in dtype.fields]
    return ", ".join(names)


def _first(schema: pl.Schema, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in schema), None)


def _is_text(dtype: pl.DataType | None) -> bool:
    return dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum)


def _is_number(dtype: pl.DataType | None) -> bool:
    return dtype is not None and (dtype.is_numeric() or dtype == pl.Null)


def _is_scoreish(dtype: pl.DataType | None) -> bool:
    """Scores may arrive as text (CSV, sloppy JSON); they are validated row by row later."""
    return _is_number(dtype) or _is_text(dtype)


# --------------------------------------------------------------------------------------------------
# detection


def detect(schema: pl.Schema, columns: ColumnMap, *, where: str, sample: pl.DataFrame) -> Detected:
    """Decide the layout of ``schema`` and where each canonical field lives.

    ``sample`` (the first rows) is only used to pick the assistant marker of implicit transcripts.
    """
    given = columns.given()
    for flag, path in given.items():
        _require(schema, path, f"--{flag.replace('_', '-')}", where)

    chosen = columns.chosen or _first(schema, CHOSEN_NAMES)
    rejected = columns.rejected or _first(schema, REJECTED_NAMES)
    prompt = columns.prompt or _first(schema, PROMPT_NAMES)
    source = columns.source or _source_column(schema)
    margin = "margin" if _is_number(schema.get("margin")) and "margin" not in given else None

    if chosen is None or rejected is None:
        multi = _detect_multi(schema, prompt, where)
        if multi is not None:
            return Detected(
                Layout.MULTI_COMPLETION,
                prompt,
                None,
                None,
                None,
                None,
                None,
                source,
                completions=multi[0],
                completion_text=multi[1],
                completion_rating=multi[2],
            )
        missing = "chosen" if chosen is None else "rejected"
        raise InputError(
            f"cannot detect the layout: no {missing!r} column",
            where=where,
            fix=f"pass --chosen and --rejected (and --prompt); columns are: {_column_list(schema)}",
        )

    score_chosen, score_rejected = _score_columns(schema, columns, where)
    layout, marker = _pair_layout(schema, prompt, chosen, rejected, where=where, sample=sample)
    return Detected(
        layout, prompt, chosen, rejected, score_chosen, score_rejected, margin, source, marker
    )


def _pair_layout(
    schema: pl.Schema, prompt, chosen: str, rejected: str, *, where: str, sample: pl.DataFrame
) -> tuple[Layout, str | None]:
    """The layout of a file with chosen and rejected columns, and an implicit transcript's
    assistant marker; a column of another type is an :class:`InputError` naming it."""
    c_type, r_type = field_dtype(schema, chosen), field_dtype(schema, rejected)
    p_type = field_dtype(schema, prompt) if prompt else None
    if is_messages(c_type) and is_messages(r_type):
        if prompt and not (_is_text(p_type) or is_messages(p_type)):
            raise _bad_type(prompt, p_type, where)
        return Layout.CONVERSATIONAL, None
    if not (_is_text(c_type) and _is_text(r_type)):
        text_like = _is_text(c_type) or is_messages(c_type)
        bad, dtype = (rejected, r_type) if text_like else (chosen, c_type)
        raise _bad_type(bad, dtype, where)
    if prompt is not None:
        if not _is_text(p_type):
            raise _bad_type(prompt, p_type, where)
        return Layout.STANDARD, None
    marker = _pick_marker(sample, chosen)
    if marker is None:
        raise InputError(
            "cannot detect the layout: no prompt column, and the transcripts have no "
            "assistant marker such as '\\n\\nAssistant:'",
            where=where,
            fix="pass --prompt with the column that holds the prompt",
        )
    return Layout.IMPLICIT, marker


def _bad_type(column: str, dtype: pl.DataType | None, where: str) -> InputError:
    return InputError(
        f"column {column!r} has type {dtype}",
        where=where,
        fix="expected text, or a list of {role, content} messages",
    )


def _source_column(schema: pl.Schema) -> str | None:
    name = _first(schema, SOURCE_NAMES)
    return name if name and _is_text(schema[name]) else None


def _score_columns(
    schema: pl.Schema, columns: ColumnMap, where: str
) -> tuple[str | None, str | None]:
    if columns.score_chosen or columns.score_rejected:
        if not (columns.score_chosen and columns.score_rejected):
            raise InputError(
                "--score-chosen and --score-rejected go together",
                where=where,
                fix="pass both flags",
            )
        pair = (columns.score_chosen, columns.score_rejected)
    else:
        pair = _find_score_pair(schema)
        if pair is None:
            return None, None
    for path in pair:
        if not _is_scoreish(field_dtype(schema, path)):
            raise InputError(
                f"score column {path!r} has type {field_dtype(schema, path)}, not a number",
                where=where,
                fix="pass --score-chosen/--score-rejected with numeric columns",
            )
    return pair


def _find_score_pair(schema: pl.Schema) -> tuple[str, str] | None:
    for a, b in SCORE_NAME_PAIRS:
        if a in schema and b in schema:
            return a, b
    for name, dtype in schema.items():
        if isinstance(dtype, pl.Struct):
            fields = {f.name for f in dtype.fields}
            for a, b in SCORE_NAME_PAIRS:
                if a in fields and b in fields:
                    return f"{name}.{a}", f"{name}.{b}"
    return None


def _pick_marker(sample: pl.DataFrame, chosen: str) -> str | None:
    texts = [t for t in sample.get_column(chosen).to_list() if isinstance(t, str)]
    counts = {m: sum(m in t for t in texts) for m in ASSISTANT_MARKERS}
    best = max(ASSISTANT_MARKERS, key=lambda m: counts[m])
    return best if counts[best] > 0 else None


def _detect_multi(schema: pl.Schema, prompt: str | None, where: str) -> tuple[str, str, str] | None:
    """(list column, text field, rating field) of multi-completion rows, or None."""
    for name in [*COMPLETION_LIST_NAMES, *schema.names()]:
        dtype = schema.get(name)
        if not isinstance(dtype, pl.List):
            continue
        inner = dtype.inner
        if isinstance(inner, pl.Struct):
            fields = {f.name: f.dtype for f in inner.fields}
            text = next((f for f in COMPLETION_TEXT_FIELDS if _is_text(fields.get(f))), None)
            rating = next((f for f in COMPLETION_RATING_FIELDS if _is_number(fields.get(f))), None)
            if text and rating:
                return name, text, rating
        elif _is_text(inner) and name in COMPLETION_LIST_NAMES:
            ratings = next(
                (
                    r
                    for r in RATING_LIST_NAMES
                    if isinstance(schema.get(r), pl.List) and _is_number(schema[r].inner)
                ),
                None,
            )
            if ratings:
                return name, "", ratings
    return None


# --------------------------------------------------------------------------------------------------
# canonicalisation


def canonical(
    raw: pl.LazyFrame,
    schema: pl.Schema,
    found: Detected,
    *,
    binarize: Binarize = Binarize.BEST_VS_WORST,
    seed: int = 0,
    keep_input: bool = False,
) -> pl.LazyFrame:
    """Rewrite ``raw`` into pair rows: prompt/chosen/rejected, scores, source, plus ``_row``.

    ``margin`` and ``difficulty`` are added later by :mod:`prefcurate.data.margins`; ``_issue``
    carries a per-row validation problem (text) that :meth:`PairSource.collect` turns into an error.
    """
    raw = raw.with_row_index(ROW)
    if found.layout is Layout.MULTI_COMPLETION:
        return _binarized(raw, schema, found, binarize, seed)

    c, r = field_expr(schema, found.chosen), field_expr(schema, found.rejected)
    mismatch = pl.lit(False)
    if found.layout is Layout.STANDARD:
        prompt, chosen, rejected = field_expr(schema, found.prompt), c, r
    elif found.layout is Layout.IMPLICIT:
        prompt, chosen, rejected, mismatch = _split_transcripts(c, r, found.marker)
    else:
        p = field_expr(schema, found.prompt) if found.prompt else None
        p_type = field_dtype(schema, found.prompt) if found.prompt else None
        prompt, chosen, rejected, mismatch = _split_conversations(c, r, p, p_type)

    issues = [
        pl.when(c.is_null()).then(pl.lit(f"{found.chosen} is missing")),
        pl.when(r.is_null()).then(pl.lit(f"{found.rejected} is missing")),
    ]
    columns = [
        pl.col(ROW),
        prompt.alias("prompt"),
        chosen.alias("chosen"),
        rejected.alias("rejected"),
    ]
    for name, path in (
        ("score_chosen", found.score_chosen),
        ("score_rejected", found.score_rejected),
    ):
        expr, issue = _score(schema, path, name)
        columns.append(expr.alias(name))
        issues.append(issue)
    if found.margin:
        expr, issue = _score(schema, found.margin, "margin")
        columns.append(expr.alias("_input_margin"))
        issues.append(issue)
    columns.append(_source(schema, found.source))
    columns.append(mismatch.fill_null(False).alias("history_mismatch"))
    columns.append(pl.coalesce(issues).alias(ISSUE))
    if keep_input:
        # the canonical columns are computed, never carried: a re-read output (a split, a scored
        # file) holds them already
        taken = {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "source"}
        taken |= {"pair_id", "margin", "difficulty", "history_mismatch", ROW, ISSUE}
        columns += [pl.col(n) for n in schema.names() if n not in taken]
    return raw.select(columns)


def _score(schema: pl.Schema, path: str | None, name: str) -> tuple[pl.Expr, pl.Expr]:
    """The score as Float64, and the row's problem with it (not a number, NaN, infinite)."""
    if path is None:
        return pl.lit(None, dtype=SCORE_DTYPE), pl.lit(None, dtype=pl.String)
    raw = field_expr(schema, path)
    dtype = field_dtype(schema, path)
    if _is_text(dtype):
        value = raw.cast(pl.String).str.strip_chars().cast(SCORE_DTYPE, strict=False)
        not_number = (
            raw.is_not_null() & (raw.cast(pl.String).str.strip_chars() != "") & value.is_null()
        )
        value = pl.when(raw.cast(pl.String).str.strip_chars() == "").then(None).otherwise(value)
    else:
        value = raw.cast(SCORE_DTYPE)
        not_number = pl.lit(False)
    issue = (
        pl.when(not_number)
        .then(pl.format(f"{path} is not a number: {{}}", raw.cast(pl.String).str.slice(0, 40)))
        .when(value.is_nan())
        .then(pl.lit(f"{path} is NaN"))
        .when(value.is_infinite())
        .then(pl.lit(f"{path} is infinite"))
        .when(beyond_limit(value))
        .then(pl.format(f"{path} is {{}}, beyond ±{LIMIT:g}", value))
    )
    return value, issue


def _source(schema: pl.Schema, path: str | None) -> pl.Expr:
    if path is None:
        return pl.lit(None, dtype=pl.String).alias("source")
    return field_expr(schema, path).cast(pl.String).alias("source")


def _split_transcripts(
    c: pl.Expr, r: pl.Expr, marker: str
) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """HH-RLHF style: the prompt is everything up to and including the last assistant marker."""
    pattern = "(?s)^(.*" + _regex_escape(marker) + ")(.*)$"
    c_prompt, c_resp = c.str.extract(pattern, 1), c.str.extract(pattern, 2)
    r_prompt, r_resp = r.str.extract(pattern, 1), r.str.extract(pattern, 2)
    # A transcript without the marker keeps its whole text as the response and an empty prompt.
    prompt = c_prompt.fill_null("")
    chosen = pl.when(c_prompt.is_null()).then(c).otherwise(c_resp)
    rejected = pl.when(r_prompt.is_null()).then(r).otherwise(r_resp)
    mismatch = r_prompt.fill_null("") != prompt
    return prompt, chosen, rejected, mismatch


def transcript_turns(
    prompt: str, responses: tuple[str, ...] = ()
) -> tuple[list[dict[str, str]], list[str]] | None:
    """An implicit-prompt transcript as turns: ``(messages, responses)``, or None.

    ``prompt`` is what :func:`_split_transcripts` keeps as the prompt, the history up to and
    including the last assistant marker (``"\\n\\nHuman: Hi\\n\\nAssistant:"``); it becomes
    ``[{"role": "user", "content": "Hi"}, ...]``, user and assistant turns alternating and ending
    with the user, each turn's text stripped of blanks and end-of-turn tokens
    (:data:`TURN_MARKERS`). ``responses`` (the chosen and rejected texts after the marker) are
    cleaned the same way. None when the prompt does not end with a known assistant marker, holds
    text before its first turn, or its turns do not alternate: the caller keeps it whole.
    """
    import re

    marker = next((m for m in ASSISTANT_MARKERS if prompt.endswith(m)), None)
    if marker is None:
        return None
    user, ends = TURN_MARKERS[marker]
    parts = re.split(f"({re.escape(user)}|{re.escape(marker)})", prompt)
    if parts[0].strip():
        return None
    roles = ["user" if tag == user else "assistant" for tag in parts[1::2]]
    texts = [_turn_text(text, ends) for text in parts[2::2]]
    if roles[-1] != "assistant" or texts[-1]:
        return None
    roles, texts = roles[:-1], texts[:-1]
    alternating = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if len(roles) % 2 == 0 or roles != alternating:  # user first, user last
        return None
    messages = [{"role": r, "content": t} for r, t in zip(roles, texts, strict=True)]
    return messages, [_turn_text(text, ends) for text in responses]


def _turn_text(text: str, ends: tuple[str, ...]) -> str:
    """A turn's text without surrounding blanks and trailing end-of-turn tokens."""
    text = text.strip()
    trimmed = True
    while trimmed:
        trimmed = False
        for end in ends:
            if text.endswith(end):
                text, trimmed = text[: -len(end)].strip(), True
    return text


def _regex_escape(text: str) -> str:
    return "".join("\\" + ch if ch in r".^$*+?{}[]\|()" else ch for ch in text).replace("\n", "\\n")


def _normalise_messages(expr: pl.Expr) -> pl.Expr:
    """Keep only role and content, as strings, so every conversational frame has one dtype."""
    return expr.list.eval(
        pl.struct(
            pl.element().struct.field("role").cast(pl.String).alias("role"),
            pl.element().struct.field("content").cast(pl.String).alias("content"),
        )
    ).cast(MESSAGE_DTYPE)


def _split_conversations(
    c: pl.Expr, r: pl.Expr, prompt: pl.Expr | None, prompt_type: pl.DataType | None
) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """Split each conversation into the prompt turns and the trailing assistant turns."""
    c, r = _normalise_messages(c), _normalise_messages(r)

    def trailing_assistant(msgs: pl.Expr) -> pl.Expr:
        is_assistant = msgs.list.eval(pl.element().struct.field("role") == "assistant")
        return (
            is_assistant.list.eval(pl.element().reverse().cast(pl.Int64).cum_prod().sum())
            .list.first()
            .fill_null(0)
        )

    c_n, r_n = trailing_assistant(c), trailing_assistant(r)
    c_hist = c.list.head(c.list.len() - c_n)
    r_hist = r.list.head(r.list.len() - r_n)
    if prompt is None:  # no prompt column and no history: an empty conversation so far
        given = pl.lit(pl.Series([[]], dtype=MESSAGE_DTYPE)).first()
    elif is_messages(prompt_type):
        given = _normalise_messages(prompt)
    else:
        given = pl.concat_list(
            pl.struct(pl.lit("user").alias("role"), prompt.cast(pl.String).alias("content"))
        ).cast(MESSAGE_DTYPE)
    # When the responses repeat the prompt turns, those turns are the prompt; otherwise (TRL's
    # conversational format) the responses are the responses and the prompt column is the prompt.
    has_history = c_hist.list.len() > 0
    prompt_out = pl.when(has_history).then(c_hist).otherwise(given)
    mismatch = has_history & (r_hist.list.len() > 0) & (c_hist != r_hist)
    return prompt_out, c.list.tail(c_n), r.list.tail(r_n), mismatch


def _binarized(
    raw: pl.LazyFrame, schema: pl.Schema, found: Detected, binarize: Binarize, seed: int
) -> pl.LazyFrame:
    """Turn rows of rated completions into pairs (see :class:`~prefcurate.data.schema.Binarize`)."""
    long = _completions(raw, schema, found)
    ranked = long.sort(ROW, "_rating", "_i", descending=[False, True, False])
    best = ranked.group_by(ROW, maintain_order=True).first()
    chosen_side = (
        ROW,
        "prompt",
        "source",
        pl.col("_text").alias("chosen"),
        pl.col("_rating").alias("score_chosen"),
        pl.col("_i").alias("_ci"),
    )
    a = best.select(*chosen_side)
    b = long.select(
        ROW,
        pl.col("_text").alias("rejected"),
        pl.col("_rating").alias("score_rejected"),
        pl.col("_i").alias("_ri"),
    )
    if binarize is Binarize.ALL_PAIRS:
        a = long.select(*chosen_side)
        pairs = a.join(b, on=ROW).filter(
            (pl.col("score_chosen") > pl.col("score_rejected"))
            | (
                (pl.col("score_chosen") == pl.col("score_rejected"))
                & (pl.col("_ci") < pl.col("_ri"))
            )
        )
    else:
        others = a.join(b, on=ROW).filter(pl.col("_ci") != pl.col("_ri"))
        if binarize is Binarize.BEST_VS_WORST:
            # Worst rating; among equals the last completion, so a full tie pairs first with last.
            key = [pl.col("score_rejected"), -pl.col("_ri")]
        else:
            # A seeded random completion rated strictly lower; a full tie falls back to any other.
            lower = pl.col("score_rejected") < pl.col("score_chosen")
            key = [~lower, _mix(pl.col(ROW), pl.col("_ri"), seed)]
        pairs = others.sort([ROW, *key]).group_by(ROW, maintain_order=True).first()
    return pairs.sort(ROW, "_ci", "_ri").select(
        ROW,
        "prompt",
        "chosen",
        "rejected",
        "score_chosen",
        "score_rejected",
        "source",
        pl.lit(False).alias("history_mismatch"),
        pl.lit(None, dtype=pl.String).alias(ISSUE),
    )


def _completions(raw: pl.LazyFrame, schema: pl.Schema, found: Detected) -> pl.LazyFrame:
    """One row per rated completion: the row it came from, its prompt and source, its text,
    rating and index among the row's completions (unrated or empty ones left out)."""
    prompt = field_expr(schema, found.prompt) if found.prompt else pl.lit("")
    if found.completion_text:
        items = pl.col(found.completions)
        text = items.list.eval(pl.element().struct.field(found.completion_text))
        rating = items.list.eval(pl.element().struct.field(found.completion_rating))
    else:
        text, rating = pl.col(found.completions), pl.col(found.completion_rating)
    return (
        raw.select(
            pl.col(ROW),
            prompt.cast(pl.String).alias("prompt"),
            _source(schema, found.source),
            text.alias("_text"),
            rating.cast(pl.List(SCORE_DTYPE)).alias("_rating"),
        )
        .explode("_text", "_rating")
        .with_columns(pl.int_range(pl.len()).over(ROW).alias("_i"))
        .filter(pl.col("_text").is_not_null() & pl.col("_rating").is_finite())
    )


def _mix(row: pl.Expr, index: pl.Expr, seed: int) -> pl.Expr:
    """A seeded pseudo-random key per (row, completion): BLAKE2b of "seed:row:index".

    Polars' own ``hash`` may change between releases; hashlib does not, so the same seed picks
    the same completions on every machine.
    """
    import hashlib

    def keys(batch: pl.Series) -> pl.Series:
        return pl.Series(
            [
                int.from_bytes(hashlib.blake2b(f"{seed}:{r}:{i}".encode(), digest_size=8).digest())
                for r, i in zip(batch.struct.field("r"), batch.struct.field("i"), strict=True)
            ],
            dtype=pl.UInt64,
        )

    pair = pl.struct(row.alias("r"), index.alias("i"))
    return pair.map_batches(keys, return_dtype=pl.UInt64, is_elementwise=True)
