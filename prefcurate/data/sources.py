"""Find the files behind a DATA argument and read them as one raw Polars LazyFrame.

A DATA argument is a file, a directory, a glob, or the name of a Hugging Face dataset already in
the local Hugging Face cache (``owner/name``: its snapshot folder is read; nothing is fetched).
Directories are understood the way users lay data out: a `datasets` ``save_to_disk`` folder, a
Hugging Face style repository with sharded ``data/train-*.parquet`` files, or a folder of files
of one format. What comes out is the data exactly as stored (no renaming, no layout logic);
:mod:`prefcurate.data.layouts` turns it into pairs.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from prefcurate.base.errors import InputError, json_problem, one_line
from prefcurate.base.hub import DATASET, resolve_hub
from prefcurate.base.outdir import expand_glob

#: File formats by suffix. Compressed JSONL keeps its inner suffix: ``x.jsonl.gz`` is jsonl.
_SUFFIX_FORMAT = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".arrow": "arrow",
}
_COMPRESSIONS = (".gz", ".zst")

#: Rows a schema is inferred from (JSONL, CSV); prefcurate.data.io checks the same rows' types.
SCHEMA_ROWS = 1000


@dataclass(frozen=True)
class RawSource:
    """The files behind one DATA argument, their format, and how to scan them."""

    spec: str  # what the user typed
    paths: tuple[Path, ...]
    format: str  # jsonl | json | parquet | csv | tsv | arrow

    @property
    def display(self) -> str:
        return self.spec

    def scan(self) -> pl.LazyFrame:
        """The raw rows, lazily where the format allows (JSONL, Parquet, CSV)."""
        files = [str(p) for p in self.paths]
        try:
            if self.format == "jsonl" and any(_starts_with_bom(p) for p in self.paths):
                return pl.concat([_read_jsonl_bom(p) for p in self.paths], how="diagonal_relaxed")
            if self.format == "jsonl":
                return pl.scan_ndjson(files, infer_schema_length=SCHEMA_ROWS)
            if self.format == "parquet":
                return pl.scan_parquet(files, missing_columns="insert", extra_columns="ignore")
            if self.format in ("csv", "tsv"):
                for path in self.paths:
                    _check_csv_header(path, "\t" if self.format == "tsv" else ",")
                return pl.concat(
                    [
                        pl.scan_csv(
                            f,
                            separator="\t" if self.format == "tsv" else ",",
                            infer_schema_length=SCHEMA_ROWS,
                            encoding="utf8",
                        )
                        for f in files
                    ],
                    how="diagonal_relaxed",
                )
            if self.format == "json":
                return pl.concat([_read_json_array(p) for p in self.paths], how="diagonal_relaxed")
            if self.format == "arrow":
                return pl.concat([_read_arrow(p) for p in self.paths], how="diagonal_relaxed")
        except InputError:
            raise
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            raise InputError(
                f"cannot read {self.format} data: {one_line(exc, 200)}", where=self.spec
            ) from exc
        msg = f"unsupported format {self.format!r}"
        raise AssertionError(msg)

    def content_hash(self) -> tuple[str, int]:
        """(sha256 hex, bytes) identifying the data: :func:`content_hash` of the files."""
        return content_hash(self.paths)


@dataclass(frozen=True)
class FrameSource(RawSource):
    """Data handed over in memory (a Polars or pandas DataFrame, a ``datasets.Dataset``).

    ``paths`` is empty; the rows are ``frame``. Its identity (plan.json's ``input.sha256``) is
    the SHA-256 of the frame's uncompressed Arrow IPC stream: the same rows, column names and
    types give the same digest.
    """

    frame: pl.DataFrame | None = None

    def scan(self) -> pl.LazyFrame:
        assert self.frame is not None
        return self.frame.lazy()

    def content_hash(self) -> tuple[str, int]:
        assert self.frame is not None
        buffer = io.BytesIO()
        self.frame.write_ipc_stream(buffer, compression="uncompressed")
        data = buffer.getvalue()
        return hashlib.sha256(data).hexdigest(), len(data)


def frame_source(data: object) -> FrameSource | None:
    """A :class:`FrameSource` for in-memory ``data``, or None when ``data`` is a path.

    Takes a Polars DataFrame or LazyFrame, a pandas DataFrame or a ``datasets.Dataset``,
    without importing pandas or datasets (their objects convert themselves).
    """
    if isinstance(data, str | os.PathLike):
        return None
    kind = f"{type(data).__module__.split('.')[0]} {type(data).__name__}"
    try:
        if isinstance(data, pl.LazyFrame):
            frame = data.collect()
        elif isinstance(data, pl.DataFrame):
            frame = data
        elif hasattr(data, "to_polars") and hasattr(data, "column_names"):  # datasets.Dataset
            frame = data.to_polars()
        elif type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
            frame = pl.from_pandas(data)
        else:
            raise InputError(
                f"cannot read pairs from a {kind}",
                fix="pass a path, a Polars or pandas DataFrame, or a datasets.Dataset",
            )
    except InputError:
        raise
    except (pl.exceptions.PolarsError, ValueError, TypeError, ImportError) as exc:
        raise InputError(f"cannot read the {kind}: {one_line(exc, 200)}") from exc
    if isinstance(frame, pl.Series):
        frame = frame.to_frame()
    return FrameSource(f"a {kind} of {frame.height} rows", (), "frame", frame)


def content_hash(paths: tuple[Path, ...] | list[Path]) -> tuple[str, int]:
    """(sha256 hex, total bytes) of the files' content, streamed in 1 MiB chunks.

    One file: the sha256 of its bytes (what ``sha256sum`` prints). Several (a directory or glob):
    the sha256 of their sorted per-file hex digests joined by newlines, so renaming or reordering
    files keeps the hash. The catalog, plan.json and report.json all use this one definition.
    """
    digests, total = [], 0
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                total += len(chunk)
        digests.append(h.hexdigest())
    if len(digests) == 1:
        return digests[0], total
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest(), total


def resolve(spec: str | Path, *, split: str | None = None) -> RawSource:
    """Find the files behind ``spec`` and their format; every failure is an :class:`InputError`.

    A Hugging Face dataset name (``owner/name``, not an existing path) is read from its snapshot
    in the local Hugging Face cache, like a folder (:func:`prefcurate.base.hub.resolve_hub`).
    """
    text = str(spec)
    matches = expand_glob(text)
    if matches is not None:
        files = [p for p in matches if p.is_file()]
        if not files:
            raise InputError(
                "no files match this pattern", where=text, fix="check the path and quote the glob"
            )
        return RawSource(text, tuple(files), _common_format(files, text))

    snapshot = resolve_hub(text, repo_type=DATASET, flag="")  # owner/name: the HF cache
    if snapshot is not None:
        return _resolve_dir(snapshot, text, split)
    path = Path(text)
    _check_exists(path)
    if path.is_dir():
        return _resolve_dir(path, text, split)
    _check_readable_file(path)
    return RawSource(text, (path,), _file_format(path))


def _check_exists(path: Path) -> None:
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                "symbolic link loop", where=path, fix="point at the real file, not the link"
            ) from exc
        if exc.errno == errno.EACCES:
            raise InputError(
                "permission denied", where=path, fix="check the read permission of the path"
            ) from exc
        raise InputError("no such file or directory", where=path, fix="check the path") from exc


def _check_readable_file(path: Path) -> None:
    if not path.is_file():
        raise InputError("not a regular file", where=path, fix="pass a data file or directory")
    if not os.access(path, os.R_OK):
        raise InputError("permission denied", where=path, fix="check the file's read permission")
    if path.stat().st_size == 0:
        raise InputError("the file is empty", where=path, fix="pass a file that holds pairs")


def _file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    fmt = _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(
            f"unknown file type {path.suffix or '(no suffix)'!r}",
            where=path,
            fix="use .jsonl, .json, .parquet, .csv, .tsv or .arrow (optionally .gz/.zst)",
        )
    if fmt == "json":
        fmt = _sniff_json(path)
    return fmt


def _sniff_json(path: Path) -> str:
    """A ``.json`` file holds either one array of objects or one object per line."""
    with _open_text(path) as fh:
        try:
            head = fh.read(4096).lstrip("\ufeff \t\r\n")
        except (UnicodeDecodeError, EOFError, OSError, gzip.BadGzipFile):
            return "jsonl"  # let the JSONL reader locate the problem
    return "json" if head.startswith("[") else "jsonl"


_BOM = b"\xef\xbb\xbf"


def _starts_with_bom(path: Path) -> bool:
    try:
        with open_binary(path) as fh:
            return fh.read(3) == _BOM
    except Exception:  # noqa: BLE001 - a broken file is diagnosed by the reader, not here
        return False


def _read_jsonl_bom(path: Path) -> pl.LazyFrame:
    """JSONL saved by editors that prepend a byte-order mark: strip it, then parse as usual."""
    with open_binary(path) as fh:
        data = fh.read()
    return pl.read_ndjson(
        io.BytesIO(data.removeprefix(_BOM)), infer_schema_length=SCHEMA_ROWS
    ).lazy()


def open_binary(path: Path):
    """Open a possibly compressed (.gz, .zst) file for binary reading."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))  # noqa: SIM115
    return open(path, "rb")  # noqa: SIM115


def _check_csv_header(path: Path, separator: str) -> None:
    """Readers rename a repeated header name (chosen, chosen_duplicated_0); prefcurate refuses."""
    import csv

    with _open_text(path) as fh:
        try:
            header = next(csv.reader(fh, delimiter=separator), [])
        except (UnicodeDecodeError, csv.Error):
            return  # the reader names the problem
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise InputError(
                f"column {name!r} appears twice in the header",
                where=f"{path}, line 1",
                fix="rename or remove one of the two columns",
            )
        seen.add(name)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))  # noqa: SIM115
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115


def _common_format(files: list[Path], where: str) -> str:
    formats = {f: _file_format(f) for f in files}
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        raise InputError(
            f"mixes file types ({', '.join(kinds)})",
            where=where,
            fix="point at one file, or a glob that matches one type such as 'dir/*.parquet'",
        )
    for f in files:
        _check_readable_file(f)
    return kinds[0]


def _resolve_dir(path: Path, spec: str, split: str | None) -> RawSource:
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError("permission denied", where=path, fix="check the folder's read permission")
    # `datasets` save_to_disk: a DatasetDict has dataset_dict.json and one folder per split.
    if (path / "dataset_dict.json").exists():
        splits = _datasets_json(path / "dataset_dict.json", "splits", list)
        chosen = split or ("train" if "train" in splits else splits[0])
        if chosen not in splits:
            raise InputError(
                f"no split {chosen!r} (splits: {', '.join(splits)})", where=path, fix="pass --split"
            )
        return _resolve_dir(path / chosen, spec, None)
    if (path / "state.json").exists() and (path / "dataset_info.json").exists():
        entries = _datasets_json(path / "state.json", "_data_files", list, required=False) or []
        if not all(isinstance(f, dict) and isinstance(f.get("filename"), str) for f in entries):
            raise InputError(
                "state.json: _data_files must list {filename} objects",
                where=path / "state.json",
                fix="re-save the dataset with save_to_disk",
            )
        files = [path / f["filename"] for f in entries]
        for file in files:
            if not file.is_file():
                raise InputError(
                    f"state.json names {file.name}, which is missing",
                    where=path / "state.json",
                    fix="re-save the dataset with save_to_disk",
                )
        files = files or sorted(path.glob("*.arrow"))
        if not files:
            raise InputError("a datasets folder without .arrow files", where=path)
        return RawSource(spec, tuple(files), "arrow")

    files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
    data_files = [p for p in files if _known_format(p)]
    if not data_files:
        raise InputError(
            "no data files in this folder",
            where=path,
            fix="expected .jsonl, .json, .parquet, .csv, .tsv or .arrow files",
        )
    # Hugging Face repositories shard splits as data/<split>-00000-of-000NN.parquet.
    shards = [p for p in data_files if p.name.split("-")[0] == (split or "train")]
    if split and not shards:
        raise InputError(f"no files for split {split!r}", where=path, fix="check --split")
    if shards:
        data_files = shards
    return RawSource(spec, tuple(data_files), _common_format(data_files, spec))


def _datasets_json(path: Path, key: str, kind: type, *, required: bool = True):
    """``key`` of a `datasets` metadata file; a broken file is an :class:`InputError`."""
    fix = "re-save the dataset with save_to_disk"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read this datasets file ({one_line(exc, 120)})", where=path,
                         fix=fix) from exc  # fmt: skip
    value = document.get(key) if isinstance(document, dict) else None
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (kind is list and required and not value):
        raise InputError(f"no valid {key!r} in this datasets file", where=path, fix=fix)
    if key == "splits" and not all(isinstance(v, str) for v in value):
        raise InputError("'splits' must be a list of names", where=path, fix=fix)
    return value


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in p.relative_to(root).parts)


def _known_format(p: Path) -> bool:
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in _SUFFIX_FORMAT


def _read_json_array(path: Path) -> pl.LazyFrame:
    with _open_text(path) as fh:
        try:
            rows = json.load(fh, object_pairs_hook=_keep_repeats)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"not valid JSON: {json_problem(exc)}",
                where=f"{path}, line {exc.lineno}, column {exc.colno}",
                fix="fix the JSON, or use one object per line (.jsonl)",
            ) from exc
        except UnicodeDecodeError as exc:
            raise InputError(
                f"invalid UTF-8 at byte {exc.start}", where=path, fix="re-encode the file as UTF-8"
            ) from exc
        except RecursionError as exc:
            raise InputError("JSON nested too deeply", where=path) from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(
            "a .json file must hold an array of objects", where=path, fix="or use .jsonl"
        )
    if not rows:
        raise InputError("the JSON array is empty", where=path, fix="pass a file that holds pairs")
    _check_repeats(rows, path)
    _check_row_types(rows, path)
    try:
        return pl.DataFrame(rows, infer_schema_length=None).lazy()
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise InputError(f"inconsistent rows: {one_line(exc, 200)}", where=path) from exc


def _check_row_types(rows: list[dict], path: Path) -> None:
    """A field whose JSON type changes between objects of the array is refused, naming the row
    and the field (nested ones as ``metadata.score_chosen``, list elements as ``chosen[].content``).

    (Building the frame would turn the odd value into text.) Integers and floats are one kind.
    """
    seen: dict[str, tuple[str, int]] = {}
    for number, row in enumerate(rows, start=1):
        for key, value in fields_of(row):
            kind = _kind(value)
            if kind is None:
                continue
            first = seen.setdefault(key, (kind, number))
            if first[0] != kind:
                raise InputError(
                    f"column {key!r} holds {kind} here but {first[0]} in row {first[1]}",
                    where=f"{path}, row {number}",
                    fix="make the column's type consistent",
                )


#: How deep the type checks follow nested objects and lists (a reader's schema stops too).
TYPED_DEPTH = 8


def fields_of(row: dict, prefix: str = "", depth: int = 0):
    """(dotted name, value) of every field of ``row``, nested objects and list elements too
    (``metadata.score_chosen``, ``chosen[].content``), as deep as a reader would type them."""
    for key, value in row.items():
        name = f"{prefix}{key}"
        yield name, value
        if depth >= TYPED_DEPTH:
            continue
        if isinstance(value, dict):
            yield from fields_of(value, f"{name}.", depth + 1)
        elif isinstance(value, list):
            for item in value:
                yield f"{name}[]", item
                if isinstance(item, dict):
                    yield from fields_of(item, f"{name}[].", depth + 1)


class _Repeated(dict):
    """A JSON object that held a key twice; ``repeated`` names the key."""

    repeated: str = ""


def _keep_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json``'s object hook that remembers a repeated key instead of keeping one value."""
    out: dict[str, object] = {}
    repeated = None
    for key, value in pairs:
        if key in out and repeated is None:
            repeated = key
        out[key] = value
    if repeated is None:
        return out
    marked = _Repeated(out)
    marked.repeated = repeated
    return marked


def _check_repeats(rows: list[dict], path: Path) -> None:
    """JSON allows a key twice in one object and readers silently keep one value; refused."""
    for number, row in enumerate(rows, start=1):
        found = _repeat_in(row)
        if found is not None:
            raise InputError(
                f"key {found!r} appears twice in one object",
                where=f"{path}, row {number}",
                fix="keep one of the two values",
            )


def _repeat_in(value: object) -> str | None:
    if isinstance(value, _Repeated):
        return value.repeated
    children = value.values() if isinstance(value, dict) else value
    for child in children if isinstance(value, dict | list) else ():
        found = _repeat_in(child)
        if found is not None:
            return found
    return None


def _kind(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _read_arrow(path: Path) -> pl.LazyFrame:
    """Arrow files written by `datasets` are IPC streams; plain Feather files are IPC files."""
    try:
        return pl.read_ipc_stream(path).lazy()
    except pl.exceptions.PolarsError:
        return pl.scan_ipc(path)
