"""Instruction records: every format, the split rule, and malformed records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightseek.data.chat import render
from lightseek.data.corpus import iter_documents
from lightseek.data.instruct import load_instructions, to_messages
from lightseek.data.shards import split_of
from lightseek.errors import DataError

USER, BOT = {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}


@pytest.mark.parametrize("record, expected", [
    ({"instruction": "Q?", "output": "A."}, [USER, BOT]),
    ({"instruction": "Q?", "input": "ctx", "output": "A.", "system": "S"},
     [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?\n\nctx"}, BOT]),
    ({"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}, [USER, BOT]),
    ({"messages": [USER, BOT]}, [USER, BOT]),
    ({"question": "Q?", "answer": "A.", "id": 7}, [USER, BOT]),
    ({"department": "x", "ask": "Q?", "answer": "A."}, [USER, BOT]),
])
def test_formats_become_one_conversation_shape(record, expected) -> None:
    assert to_messages(record) == expected


@pytest.mark.parametrize("record, match", [
    ({"instruction": "Q?", "output": 5}, "alpaca record: field 'output' is a int"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "turn 0 has 'from' = 'robot'"),
    ({"conversations": []}, "non-empty list"),
    ({"messages": [BOT, USER]}, "last turn must be the assistant"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "role must be one of"),
    ({"question": "Q?", "answer": "  "}, "reply is empty"),
    ({"title": "x", "body": "y"}, r"not an instruction record \(fields: body, title\)"),
])
def test_malformed_records_say_what_is_wrong(record, match) -> None:
    with pytest.raises(DataError, match=match):
        to_messages(record)


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_bad_record_names_file_and_line_or_is_skipped_and_counted(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}, "{broken",
                                           {"question": "c", "answer": "d"}, {"question": "e"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_instructions([f])
    g = write_lines(tmp_path / "e.jsonl", [{"question": "a", "answer": "b"}, {"question": "e"},
                                           {"question": "c", "answer": "d"}])
    with pytest.raises(DataError, match=r"e\.jsonl:2: not an instruction record"):
        load_instructions([g])
    data = load_instructions([g], skip_bad=True)
    assert [e.messages[0]["content"] for e in data.examples] == ["a", "c"]
    assert data.skipped == 1 and "e.jsonl:2" in data.problems[0]
    assert data.formats == {"qa": 2}


def test_json_array_and_csv_files(tmp_path: Path) -> None:
    j = tmp_path / "a.json"
    j.write_text(json.dumps([{"instruction": "Q?", "output": "A."}] * 2), encoding="utf-8")
    c = tmp_path / "b.csv"
    c.write_text("department,ask,answer\nx,Q?,A.\ny,\"multi, comma\",\"line\nbreak\"\n", encoding="utf-8")
    data = load_instructions([j, c])
    assert len(data.examples) == 4
    assert data.examples[3].messages == [{"role": "user", "content": "multi, comma"},
                                         {"role": "assistant", "content": "line\nbreak"}]
    assert data.examples[3].source == str(c) and data.examples[3].index == 1
    bad = tmp_path / "c.json"
    bad.write_text('{"x": 1}', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json: expected a JSON array"):
        load_instructions([bad])
    with pytest.raises(DataError, match="no usable instruction records"):
        load_instructions([write_lines(tmp_path / "n.jsonl", [{"q": 1}])], skip_bad=True)


def test_pretraining_text_and_finetuning_share_one_split(tmp_path: Path) -> None:
    """A QA record read as pretraining text is its rendered conversation, so the shard split
    (by document hash) and the fine-tuning split agree record by record."""
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(200)]
    # records that also carry a text field: pretraining reads that field, so it is their split key
    rows += [{"instruction": f"i{i}", "output": f"o{i}", "text": f"### i{i} -> o{i}"} for i in range(200)]
    f = write_lines(tmp_path / "qa.jsonl", rows)
    docs = list(iter_documents([f]))
    examples = load_instructions([f]).examples
    assert [d.text for d in docs[:200]] == [render(e.messages) for e in examples[:200]]
    assert docs[200].text == "### i0 -> o0"
    import hashlib

    shard_split = [split_of(hashlib.sha256(d.text.encode()).digest(), 0.1, 0) for d in docs]
    assert shard_split == [split_of(e.split_key(), 0.1, 0) for e in examples]
    assert 10 < shard_split.count("val") < 80


def test_csv_fields_keep_unusual_line_characters(tmp_path: Path) -> None:
    c = tmp_path / "u.csv"
    c.write_text("question,answer\nfirst\u2028part,form\x0cfeed\n", encoding="utf-8")
    [ex] = load_instructions([c]).examples
    assert ex.messages[0]["content"] == "first\u2028part" and ex.messages[1]["content"] == "form\x0cfeed"
