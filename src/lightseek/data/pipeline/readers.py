"""Pipeline input: files, folders and globs turned into `Record`s with provenance.

Text (.txt, .md) and HTML (.html, .htm) files are one record each, or chunks cut at blank
lines when ``chunk_chars`` is set (each chunk knows its byte offset in the file). Record files
(.jsonl, .json, .csv) go through `lightseek.data.corpus` (a text field holding a list of
strings is read as lines); Parquet files are read with pyarrow,
in row batches. Any unreadable input is a one-line DataError naming the file (and line).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightseek.data.corpus import (
    RECORD_SUFFIXES,
    TEXT_SUFFIXES,
    _decode,
    _read_bytes,
    expand_paths,
    iter_records,
    record_text,
)
from lightseek.errors import DataError

HTML_SUFFIXES = (".html", ".htm")
PARQUET_SUFFIXES = (".parquet",)
ALL_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + RECORD_SUFFIXES + PARQUET_SUFFIXES
_PARAGRAPH_BREAK = re.compile(r"(\n[ \t\r]*\n)")
_BOM = "\ufeff"


@dataclass
class Record:
    """One text on its way through the pipeline. ``offset`` is a byte offset in ``source``
    (text files) or None (record files, where ``index`` is the 0-based record number)."""

    source: str
    index: int
    offset: int | None
    text: str
    bytes_in: int = 0
    meta: dict = field(default_factory=dict)  # lang, domain, pii counts ... added by steps
    steps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bytes_in:
            self.bytes_in = len(self.text.encode("utf-8"))


def resolve_inputs(inputs: list[str], root: Path) -> list[Path]:
    """Relative inputs start at ``root`` (the repo root); globs stay globs."""
    return [Path(p) if Path(p).is_absolute() else root / p for p in inputs]


def input_files(inputs: list[str], root: Path, exclude: list[str] = ()) -> list[Path]:
    """Every file the inputs name, in reading order, less those whose name matches ``exclude``."""
    if not inputs:
        raise DataError("input.paths: the recipe names no input files or folders")
    files = [f for f in expand_paths(resolve_inputs(inputs, root), suffixes=ALL_SUFFIXES)
             if not any(fnmatch.fnmatch(f.name, pattern) for pattern in exclude)]
    if not files:
        raise DataError(f"input.paths: no readable files in {', '.join(inputs)} (after excluding {', '.join(exclude)})")
    return files


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (so provenance does not depend on where the repo lives)."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def iter_file_records(path: Path, name: str, text_field: str, chunk_chars: int) -> Iterator[Record]:
    """The records of one file; ``name`` is what provenance calls it."""
    suffix = path.suffix.lower()
    fields = [f.strip() for f in text_field.split(",") if f.strip()]
    if suffix in RECORD_SUFFIXES:
        for _, index, where, record in iter_records(path):
            text = record_text(_join_lists(record, fields), fields, where)
            yield Record(name, index, None, text)
    elif suffix in PARQUET_SUFFIXES:
        yield from _read_parquet(path, name, fields)
    else:
        raw = _read_bytes(path)
        text = _decode(raw, path, offset=0)
        start = 0
        if text.startswith(_BOM):
            text, start = text[1:], len(_BOM.encode("utf-8"))
        if suffix in HTML_SUFFIXES:
            from lightseek.data.pipeline.html_text import html_to_text

            yield from _chunks(html_to_text(text), name, None, chunk_chars)
            return
        yield from _chunks(text, name, start, chunk_chars)


def _join_lists(record: dict, fields: list[str]) -> dict:
    """A text field holding a list of strings (poems' lines, say) is read as those lines."""
    for name in fields:
        value = record.get(name)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return {**record, name: "\n".join(value)}
        if name in record:
            break
    return record


def _chunks(text: str, name: str, start: int | None, chunk_chars: int) -> Iterator[Record]:
    """Whole text, or pieces of about ``chunk_chars`` cut at paragraph breaks. ``start`` is
    the byte offset of ``text`` in the file (None when the text is derived, as from HTML)."""
    if not chunk_chars or len(text) <= chunk_chars:
        yield Record(name, 0, start, text)
        return
    index, offset, buf, buf_chars, buf_bytes = 0, start or 0, [], 0, 0
    pieces = _PARAGRAPH_BREAK.split(text)  # [para, sep, para, sep, ...]
    for i in range(0, len(pieces), 2):
        piece = pieces[i] + (pieces[i + 1] if i + 1 < len(pieces) else "")
        buf.append(piece)
        buf_chars += len(piece)
        buf_bytes += len(piece.encode("utf-8"))
        if buf_chars >= chunk_chars or i + 2 >= len(pieces):
            chunk = "".join(buf)
            if chunk.strip():  # a trailing run of blank lines is no record
                yield Record(name, index, offset if start is not None else None, chunk, buf_bytes)
                index += 1
            offset, buf, buf_chars, buf_bytes = offset + buf_bytes, [], 0, 0


def _read_parquet(path: Path, name: str, fields: list[str]) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f'{path}: reading Parquet needs pyarrow: pip install "lightseek[data]"') from None
    import pyarrow as pa

    broken = (pa.ArrowException, OSError, ValueError)
    try:
        pf = pq.ParquetFile(path)
    except broken as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else e})") from None
    columns = pf.schema_arrow.names
    column = next((f for f in fields if f in columns), None)
    if column is None:
        raise DataError(f"{path}: no column {' or '.join(map(repr, fields))} (columns: {', '.join(columns)})")
    index = 0
    try:
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{path}: row {index}: column {column!r} is a {type(value).__name__}, "
                                    "not a string")
                yield Record(name, index, None, value or "")
                index += 1
    except broken as e:
        raise DataError(f"{path}: row {index}: cannot read Parquet data ({e})") from None


def iter_inputs(files: list[Path], root: Path, text_field: str, chunk_chars: int,
                max_bytes: int = 0) -> Iterator[Record]:
    """Records of every file in order, stopping once ``max_bytes`` of text is read (0 = all)."""
    seen = 0
    for path in files:
        for rec in iter_file_records(path, display_path(path, root), text_field, chunk_chars):
            if max_bytes and seen + rec.bytes_in > max_bytes:
                return
            seen += rec.bytes_in
            yield rec
