"""Pipeline readers: every input format, chunk offsets, HTML extraction and clear errors for
malformed input naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightseek.data.pipeline.html_text import html_to_text
from lightseek.data.pipeline.readers import input_files, iter_file_records, iter_inputs
from lightseek.errors import DataError


def records(path: Path, text_field: str = "text", chunk_chars: int = 0):
    return list(iter_file_records(path, path.name, text_field, chunk_chars))


def test_html_to_text_drops_scripts_and_keeps_blocks():
    html = ("<html><head><title>Doc</title><style>body{}</style><script>alert('x')</script></head><body>"
            "<h1>Title &amp; more</h1><p>First   para\ngraph.</p><div>Second<br>line</div>"
            "<ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr></table>"
            "<noscript>enable js</noscript><p>中文&nbsp;段落</p></body></html>")
    text = html_to_text(html)
    assert "alert" not in text and "body{}" not in text and "enable js" not in text and "Doc" not in text
    # paragraphs, headings, lists and tables stand apart; list items, rows and <br> start a line
    assert text.splitlines() == ["Title & more", "", "First para graph.", "", "Second", "line", "",
                                 "one", "two", "", "a b", "", "中文 段落"]


def test_text_chunks_know_their_byte_offsets(tmp_path):
    paras = [f"第{i}段：" + "汉字和English混合。" * (i + 3) for i in range(12)]
    raw = ("\ufeff" + "\n\n".join(paras) + "\n\n\n").encode("utf-8")
    f = tmp_path / "book.txt"
    f.write_bytes(raw)
    recs = records(f, chunk_chars=120)
    assert len(recs) > 3 and [r.index for r in recs] == list(range(len(recs)))
    for r in recs:
        assert raw[r.offset:r.offset + r.bytes_in] == r.text.encode("utf-8")
    assert "".join(r.text for r in recs).strip() == "\n\n".join(paras)


def test_record_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"body": "x1"}\n\n{"body": "x2"}\n', encoding="utf-8")
    (tmp_path / "b.csv").write_text("id,body\n1,y1\n", encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps([{"body": ["line 1", "line 2"]}]), encoding="utf-8")
    pq.write_table(pa.table({"body": ["p1", "p2"], "n": [1, 2]}), tmp_path / "d.parquet")
    (tmp_path / "README.md").write_text("readme", encoding="utf-8")
    files = input_files([str(tmp_path)], Path("/"), exclude=["README*"])
    got = [(r.source, r.index, r.text) for r in iter_inputs(files, tmp_path, "body", 0)]
    assert got == [("a.jsonl", 0, "x1"), ("a.jsonl", 2, "x2"), ("b.csv", 0, "y1"),
                   ("c.json", 0, "line 1\nline 2"), ("d.parquet", 0, "p1"), ("d.parquet", 1, "p2")]


def test_max_bytes_stops_reading(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": "x" * 10}) + "\n" for _ in range(10)))
    files = input_files([str(tmp_path)], tmp_path)
    assert len(list(iter_inputs(files, tmp_path, "text", 0, max_bytes=35))) == 3


@pytest.mark.parametrize("name, data, message", [
    ("bad.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', r"bad\.jsonl:3: not valid JSON"),
    ("utf.jsonl", b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', r"utf\.jsonl:2: not valid UTF-8 at byte offset 25"),
    ("utf.txt", b"fine text\n\xc3\x28 broken", r"utf\.txt: not valid UTF-8 at byte offset 10"),
    ("field.jsonl", b'{"text": "ok"}\n{"body": "no text field"}\n', r"field\.jsonl:2: field 'text' .*missing"),
    ("type.jsonl", b'{"text": 42}\n', r"type\.jsonl:1: field 'text' is a int"),
    ("broken.parquet", b"PAR1 this is not parquet", r"broken\.parquet: not a readable Parquet file"),
])
def test_malformed_input_names_file_and_line(tmp_path, name, data, message):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(DataError, match=message):
        records(f)


def test_parquet_without_the_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet: no column 'text' \(columns: body\)"):
        records(tmp_path / "p.parquet")


def test_missing_and_unsupported_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        input_files(["nope"], tmp_path)
    (tmp_path / "x.docx").write_bytes(b"")
    with pytest.raises(DataError, match="unsupported file type '.docx'"):
        input_files(["x.docx"], tmp_path)
