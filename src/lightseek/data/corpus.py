"""Corpus readers: text and Markdown files, record files (JSON Lines, JSON arrays, CSV), and the
text every Python install ships.

`iter_documents` turns files, folders and glob patterns into `Document`s in a fixed order;
`iter_records` gives the raw records of record files (instruction data reads those);
`stdlib_documents`
yields the standard library's documentation and source, so a demo needs no download.
Every problem with the input is a one-line DataError naming the file (and line or byte offset).
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lightseek.errors import ConfigError, DataError

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json", ".csv")
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages"})
_BOM = "\ufeff"


@dataclass(frozen=True)
class Document:
    """One training document.

    `source` is the file (or module) it came from; `index` is its position inside the source:
    0 for a whole-file document, the 0-based line number for a JSONL record, the ordinal for
    a documentation topic.
    """

    source: str
    index: int
    text: str


def iter_documents(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], text_field: str = "text"
) -> Iterator[Document]:
    """Documents from files, folders and glob patterns, in the order given (folders and glob
    matches in sorted order).

    Text files (.txt, .md) are one document each. Record files (.jsonl, .json, .csv) give one
    document per record: its first present field of ``text_field`` (comma-separated candidates,
    e.g. "text,context_text"), else, for an instruction record (see `data.instruct`), the
    conversation rendered with the chat template. Folders are walked recursively; hidden
    files and folders and other suffixes are ignored. Whitespace-only documents are skipped.
    """
    fields = [f.strip() for f in text_field.split(",") if f.strip()]
    if not fields:
        raise ConfigError(f"text_field must name at least one field, got {text_field!r}")
    for path in expand_paths(paths):
        if path.suffix.lower() in RECORD_SUFFIXES:
            for _, index, where, record in _read_records(path):
                text = record_text(record, fields, where)
                if text.strip():
                    yield Document(str(path), index, text)
        else:
            text = _decode(_read_bytes(path), path, offset=0).removeprefix(_BOM)
            if text.strip():
                yield Document(str(path), 0, text)


def iter_records(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
) -> Iterator[tuple[str, int, str, dict]]:
    """(source file, 0-based record index, "file:line" for messages, record) from record files
    (.jsonl, .json, .csv), folders of them and glob patterns. Text files are an error here."""
    for path in expand_paths(paths, suffixes=RECORD_SUFFIXES):
        yield from _read_records(path)


def record_text(record: dict, fields: list[str], where: str) -> str:
    """The text of one record: the first of ``fields`` it has, else its rendered conversation."""
    for name in fields:
        if name in record:
            text = record[name]
            if not isinstance(text, str):
                raise DataError(f"{where}: field {name!r} is a {type(text).__name__}, not a string")
            if not _encodable(text):  # JSON can spell lone surrogates, UTF-8 cannot
                raise DataError(f"{where}: field {name!r} has an unpaired surrogate")
            return text
    from lightseek.data.chat import render
    from lightseek.data.instruct import detect_format, to_messages

    if detect_format(record) is None:
        names = " or ".join(repr(f) for f in fields)
        raise DataError(f"{where}: field {names} is missing, not a string, and the record is not an "
                        f"instruction record (fields: {', '.join(sorted(map(str, record))) or 'none'})")
    try:
        text = render(to_messages(record, require_reply=False))
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    if not _encodable(text):
        raise DataError(f"{where}: the record has an unpaired surrogate")
    return text


def expand_paths(paths, suffixes: tuple[str, ...] = TEXT_SUFFIXES + RECORD_SUFFIXES) -> Iterator[Path]:
    """The files named by ``paths``: files as given, folders walked, glob patterns matched."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    kinds = ", ".join(suffixes)
    for raw in paths:
        path = Path(raw)
        if any(ch in str(raw) for ch in "*?[") and not path.exists():
            matches = sorted(p for p in _glob(str(raw)) if p.is_file() and p.suffix.lower() in suffixes)
            if not matches:
                raise DataError(f"{raw}: the pattern matches no {kinds} files")
            yield from matches
        elif path.is_dir():
            yield from _walk(path, suffixes)
        elif path.is_file():
            if path.suffix.lower() not in suffixes:
                raise DataError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r} (expected {kinds})")
            yield path
        elif path.exists():
            raise DataError(f"{path}: not a regular file or folder")
        else:
            raise DataError(f"{path}: no such file or folder")


def _glob(pattern: str) -> list[Path]:
    import glob

    return [Path(p) for p in glob.glob(pattern, recursive=True)]


def _walk(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Corpus files under `root`, sorted by path (a/1.txt < a/2.md < b.txt)."""

    def fail(err: OSError) -> None:
        raise DataError(f"{err.filename or root}: cannot list folder: {err.strerror or err}")

    return _sorted_files(
        root,
        keep_dir=lambda d: not d.startswith("."),
        keep_file=lambda f: not f.startswith(".") and Path(f).suffix.lower() in suffixes,
        onerror=fail,
    )


def _sorted_files(
    root: Path,
    keep_dir: Callable[[str], bool],
    keep_file: Callable[[str], bool],
    onerror: Callable[[OSError], None] | None = None,
) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = [d for d in dirnames if keep_dir(d)]
        found.extend(Path(dirpath) / f for f in filenames if keep_file(f))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _decode(data: bytes, path: Path, offset: int, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{path}:{line}" if line is not None else str(path)
        raise DataError(
            f"{where}: not valid UTF-8 at byte offset {offset + e.start} "
            f"(byte 0x{data[e.start]:02x})"
        ) from None


def _read_records(path: Path) -> Iterator[tuple[str, int, str, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    else:
        yield from _read_csv(path)


def _read_jsonl(path: Path) -> Iterator[tuple[str, int, str, dict]]:
    """One record per non-empty line, read line by line so large files stream."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    offset = 0
    with f:
        for lineno, raw in enumerate(_lines(f, path), start=1):
            line = _decode(raw, path, offset, lineno)
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"not valid JSON ({e.msg}, column {e.colno})"
                raise DataError(f"{path}:{lineno}: {problem}") from None
            if not isinstance(record, dict):
                kind = type(record).__name__
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {kind}")
            yield str(path), lineno - 1, f"{path}:{lineno}", record


def _read_json(path: Path) -> Iterator[tuple[str, int, str, dict]]:
    """A JSON array of records, or a SQuAD-style {"data": [{"paragraphs": [{"context"}]}]}
    file (one record {"text": context} per paragraph). Records are named by their index."""
    text = _decode(_read_bytes(path), path, offset=0).removeprefix(_BOM)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # SQuAD layout
        records = [{"text": p.get("context")} for article in data["data"] if isinstance(article, dict)
                   for p in article.get("paragraphs", []) if isinstance(p, dict)]
    elif isinstance(data, list):
        records = data
    else:
        raise DataError(f"{path}: expected a JSON array of records (or a SQuAD-style object with 'data'), "
                        f"got {type(data).__name__}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is a {type(record).__name__}, expected a JSON object")
        yield str(path), i, f"{path}: record {i}", record


def _read_csv(path: Path) -> Iterator[tuple[str, int, str, dict]]:
    """One record per row, keyed by the header row."""
    import csv
    import io

    text = _decode(_read_bytes(path), path, offset=0).removeprefix(_BOM)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataError(f"{path}: empty CSV file (a header row is required)")
    try:
        for i, row in enumerate(reader):
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more fields than the header has")
            yield str(path), i, f"{path}:{reader.line_num}", {k: v for k, v in row.items() if v is not None}
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lines(f: BinaryIO, path: Path) -> Iterator[bytes]:
    try:
        yield from f
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def stdlib_documents(max_bytes: int) -> Iterator[Document]:
    """Up to `max_bytes` UTF-8 bytes of text from this Python's standard library.

    First the documentation topics of `pydoc_data.topics` (sorted by name, one document
    each), then the standard library's .py files (sorted paths, skipping test, tests, idlelib
    and site-packages folders and files that are not UTF-8). The document that reaches the
    budget is cut at a character boundary so the total never exceeds `max_bytes`.
    Deterministic for a given Python installation.
    """
    if not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    left = max_bytes
    for doc in _stdlib_all():
        data = doc.text.encode("utf-8")
        if len(data) > left:
            text = data[:left].decode("utf-8", errors="ignore")
            if text.strip():
                yield Document(doc.source, doc.index, text)
            return
        yield doc
        left -= len(data)
        if left == 0:
            return


def _stdlib_all() -> Iterator[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package the docs separately
        topics = {}
    for i, name in enumerate(sorted(topics)):
        if topics[name].strip():
            yield Document(f"pydoc_data.topics:{name}", i, topics[name])
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _sorted_files(
        root,
        keep_dir=lambda d: d not in STDLIB_SKIP_DIRS and d != "__pycache__" and d[0] != ".",
        keep_file=lambda f: f.endswith(".py"),
    )
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            yield Document(str(path), 0, text)
