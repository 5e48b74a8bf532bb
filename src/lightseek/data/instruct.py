"""Instruction records: the formats users bring, turned into one conversation shape.

Recognised record formats (a JSON object each, from .jsonl, .json or .csv files):

    messages  {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}   (OpenAI)
    sharegpt  {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}],
               "system": optional}
    alpaca    {"instruction": ..., "input": optional, "output": ..., "system": optional}
    qa        {"question" | "ask" | "query" | "prompt": ..., "answer" | "response" | "completion": ...}

`to_messages` returns the conversation (validated by the chat template's rules) or raises a
DataError saying which format was assumed and what is wrong. `load_instructions` reads files,
names the file and line of a bad record, and either stops there or (``skip_bad=True``) skips
and counts it. Every conversation must end with an assistant turn: that is what is learned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightseek.data.chat import render, validate_messages
from lightseek.errors import DataError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system"}
QA_PROMPT_FIELDS = ("question", "ask", "query", "prompt")
QA_ANSWER_FIELDS = ("answer", "response", "completion")
FORMATS = ("messages", "sharegpt", "alpaca", "qa")


def detect_format(record: Mapping[str, Any]) -> str | None:
    """The instruction format a record is in, or None when it is in none of them."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if any(f in record for f in QA_PROMPT_FIELDS) and any(f in record for f in QA_ANSWER_FIELDS):
        return "qa"
    return None


def _text(record: Mapping[str, Any], key: str, fmt: str, optional: bool = False) -> str:
    value = record.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        kind = "missing" if key not in record else f"a {type(value).__name__}"
        raise DataError(f"{fmt} record: field {key!r} is {kind}, not a string")
    return value


def to_messages(record: Any, require_reply: bool = True) -> list[dict[str, str]]:
    """The record as a conversation ending with an assistant turn (see the module docstring).
    An empty final reply is an error unless ``require_reply`` is False (pretraining text)."""
    if not isinstance(record, Mapping):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    fmt = detect_format(record)
    if fmt is None:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise DataError(f"not an instruction record (fields: {fields}); expected one of the formats "
                        f"{', '.join(FORMATS)}")
    messages: list[dict[str, str]] = []
    if fmt == "messages":
        try:
            messages = validate_messages(record["messages"])
        except DataError as e:
            raise DataError(f"messages record: {e}") from None
    elif fmt == "sharegpt":
        turns = record["conversations"]
        if not isinstance(turns, list) or not turns:
            raise DataError("sharegpt record: 'conversations' must be a non-empty list")
        system = _text(record, "system", fmt, optional=True)
        if system:
            messages.append({"role": "system", "content": system})
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                raise DataError(f"sharegpt record: turn {i} must be an object, got {type(turn).__name__}")
            who = turn.get("from")
            if who not in SHAREGPT_ROLES:
                raise DataError(f"sharegpt record: turn {i} has 'from' = {who!r} (expected one of "
                                f"{', '.join(SHAREGPT_ROLES)})")
            messages.append({"role": SHAREGPT_ROLES[who], "content": _text(turn, "value", f"sharegpt turn {i}")})
    elif fmt == "alpaca":
        system = _text(record, "system", fmt, optional=True)
        prompt = _text(record, "instruction", fmt)
        extra = _text(record, "input", fmt, optional=True)
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": _text(record, "output", fmt)}]
    else:  # qa
        q = next(f for f in QA_PROMPT_FIELDS if f in record)
        a = next(f for f in QA_ANSWER_FIELDS if f in record)
        messages = [{"role": "user", "content": _text(record, q, fmt)},
                    {"role": "assistant", "content": _text(record, a, fmt)}]
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{fmt} record: the last turn must be the assistant's (nothing to learn otherwise)")
    if require_reply and not messages[-1]["content"].strip():
        raise DataError(f"{fmt} record: the assistant's reply is empty")
    return messages


@dataclass(frozen=True)
class Example:
    """One conversation and where it came from (file, 0-based record index)."""

    messages: list[dict[str, str]]
    source: str
    index: int
    record: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def text(self) -> str:
        """The conversation rendered with the chat template."""
        return render(self.messages)

    def split_key(self, text_field: str = "text") -> bytes:
        """sha256 of the text pretraining reads from this record with ``text_field`` (its text
        field if it has one, else `text`): the key of the train/validation split (see
        `data.shards.split_of`), so fine-tuning holds out what pretraining held out."""
        from lightseek.data.corpus import record_text

        fields = [f.strip() for f in text_field.split(",") if f.strip()]
        try:
            text = record_text(self.record, fields, self.source) if self.record else self.text
        except DataError:
            text = self.text
        return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass
class InstructionData:
    examples: list[Example]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first few skipped records, for the report
    formats: dict[str, int] = field(default_factory=dict)


def load_instructions(paths: Iterable[str | Path] | str | Path, skip_bad: bool = False,
                      keep_problems: int = 5) -> InstructionData:
    """Conversations from instruction files (.jsonl, .json, .csv; folders and globs as in
    `data.corpus`). A bad record is a DataError naming file and line, or with ``skip_bad`` is
    skipped and counted."""
    from lightseek.data.corpus import iter_records

    data = InstructionData([])
    for source, index, where, record in iter_records(paths):
        try:
            messages = to_messages(record)
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{where}: {e}") from None
            data.skipped += 1
            if len(data.problems) < keep_problems:
                data.problems.append(f"{where}: {e}")
            continue
        fmt = detect_format(record) or "?"
        data.formats[fmt] = data.formats.get(fmt, 0) + 1
        data.examples.append(Example(messages, source, index, record))
    if not data.examples:
        raise DataError("no usable instruction records in the given files"
                        + (f" ({data.skipped} skipped as malformed)" if data.skipped else ""))
    return data
