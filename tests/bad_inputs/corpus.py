"""A corpus of malformed and hostile inputs, written by the tests themselves.

Each :class:`Case` writes one input into a folder and says what a user must see: the text the one
error line contains (``message``), or ``None`` for odd-but-valid input that every command must
accept. docs/reliability.md lists the cases and the messages.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import zstandard


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]
    message: str | None  # None: valid input, exit 0
    line: int | None = None  # the line or row the message must name


def row(i: int = 0, **changes) -> dict:
    base = {
        "prompt": f"question {i}",
        "chosen": f"a careful answer {i}",
        "rejected": f"a sloppy answer {i}",
        "score_chosen": 8.0 if i % 3 else 6.0,
        "score_rejected": 6.0,
    }
    return {**base, **changes}


GOOD = [row(i) for i in range(8)]

#: A line as a sloppy writer (Python's json with allow_nan) would print it.
RAW_LINE = (
    '{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": %s, "score_rejected": 1}\n'
)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _text(name: str, content: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_text(content, encoding="utf-8")
        return path

    return make


def _bytes(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content)
        return path

    return make


def _parquet(name: str, frame: pl.DataFrame) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        frame.write_parquet(path)
        return path

    return make


def _truncated_parquet(folder: Path) -> Path:
    path = folder / "cut.parquet"
    pl.DataFrame(GOOD).write_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mixed_directory(folder: Path) -> Path:
    data = folder / "mixed"
    data.mkdir()
    (data / "a.jsonl").write_text(jsonl(GOOD))
    pl.DataFrame(GOOD).write_parquet(data / "b.parquet")
    return data


def _empty_directory(folder: Path) -> Path:
    data = folder / "nothing"
    data.mkdir()
    (data / "notes.txt").write_text("no data here\n")
    return data


def _symlink_loop(folder: Path) -> Path:
    (folder / "a.jsonl").symlink_to(folder / "b.jsonl")
    (folder / "b.jsonl").symlink_to(folder / "a.jsonl")
    return folder / "a.jsonl"


def _missing(folder: Path) -> Path:
    return folder / "no-such-file.jsonl"


def _glob_without_match(folder: Path) -> Path:
    return folder / "shard-*.parquet"


def _deep_json(folder: Path) -> Path:
    path = folder / "deep.jsonl"
    nested = "[" * 100_000 + "]" * 100_000
    path.write_text(
        jsonl(GOOD) + '{"prompt": "p", "chosen": "c", "rejected": "r", "x": ' + nested + "}\n"
    )
    return path


def _huge_field(folder: Path) -> Path:
    """A 50 MB response: valid, and it must not be read twice into memory or crash anything."""
    path = folder / "huge.jsonl"
    path.write_text(jsonl([*GOOD, row(99, chosen="word " * 10_000_000)]))
    return path


def _late_type_change(value: object, name: str) -> Callable[[Path], Path]:
    """1,100 good rows with one odd ``chosen`` at line 1,051: past Polars' inference window."""

    def make(folder: Path) -> Path:
        rows = [row(i) for i in range(1100)]
        rows[1050] = row(1050, chosen=value)
        path = folder / name
        path.write_text(jsonl(rows))
        return path

    return make


def _late_line(name: str, odd: str, *, nested: bool = False) -> Callable[[Path], Path]:
    """1,100 good lines with the raw line ``odd`` at line 1,051 (nested: scores under metadata,
    or texts as messages when ``odd`` holds a message list)."""

    def good(i: int) -> dict:
        plain = row(i)
        if nested:
            scores = {k: plain.pop(k) for k in ("score_chosen", "score_rejected")}
            plain["metadata"] = scores
        if '"role"' in odd:
            for key in ("prompt", "chosen", "rejected"):
                plain[key] = [{"role": "user" if key == "prompt" else "assistant",
                               "content": plain[key]}]  # fmt: skip
        return plain

    def make(folder: Path) -> Path:
        lines = [json.dumps(good(i)) for i in range(1100)]
        lines[1050] = odd
        path = folder / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return make


_PAIR = '"prompt": "q", "chosen": "a", "rejected": "b"'
_MESSAGES = (
    '"prompt": [{"role": "user", "content": "q"}], '
    '"rejected": [{"role": "assistant", "content": "b"}]'
)


def _repeated_key_in_second_file(folder: Path) -> Path:
    data = folder / "keyshards"
    data.mkdir()
    (data / "a.jsonl").write_text(jsonl(GOOD))
    (data / "b.jsonl").write_text(
        jsonl([row(10)]) + "{" + _PAIR + ', "score_chosen": 8, "score_rejected": 6, '
        '"score_rejected": 9}\n'
    )
    return data


def _type_change_in_second_file(folder: Path) -> Path:
    data = folder / "shards"
    data.mkdir()
    (data / "a.jsonl").write_text(jsonl(GOOD))
    (data / "b.jsonl").write_text(jsonl([row(10), row(11), row(12, chosen=5)]))
    return data


def _datasets_folder(broken: str) -> Callable[[Path], Path]:
    """A `datasets` save_to_disk folder whose dataset_dict.json or state.json is cut short."""

    def make(folder: Path) -> Path:
        data = folder / "hfdata"
        data.mkdir()
        if broken == "dataset_dict.json":
            (data / "dataset_dict.json").write_text('{"splits": ["tra')
        else:
            (data / "state.json").write_text('{"_data_files": [{"filen')
            (data / "dataset_info.json").write_text("{}")
        return data

    return make


CASES: list[Case] = [
    Case(
        "truncated last line",
        _text("cut.jsonl", jsonl(GOOD) + '{"prompt": "q", "cho'),
        "not valid JSON",
        line=9,
    ),
    Case(
        "truncated line in the middle",
        _text("mid.jsonl", jsonl(GOOD[:3]) + '{"prompt": "q", "chosen": \n' + jsonl(GOOD)),
        "not valid JSON",
        line=4,
    ),
    Case(
        "chosen is a number",
        _text("num.jsonl", jsonl([row(0, chosen=7), row(1, chosen=8)])),
        "column 'chosen' has type Int64",
    ),
    Case(
        "prompt is an object",
        _text("obj.jsonl", jsonl([row(0, prompt={"text": "q"})])),
        "column 'prompt' has type Struct",
    ),
    Case(
        "type changes between lines",
        _text("types.jsonl", jsonl([*GOOD, row(9, chosen=["a"])])),
        "column 'chosen' holds a list here but a string",
        line=9,
    ),
    Case(
        "missing rejected column",
        _text(
            "norej.jsonl", jsonl([{k: v for k, v in r.items() if k != "rejected"} for r in GOOD])
        ),
        "no 'rejected' column",
    ),
    Case(
        "duplicated key",
        _text(
            "dupkey.jsonl",
            jsonl(GOOD) + '{"prompt": "p", "chosen": "a", "chosen": "b", "rejected": "r"}\n',
        ),
        "key 'chosen' appears twice",
        line=9,
    ),
    Case(
        "duplicated CSV column",
        _text("dup.csv", "prompt,chosen,chosen,rejected\np,a,b,r\n"),
        "column 'chosen' appears twice in the header",
        line=1,
    ),
    Case(
        "NaN score",
        _text("nan.jsonl", jsonl(GOOD) + RAW_LINE % "NaN"),
        "column 'score_chosen' is NaN",
        line=9,
    ),
    Case(
        "+inf score",
        _text("inf.jsonl", jsonl(GOOD) + RAW_LINE % "Infinity"),
        "column 'score_chosen' is Infinity",
        line=9,
    ),
    Case(
        "-inf score in Parquet",
        _parquet("inf.parquet", pl.DataFrame([*GOOD, row(9, score_rejected=float("-inf"))])),
        "score_rejected is infinite",
        line=9,
    ),
    Case(
        "NaN score in CSV",
        _text(
            "nan.csv",
            "prompt,chosen,rejected,score_chosen,score_rejected\np,a,b,5,4\nq,c,d,nan,4\n",
        ),
        "score_chosen is NaN",
        line=2,
    ),
    Case(
        "text in a score column",
        _text("text.jsonl", jsonl([row(0, score_chosen="7"), row(1, score_chosen="high")])),
        "score_chosen is not a number: high",
        line=2,
    ),
    Case(
        "boolean score",
        _text("bool.jsonl", jsonl([row(0, score_chosen=True)])),
        "has type Boolean, not a number",
    ),
    Case(
        "null response",
        _text("null.jsonl", jsonl([*GOOD, row(9, chosen=None)])),
        "chosen is missing",
        line=9,
    ),
    Case(
        "empty strings", _text("blank.jsonl", jsonl([*GOOD, row(9, prompt="", rejected="")])), None
    ),
    Case("empty file", _text("empty.jsonl", ""), "the file is empty"),
    Case("blank lines only", _text("blank-lines.jsonl", "\n \n\n"), "holds no rows"),
    Case(
        "invalid UTF-8",
        _bytes("latin1.jsonl", jsonl(GOOD).encode() + '{"prompt": "caf\xe9"}\n'.encode("latin-1")),
        "invalid UTF-8",
        line=9,
    ),
    Case("byte-order mark", _bytes("bom.jsonl", b"\xef\xbb\xbf" + jsonl(GOOD).encode()), None),
    Case(
        "mixed layouts",
        _text(
            "layouts.jsonl",
            jsonl(
                [
                    *GOOD,
                    {
                        "prompt": "p",
                        "chosen": [{"role": "assistant", "content": "a"}],
                        "rejected": [{"role": "assistant", "content": "b"}],
                    },
                ]
            ),
        ),
        "holds a list here but a string",
        line=9,
    ),
    Case("50 MB field", _huge_field, None),
    Case("deeply nested JSON", _deep_json, "JSON nested too deeply", line=9),
    Case(
        "CSV with newlines and quotes in fields",
        _text(
            "quoted.csv",
            "prompt,chosen,rejected,score_chosen,score_rejected\n"
            '"two\nlines","he said ""hi""","a, b",7,5\n"p","c","d",5,5\n',
        ),
        None,
    ),
    Case(
        "CSV with a short row",
        _text("short.csv", "prompt,chosen,rejected,score_chosen,score_rejected\np,c\n"),
        "rejected is missing",
        line=1,
    ),
    Case(
        "Parquet with the wrong schema",
        _parquet("schema.parquet", pl.DataFrame({"prompt": ["p"], "chosen": [1], "rejected": [2]})),
        "column 'chosen' has type Int64",
    ),
    Case("truncated Parquet", _truncated_parquet, "cannot read parquet data"),
    Case(
        "random bytes as JSONL",
        _bytes("noise.jsonl", bytes(range(256)) * 4),
        "not valid JSON",
        line=1,
    ),
    Case(
        "truncated gzip",
        _bytes("cut.jsonl.gz", gzip.compress(jsonl(GOOD * 50).encode())[:300]),
        "truncated or corrupt gzip",
    ),
    Case(
        "truncated zstd",
        _bytes(
            "cut.jsonl.zst", zstandard.ZstdCompressor().compress(jsonl(GOOD * 50).encode())[:200]
        ),
        "truncated zstd file",
    ),
    Case("JSON array of numbers", _text("numbers.json", "[1, 2, 3]"), "array of objects"),
    Case("truncated JSON array", _text("cut.json", json.dumps(GOOD)[:-40]), "not valid JSON"),
    Case(
        "array on a JSONL line",
        _text("array-line.jsonl", jsonl(GOOD) + "[1, 2]\n"),
        "expected a JSON object, found list",
        line=9,
    ),
    Case("directory mixing file types", _mixed_directory, "mixes file types (jsonl, parquet)"),
    Case("directory without data files", _empty_directory, "no data files in this folder"),
    Case("symlink loop", _symlink_loop, "symbolic link loop"),
    Case("missing path", _missing, "no such file or directory"),
    Case("glob matching nothing", _glob_without_match, "no files match this pattern"),
    Case("unknown file type", _text("pairs.xlsx", "PK"), "unknown file type '.xlsx'"),
    Case(
        "number in a text column after row 1,000",
        _late_type_change(7, "late-number.jsonl"),
        "column 'chosen' holds an integer here but a string on line 1",
        line=1051,
    ),
    Case(
        "object in a text column after row 1,000",
        _late_type_change({"text": "a"}, "late-object.jsonl"),
        "column 'chosen' holds an object here but a string on line 1",
        line=1051,
    ),
    Case(
        "type change in the second file of a directory",
        _type_change_in_second_file,
        "column 'chosen' holds an integer here but a string on line 1 of",
        line=3,
    ),
    Case(
        "type change inside a JSON array",
        _text("mixed.json", json.dumps([row(0), row(1), row(2, chosen=3)])),
        "column 'chosen' holds a number here but a string in row 1",
        line=3,
    ),
    Case(
        "duplicated key after line 1,000",
        _late_line(
            "late-dup.jsonl",
            "{" + _PAIR + ', "score_chosen": 8, "score_rejected": 6, "score_chosen": 1}',
        ),
        "key 'score_chosen' appears twice in one object",
        line=1051,
    ),
    Case(
        "duplicated nested key after line 1,000",
        _late_line(
            "late-nested-dup.jsonl",
            "{" + _PAIR + ', "metadata": {"score_chosen": 8, "score_rejected": 6, '
            '"score_chosen": 1}}',
            nested=True,
        ),
        "key 'score_chosen' appears twice in one object",
        line=1051,
    ),
    Case(
        "duplicated key in a message after line 1,000",
        _late_line(
            "late-message-dup.jsonl",
            "{" + _MESSAGES + ', "chosen": [{"role": "assistant", "content": "good", '
            '"content": "evil"}], "score_chosen": 8, "score_rejected": 6}',
        ),
        "key 'content' appears twice in one object",
        line=1051,
    ),
    Case(
        "duplicated key in the second file of a directory",
        _repeated_key_in_second_file,
        "key 'score_rejected' appears twice in one object",
        line=2,
    ),
    Case(
        "duplicated key in a JSON array",
        _text(
            "dup.json",
            "[" + json.dumps(row(0)) + ", {" + _PAIR + ', "score_chosen": 8, "score_rejected": 6,'
            ' "score_chosen": 1}]',
        ),
        "key 'score_chosen' appears twice in one object",
        line=2,
    ),
    Case(
        "duplicated nested key in a JSON array",
        _text(
            "nested-dup.json",
            "[" + json.dumps(row(0)) + ", {" + _PAIR + ', "metadata": {"score": 8, "score": 1}}]',
        ),
        "key 'score' appears twice in one object",
        line=2,
    ),
    Case(
        "type change in a nested score after row 1,000",
        _late_line(
            "late-nested.jsonl",
            "{" + _PAIR + ', "metadata": {"score_chosen": "high", "score_rejected": 6}}',
            nested=True,
        ),
        "column 'metadata.score_chosen' holds a string here but a number on line 1",
        line=1051,
    ),
    Case(
        "type change inside a list of messages after row 1,000",
        _late_line(
            "late-messages.jsonl",
            "{" + _MESSAGES + ', "chosen": [{"role": "assistant", "content": 5}], '
            '"score_chosen": 8, "score_rejected": 6}',
        ),
        "column 'chosen[].content' holds an integer here but a string on line 1",
        line=1051,
    ),
    Case(
        "nested type change inside a JSON array",
        _text(
            "nested-types.json",
            json.dumps([{**row(0), "metadata": {"n": 1}}, {**row(1), "metadata": {"n": "x"}}]),
        ),
        "column 'metadata.n' holds a string here but a number in row 1",
        line=2,
    ),
    Case(
        "scores so large their margin would overflow",
        _text("overflow.jsonl", jsonl([*GOOD, row(9, score_chosen=1e308, score_rejected=-1e308)])),
        "score_chosen is 1e+308, beyond ±1e+300",
        line=9,
    ),
    Case(
        "score beyond a 64-bit float",
        _text("e400.jsonl", jsonl(GOOD) + RAW_LINE % "1e400"),
        "column 'score_chosen' is too large for a 64-bit float (1e400)",
        line=9,
    ),
    Case(
        "numeric strings as scores",
        _text(
            "numstr.jsonl",
            jsonl([row(i, score_chosen=str(7 + i % 2), score_rejected="6.5") for i in range(8)]),
        ),  # fmt: skip
        None,
    ),
    Case(
        "datasets folder with a broken dataset_dict.json",
        _datasets_folder("dataset_dict.json"),
        "cannot read this datasets file",
    ),
    Case(
        "datasets folder with a broken state.json",
        _datasets_folder("state.json"),
        "cannot read this datasets file",
    ),
]


def unreadable(folder: Path) -> Path:
    """A file without read permission (checked in a child process that is not root)."""
    path = folder / "secret.jsonl"
    path.write_text(jsonl(GOOD))
    os.chmod(path, 0)
    return path


def run_as_nobody(args: list[str], warm: list[str]) -> subprocess.CompletedProcess:
    """Run ``prefcurate ARGS`` in a child that drops to 'nobody' (root reads anything).

    The child first runs ``warm`` as root on a good file, so every module the command imports is
    loaded: 'nobody' cannot read this interpreter's library.
    """
    code = (
        "import os, sys\n"
        "from prefcurate.cli import main\n"
        f"assert main({warm!r}) == 0\n"
        "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
        f"sys.exit(main({args!r}))\n"
    )
    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
