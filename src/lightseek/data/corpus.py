"""Corpus readers: text files, Markdown, JSON Lines, and the text every Python install ships.

`iter_documents` turns files and folders into `Document`s in a fixed order; `stdlib_documents`
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
JSONL_SUFFIXES = (".jsonl",)
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
    """Documents from files and folders, in the order given (folders in sorted order).

    Folders are walked recursively taking .txt, .md and .jsonl files; other files and hidden
    (dot) files and folders inside them are ignored. A file named explicitly must have one of
    those suffixes. Whitespace-only documents are skipped.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in _walk(path):
                yield from _read_file(file, text_field)
        elif path.is_file():
            if path.suffix.lower() not in TEXT_SUFFIXES + JSONL_SUFFIXES:
                raise DataError(
                    f"{path}: unsupported file type {path.suffix or '(no suffix)'!r} "
                    f"(expected .txt, .md or .jsonl)"
                )
            yield from _read_file(path, text_field)
        elif path.exists():
            raise DataError(f"{path}: not a regular file or folder")
        else:
            raise DataError(f"{path}: no such file or folder")


def _walk(root: Path) -> list[Path]:
    """Corpus files under `root`, sorted by path (a/1.txt < a/2.md < b.txt)."""

    def fail(err: OSError) -> None:
        raise DataError(f"{err.filename or root}: cannot list folder: {err.strerror or err}")

    return _sorted_files(
        root,
        keep_dir=lambda d: not d.startswith("."),
        keep_file=lambda f: not f.startswith(".")
        and Path(f).suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES,
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


def _read_file(path: Path, text_field: str) -> Iterator[Document]:
    if path.suffix.lower() in JSONL_SUFFIXES:
        yield from _read_jsonl(path, text_field)
        return
    text = _decode(_read_bytes(path), path, offset=0).removeprefix(_BOM)
    if text.strip():
        yield Document(str(path), 0, text)


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


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    """One document per non-empty line, read line by line so large files stream."""
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
            text = record.get(text_field)
            if not isinstance(text, str):
                problem = "missing" if text_field not in record else f"a {type(text).__name__}"
                raise DataError(f"{path}:{lineno}: field {text_field!r} is {problem}, not a string")
            if not _encodable(text):  # JSON can spell lone surrogates, UTF-8 cannot
                raise DataError(f"{path}:{lineno}: field {text_field!r} has an unpaired surrogate")
            if text.strip():
                yield Document(str(path), lineno - 1, text)


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
