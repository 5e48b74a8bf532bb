"""Tests for the corpus readers: files, folders, JSONL, errors and the stdlib corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightseek.data.corpus import Document, iter_documents, stdlib_documents
from lightseek.errors import DataError


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_bytes(data.encode("utf-8"))
    else:
        path.write_bytes(data)
    return path


def test_txt_md_jsonl(tmp_path: Path) -> None:
    txt = write(tmp_path / "a.txt", "line one\r\nline two 中文\n")
    md = write(tmp_path / "b.md", "# Title\n\nbody 🚀\n")
    rows = [{"text": "first"}, {"text": "   "}, {"text": "third", "id": 3}]
    jsonl = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = list(iter_documents([txt, str(md), jsonl]))
    assert docs == [
        Document(str(txt), 0, "line one\r\nline two 中文\n"),
        Document(str(md), 0, "# Title\n\nbody 🚀\n"),
        Document(str(jsonl), 0, "first"),
        Document(str(jsonl), 2, "third"),
    ]


def test_folder_walk_sorted_and_filtered(tmp_path: Path) -> None:
    write(tmp_path / "z.txt", "z")
    write(tmp_path / "a" / "2.md", "a2")
    write(tmp_path / "a" / "1.txt", "a1")
    write(tmp_path / "a" / "skip.py", "print()")
    write(tmp_path / "b.jsonl", '{"text": "b0"}\n{"text": "b1"}\n')
    write(tmp_path / "empty.txt", " \n\t")
    write(tmp_path / ".hidden" / "h.txt", "hidden")
    texts = [d.text for d in iter_documents([tmp_path])]
    assert texts == ["a1", "a2", "b0", "b1", "z"]
    assert [d.text for d in iter_documents(tmp_path)] == texts  # a single path works too


def test_custom_text_field(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", '{"body": "hello", "text": 1}\n')
    assert [d.text for d in iter_documents([f], text_field="body")] == ["hello"]


def test_explicit_file_with_other_suffix(tmp_path: Path) -> None:
    f = write(tmp_path / "data.py", "a,b\n")
    with pytest.raises(DataError, match=r"data\.py.*unsupported"):
        list(iter_documents([f]))


def test_non_utf8_names_file_and_offset(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.txt", b"hello \xff world")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 at byte offset 6"):
        list(iter_documents([f]))
    j = write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8 at byte offset 28"):
        list(iter_documents([j]))


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"other": "x"}', "field 'text' is missing"),
        ('{"text": 5}', "field 'text' is a int"),
        ('["text"]', "expected a JSON object"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    f = write(tmp_path / "rows.jsonl", '{"text": "ok"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"rows\.jsonl:3: {match}"):
        list(iter_documents([f]))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.txt: no such file"):
        list(iter_documents([tmp_path / "missing.txt"]))


def test_stdlib_documents_deterministic_and_bounded() -> None:
    first = list(stdlib_documents(200_000))
    again = list(stdlib_documents(200_000))
    assert first == again and len(first) > 1
    sizes = [len(d.text.encode("utf-8")) for d in first]
    assert 199_000 < sum(sizes) <= 200_000
    assert all(d.text.strip() for d in first)
    small = list(stdlib_documents(1000))
    assert sum(len(d.text.encode("utf-8")) for d in small) <= 1000
    assert small[0] == Document(first[0].source, first[0].index, small[0].text)


def test_stdlib_reaches_source_files() -> None:
    docs = stdlib_documents(5_000_000)
    py = next(d for d in docs if d.source.endswith(".py"))
    parts = Path(py.source).parts
    assert not {"test", "tests", "idlelib", "site-packages"} & set(parts)


def test_jsonl_lone_surrogate(tmp_path: Path) -> None:
    f = write(tmp_path / "s.jsonl", '{"text": "ok"}\n{"text": "bad \\ud800 here"}\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: .*surrogate"):
        list(iter_documents([f]))
