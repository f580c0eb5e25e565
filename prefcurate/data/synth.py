"""Synthetic preference pairs with known ratings: UltraFeedback-shaped margins, realistic lengths.

``prefcurate synth`` is the README's built-in example data and the benchmarks' data source at scale,
so it is fast (a million pairs stream to Parquet in chunks, in a few hundred MB of memory) and
exactly reproducible: the same ``n``, ``seed`` and options give the same bytes, and the first ``k``
rows of a larger ``n`` are the rows of ``n = k``. Example::

    >>> from prefcurate.data.synth import synth
    >>> df = synth(1000, seed=0)
    >>> df.columns
    ['prompt', 'chosen', 'rejected', 'score_chosen', 'score_rejected', 'source']

The generative model (docs/synth.md shows the resulting figures):

* **Ratings** copy how UltraFeedback-binarized was built. Each prompt has four completions; the
  prompt's level is ``N(7.3, 0.6²)`` and each completion's quality adds ``N(0, 0.55²)``; with the
  source's failure probability (0.2–0.45, about 0.3 overall) a completion fails and loses
  ``1 + Exp(mean 2.2)`` points. A rating is the quality rounded to the 0.5 grid and clipped to
  [1, 10]. The chosen response is the best-rated completion, the rejected one a uniformly drawn
  other one, so ties (margin 0) happen about 12% of the time and a long tail of margins reaches
  8–9 (a failed rejected completion).
* **Lengths** (characters) are lognormal: chosen ``exp(6.72 + s + 0.85·(0.6·a + 0.8·z₁))`` and
  rejected ``exp(6.59 + s + 0.85·(0.6·a + 0.8·z₂))``, where ``a`` is shared by the pair, ``s`` is
  a per-source offset and ``z`` independent noise; the chosen one also grows by
  ``exp(0.04·(margin − 1.9))`` (a mild length bias). Means land near 1.2 kB (chosen) and 1.05 kB
  (rejected), like real data. Prompts are ``exp(5.8 + s + 1.1·z₃)``. Lengths are clipped to
  [2, 16000].
* **Text** is word-like tokens: a fixed corpus of sentences drawn from a Zipf-weighted vocabulary
  (common English function words plus made-up syllable words), with commas and paragraph breaks;
  the seed decides which stretches of it each text takes.
  Each response is a stretch of that corpus from a sentence start to the first word end at its
  drawn length; a prompt joins two stretches (the second from any word start), so prompts do not
  repeat by chance.
* **Sources** are named after UltraFeedback's sub-datasets, with invented shares, failure
  probabilities and length offsets (:data:`SOURCES`).
* **Flaws**, each at ``flaw_rate`` (default 0.1%) of the rows independently: an *inverted* label
  (chosen and rejected swapped with their ratings: a negative margin), an *identical* pair (the
  rejected text and rating are the chosen ones: a tie), a *duplicated prompt* (the prompt of an
  earlier row of the same chunk), a *duplicated pair* (an earlier row copied whole). ``flaw_rate=0``
  gives clean data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from prefcurate.base.errors import InputError

#: Rows generated per chunk; part of the reproducibility contract (changing it changes the bytes).
CHUNK_ROWS = 16_384

#: (name, share, failure probability, log-length offset) of each synthetic source.
SOURCES: tuple[tuple[str, float, float, float], ...] = (
    ("ultrachat", 0.30, 0.30, 0.10),
    ("evol_instruct", 0.20, 0.35, 0.30),
    ("sharegpt", 0.18, 0.30, 0.20),
    ("flan_v2", 0.15, 0.20, -0.60),
    ("flan_v2_cot", 0.07, 0.25, -0.30),
    ("false_qa", 0.05, 0.45, -0.80),
    ("truthful_qa", 0.05, 0.40, -0.50),
)

SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
        ("source", pa.string()),
    ]
)

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}

# rating model
_LEVEL_MEAN, _LEVEL_SD, _COMPLETION_SD = 7.3, 0.6, 0.55
_FAIL_SHIFT, _FAIL_SCALE = 1.0, 2.2
# length model (log characters)
_CHOSEN_MU, _REJECTED_MU, _RESPONSE_SD, _SHARED = 6.72, 6.59, 0.85, 0.6
_PROMPT_MU, _PROMPT_SD = 5.8, 1.1
_LENGTH_BIAS, _MEAN_MARGIN = 0.04, 1.9
_MIN_CHARS, _MAX_CHARS = 2, 16_000
# corpus
_CORPUS_WORDS = 1_500_000
_CORPUS_SEED = 20_260_201  # fixed: seeds choose different stretches of one corpus

_FUNCTION_WORDS = (
    "the of and to a in is that for it with as on be this are by or you not can from at an "
    "have which more also will your if use one their when all has but they these each we may "
    "should other most how so into some than what make time its first such example data"
).split()


# --------------------------------------------------------------------------------------------------
# public API


def synth(n: int, seed: int = 0, *, flaw_rate: float = 0.001) -> pl.DataFrame:
    """``n`` synthetic pairs as a DataFrame (see the module docstring for the model)."""
    tables = list(iter_synth(n, seed, flaw_rate=flaw_rate))
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    return pl.from_arrow(table)


def write_synth(
    out: str | Path,
    *,
    n: int,
    seed: int = 0,
    flaw_rate: float = 0.001,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Stream ``n`` synthetic pairs to ``out`` (.jsonl or .parquet by suffix), atomically.

    Memory stays at a few chunks whatever ``n``; ``progress(rows)`` is called after each chunk.
    Raises :class:`~prefcurate.base.errors.InputError` for a bad suffix, ``n`` or an existing
    ``out`` without ``force``.
    """
    from prefcurate.base.atomic import atomic_file

    out = Path(out)
    fmt = output_format(out)
    _check_args(n, flaw_rate)
    from prefcurate.base.outdir import check_out_file

    check_out_file(out, force=force)
    if out.exists() and out.is_dir():
        raise InputError("output path is a directory", where=out, fix="name a file")
    with atomic_file(out) as tmp:
        _write_overlapped(iter_synth(n, seed, flaw_rate=flaw_rate), tmp, fmt, progress)
    return out


def _write_overlapped(
    chunks: Iterator[pa.Table], path: Path, fmt: str, progress: Callable[[int], None] | None
) -> None:
    """Write chunks on a second thread while the next one is generated.

    Generating text holds the GIL; compressing and writing (Arrow, Polars) release it, so the two
    overlap and a million pairs take about as long as the slower of the two. Order is preserved.
    """
    import queue
    import threading

    pending: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                with pq.ParquetWriter(
                    path, SCHEMA, compression="zstd", use_dictionary=["source"]
                ) as out:
                    while (table := pending.get()) is not None:
                        out.write_table(table)
                        if progress:
                            progress(table.num_rows)
            else:
                with open(path, "wb") as out:
                    while (table := pending.get()) is not None:
                        pl.from_arrow(table).write_ndjson(out)
                        if progress:
                            progress(table.num_rows)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            failure.append(exc)
            while pending.get() is not None:  # drain so the producer never blocks
                pass

    thread = threading.Thread(target=writer, name="prefcurate-synth-writer", daemon=True)
    thread.start()
    try:
        for table in chunks:
            if failure:
                break
            pending.put(table)
    finally:
        pending.put(None)
        thread.join()
    if failure:
        raise failure[0]


def output_format(out: str | Path) -> str:
    """'jsonl' or 'parquet' from the suffix of ``out``; an :class:`InputError` otherwise."""
    fmt = _FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise InputError(
            f"unknown output type {Path(out).suffix or '(no suffix)'!r}",
            where=out,
            fix="name the output .jsonl or .parquet",
        )
    return fmt


def iter_synth(n: int, seed: int = 0, *, flaw_rate: float = 0.001) -> Iterator[pa.Table]:
    """The pairs as Arrow tables of :data:`CHUNK_ROWS` rows (the last one shorter).

    Chunk ``k`` depends only on ``(seed, k)`` and ``flaw_rate``, never on ``n``.
    """
    _check_args(n, flaw_rate)
    if n == 0:
        return
    corpus = _corpus()
    for k, start in enumerate(range(0, n, CHUNK_ROWS)):
        rows = min(CHUNK_ROWS, n - start)
        yield _chunk(corpus, np.random.default_rng([seed, 0, k]), flaw_rate).slice(0, rows)


# --------------------------------------------------------------------------------------------------
# one chunk


def _chunk(corpus: _Corpus, rng: np.random.Generator, flaw_rate: float) -> pa.Table:
    """CHUNK_ROWS pairs. Every draw has a fixed size, so a shorter n is a prefix of a longer one."""
    m = CHUNK_ROWS
    names = [s[0] for s in SOURCES]
    shares = np.array([s[1] for s in SOURCES])
    source = rng.choice(len(SOURCES), size=m, p=shares / shares.sum())
    fail_p = np.array([s[2] for s in SOURCES])[source]
    length_offset = np.array([s[3] for s in SOURCES])[source]

    score_chosen, score_rejected = _ratings(rng, fail_p)
    margin = score_chosen - score_rejected

    shared = rng.standard_normal(m)
    own = rng.standard_normal((2, m))
    mix = np.sqrt(1 - _SHARED**2)
    log_c = (
        _CHOSEN_MU
        + length_offset
        + _RESPONSE_SD * (_SHARED * shared + mix * own[0])
        + _LENGTH_BIAS * (margin - _MEAN_MARGIN)
    )
    log_r = _REJECTED_MU + length_offset + _RESPONSE_SD * (_SHARED * shared + mix * own[1])
    log_p = _PROMPT_MU + length_offset + _PROMPT_SD * rng.standard_normal(m)
    chosen = corpus.spans(rng, _chars(log_c))
    rejected = corpus.spans(rng, _chars(log_r))
    half = _chars(log_p) // 2
    prompt_a = corpus.spans(rng, np.maximum(half, 1))
    prompt_b = corpus.spans(rng, np.maximum(half, 1), sentence=False)

    columns = (prompt_a, prompt_b, chosen, rejected, score_chosen, score_rejected, source)
    _plant_flaws(rng, flaw_rate, *columns)

    return pa.table(
        [
            corpus.strings(prompt_a, prompt_b),
            corpus.strings(chosen),
            corpus.strings(rejected),
            pa.array(score_chosen, pa.float64()),
            pa.array(score_rejected, pa.float64()),
            pa.DictionaryArray.from_arrays(
                pa.array(source.astype(np.int32)), pa.array(names)
            ).dictionary_decode(),
        ],
        schema=SCHEMA,
    )


def _plant_flaws(
    rng, flaw_rate, prompt_a, prompt_b, chosen, rejected, score_chosen, score_rejected, source
) -> None:
    """Each flaw on a ``flaw_rate`` share of the rows, in place: inverted labels, identical
    responses, a duplicated prompt, a duplicated pair (the draws' order keeps the bytes stable)."""
    m = source.size
    flaws = rng.random((4, m)) < flaw_rate
    earlier = (rng.random((2, m)) * np.arange(m)).astype(np.int64)  # a uniform row j < i
    flaws[2:, 0] = False  # row 0 has no earlier row
    # inverted labels: swap the responses with their ratings
    inv = flaws[0]
    chosen[inv], rejected[inv] = rejected[inv], chosen[inv].copy()
    score_chosen[inv], score_rejected[inv] = score_rejected[inv], score_chosen[inv].copy()
    # identical pair: the rejected response (and its rating) is the chosen one
    same = flaws[1]
    rejected[same] = chosen[same]
    score_rejected[same] = score_chosen[same]
    # duplicated prompt, then duplicated pair (a copy of an earlier row, in row order)
    dup_prompt = np.flatnonzero(flaws[2])
    prompt_a[dup_prompt] = prompt_a[earlier[0, dup_prompt]]
    prompt_b[dup_prompt] = prompt_b[earlier[0, dup_prompt]]
    for i in np.flatnonzero(flaws[3]):
        j = earlier[1, i]
        for arr in (prompt_a, prompt_b, chosen, rejected, score_chosen, score_rejected, source):
            arr[i] = arr[j]


def _ratings(rng: np.random.Generator, fail_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best-of-four vs a random other of four, on the 0.5 grid in [1, 10]."""
    m = fail_p.size
    level = _LEVEL_MEAN + _LEVEL_SD * rng.standard_normal(m)
    quality = level[:, None] + _COMPLETION_SD * rng.standard_normal((m, 4))
    failed = rng.random((m, 4)) < fail_p[:, None]
    quality -= failed * (_FAIL_SHIFT + rng.exponential(_FAIL_SCALE, (m, 4)))
    rating = np.clip(np.round(quality * 2) / 2, 1.0, 10.0)
    best = rating.argmax(axis=1)
    other = (best + rng.integers(1, 4, size=m)) % 4
    rows = np.arange(m)
    return rating[rows, best], rating[rows, other]


def _chars(log_len: np.ndarray) -> np.ndarray:
    return np.clip(np.exp(log_len), _MIN_CHARS, _MAX_CHARS).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# text


@functools.lru_cache(maxsize=1)
def _corpus() -> _Corpus:
    """Built once per process (about a second): the same corpus serves every seed."""
    return _Corpus(_CORPUS_SEED)


class _Corpus:
    """A stream of word-like sentences; texts are stretches of it between word bounds."""

    def __init__(self, seed: int):
        rng = np.random.default_rng([seed, 1])
        vocab = _vocabulary()
        ranks = np.arange(1, len(vocab) + 1)
        weights = 1.0 / (ranks + 2.7)
        ids = rng.choice(len(vocab), size=_CORPUS_WORDS, p=weights / weights.sum())
        words = np.array(vocab, dtype=object)[ids]
        # sentences of 6-24 words, capitalised, ending in a full stop; paragraphs of 3-7 sentences
        lengths = rng.integers(6, 25, size=_CORPUS_WORDS // 6)
        ends = np.cumsum(lengths) - 1
        ends = ends[ends < _CORPUS_WORDS]
        starts = np.concatenate([[0], ends[:-1] + 1])
        words[starts] = [w.capitalize() for w in words[starts]]
        seps = np.full(_CORPUS_WORDS, " ", dtype=object)
        comma = rng.random(_CORPUS_WORDS) < 0.06
        seps[comma] = ", "
        seps[ends] = ". "
        paragraph = rng.random(ends.size) < 0.2
        seps[ends[paragraph]] = ".\n\n"
        self.text = "".join((words + seps).tolist()).encode("ascii")
        raw = np.frombuffer(self.text, dtype=np.uint8)
        sep = (raw == ord(" ")) | (raw == ord("\n"))
        self.word_starts = np.flatnonzero(~sep[1:] & sep[:-1]) + 1
        self.word_ends = np.flatnonzero(~sep[:-1] & sep[1:]) + 1  # one past a word's last char
        # a word end may carry "," or "." — fine for text, and keeps every span non-empty
        usable = self.word_starts[self.word_starts < len(self.text) - 2 * _MAX_CHARS]
        capital = (raw[usable] >= ord("A")) & (raw[usable] <= ord("Z"))
        self.sentence_starts = usable[capital]  # only sentence starts are capitalised
        self.word_starts = usable

    def spans(
        self, rng: np.random.Generator, lengths: np.ndarray, *, sentence: bool = True
    ) -> np.ndarray:
        """(start, end) byte offsets: from a random sentence (or word) start to the first word end
        at or after ``length`` bytes."""
        pool = self.sentence_starts if sentence else self.word_starts
        starts = pool[rng.integers(0, pool.size, size=lengths.size)]
        ends = self.word_ends[np.searchsorted(self.word_ends, starts + lengths, side="left")]
        return np.stack([starts, ends], axis=1)

    def strings(self, spans: np.ndarray, more: np.ndarray | None = None) -> pa.Array:
        """An Arrow string array of the spans (joined by a space to ``more`` when given)."""
        text = self.text
        if more is None:
            pieces = [text[a:b] for a, b in spans.tolist()]
            sizes = spans[:, 1] - spans[:, 0]
        else:
            pieces = [
                text[a:b] + b" " + text[c:d]
                for (a, b), (c, d) in zip(spans.tolist(), more.tolist(), strict=True)
            ]
            sizes = spans[:, 1] - spans[:, 0] + 1 + more[:, 1] - more[:, 0]
        offsets = np.zeros(len(pieces) + 1, dtype=np.int32)  # a chunk stays far below 2 GiB
        np.cumsum(sizes, out=offsets[1:])
        data = b"".join(pieces)
        return pa.StringArray.from_buffers(len(pieces), pa.py_buffer(offsets), pa.py_buffer(data))


def _vocabulary() -> list[str]:
    """Function words first (the most frequent), then made-up words from English-like syllables."""
    rng = np.random.default_rng(20_260_200)  # fixed: the vocabulary is the same for every seed
    onsets = "b c d f g h k l m n p r s t v w b d l m n p r s t br pl st th tr ch sh".split()
    nuclei = "a e i o u a e i o u a e i o ea ou ai".split()
    codas = ["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m"]
    draws = 12_000  # enough candidates for 8000 distinct words
    syllables = rng.choice([1, 1, 2, 2, 2, 3], size=draws)
    parts = [
        rng.integers(len(table), size=(draws, 4)).tolist() for table in (onsets, nuclei, codas)
    ]
    words: list[str] = list(_FUNCTION_WORDS)
    seen = set(words)
    for i, k in enumerate(syllables.tolist()):
        o, v, c = parts[0][i], parts[1][i], parts[2][i]
        word = "".join(onsets[o[j]] + nuclei[v[j]] for j in range(k)) + codas[c[0]]
        if word not in seen and len(words) < 8000:
            seen.add(word)
            words.append(word)
    return words


def _check_args(n: int, flaw_rate: float) -> None:
    if n < 0:
        raise InputError(f"--n must be at least 0, got {n}", fix="for example --n 10000")
    if not 0.0 <= flaw_rate <= 0.2:
        raise InputError(
            f"--flaw-rate must be between 0 and 0.2, got {flaw_rate}",
            fix="for example --flaw-rate 0.001, or 0 for clean data",
        )
