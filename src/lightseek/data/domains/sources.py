"""Readers of the corpora in ../shared/data for the domain classifier's training data.

Each reader turns one corpus folder (its format is described in the folder's README.md) into
`Doc`s: a document id (the unit of the train/held-out split), the text to train on, and texts
written differently about the same document (questions, headlines, titles) for the second
evaluation set. `SOURCES` maps every corpus to its domain and reader.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightseek.data.corpus import iter_records
from lightseek.errors import DataError


@dataclass
class Doc:
    """One document. ``questions`` go to the second set when the document is held out, or
    whatever its split when ``questions_unseen`` (they never occur in any training text)."""

    doc_id: str
    text: str
    questions: list[str] = field(default_factory=list)
    questions_unseen: bool = False


Reader = Callable[[Path, int], Iterator[Doc]]


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for _, index, _, record in iter_records(path):
        yield index, record


def _medquad(folder: Path, section_chars: int) -> Iterator[Doc]:
    for path in sorted(folder.glob("*.jsonl")):
        for i, r in _jsonl(path):
            yield Doc(str(r.get("id", f"{path.name}:{i}")), r.get("answer") or "", [r.get("question") or ""])


def _pubmedqa(folder: Path, section_chars: int) -> Iterator[Doc]:
    data = json.loads((folder / "ori_pqal.json").read_text(encoding="utf-8"))
    for pmid, r in sorted(data.items()):
        text = " ".join(r.get("CONTEXTS", [])) + "\n" + r.get("LONG_ANSWER", "")
        yield Doc(pmid, text, [r.get("QUESTION", "")])


def _dialogue_zh(folder: Path, section_chars: int) -> Iterator[Doc]:
    for path in sorted(folder.glob("*.csv")):
        for i, r in _jsonl(path):
            yield Doc(f"{path.name}:{i}", r.get("answer", ""), [r.get("ask", "")])


def _fiqa(folder: Path, section_chars: int) -> Iterator[Doc]:
    for path in sorted(folder.glob("*.jsonl")):
        for i, r in _jsonl(path):
            yield Doc(f"{path.name}:{i}", r.get("answer", ""), [r.get("question", "")])


def _phrasebank(folder: Path, section_chars: int) -> Iterator[Doc]:
    for i, r in _jsonl(folder / "all-data.csv"):
        yield Doc(str(i), r.get("content", ""))


def _reuters(folder: Path, section_chars: int) -> Iterator[Doc]:
    for path in sorted(folder.glob("*.jsonl")):
        for i, r in _jsonl(path):
            text = r.get("text", "")
            headline = text.strip().split("\n", 1)[0]
            yield Doc(str(r.get("id", f"{path.name}:{i}")), text, [headline] if headline.isupper() else [])


def _cuad(folder: Path, section_chars: int) -> Iterator[Doc]:
    """Full contracts to train on; clause excerpts (master_clauses.csv) of the other contracts,
    which no training text contains, for the second set."""
    full = sorted((folder / "full_contract_txt_sample").glob("*.txt"))
    for path in full:
        yield Doc(path.name, path.read_text(encoding="utf-8", errors="replace"))
    names = {p.stem for p in full}
    skip = {"Document Name", "Parties", "Agreement Date", "Effective Date", "Expiration Date"}
    csv.field_size_limit(1 << 30)
    clauses = []
    for _, r in _jsonl(folder / "master_clauses.csv"):
        if Path(r.get("Filename", "")).stem in names:
            continue
        for col, value in r.items():
            if col in skip or col.endswith("Answer") or not value.startswith("["):
                continue
            try:
                clauses += [c for c in ast.literal_eval(value) if isinstance(c, str)]
            except (ValueError, SyntaxError):
                continue
    yield Doc("master_clauses.csv", "", clauses, questions_unseen=True)


_HEADING = re.compile(r"^#+\s*(.+?)\s*$")


def _laws_zh(folder: Path, section_chars: int) -> Iterator[Doc]:
    """Law articles and case reports (headings removed) to train on; their titles (law names;
    case titles are questions) for the second set. Chapter headings ("第一章 总则") are dropped
    from both: most say nothing about the domain."""
    for path in sorted(p for p in folder.rglob("*.md") if p.parent != folder):  # not README.md
        text = path.read_text(encoding="utf-8")
        _, marker, rest = text.partition("<!-- INFO END -->")  # the header above it: dates, sources
        rest = rest if marker else text
        titles = [line[2:].strip() for line in text.splitlines() if line.startswith("# ")]
        kept = "\n".join(line for line in rest.splitlines() if not _HEADING.match(line))
        yield Doc(str(path.relative_to(folder)), kept, titles[:1], questions_unseen=True)


def _sections(text: str, size: int) -> list[str]:
    """Consecutive blocks of about ``size`` characters, cut at paragraph breaks."""
    out, buf, n = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        buf.append(para)
        n += len(para)
        if n >= size:
            out.append("\n\n".join(buf))
            buf, n = [], 0
    if buf:
        out.append("\n\n".join(buf))
    return out


def _books(pattern: str) -> Reader:
    def read(folder: Path, section_chars: int) -> Iterator[Doc]:
        for path in sorted(folder.glob(pattern)):
            text = path.read_text(encoding="utf-8", errors="replace")
            for k, section in enumerate(_sections(text, section_chars)):
                yield Doc(f"{path.relative_to(folder)}#{k}", section)
    return read


def poem_texts(data) -> Iterator[str]:
    """Texts from the poetry collections' JSON (lists of records with 'paragraphs' or 'content',
    possibly nested); every string list becomes one text."""
    if isinstance(data, dict):
        for key in ("paragraphs", "content"):
            if isinstance(data.get(key), list) and all(isinstance(x, str) for x in data[key]):
                yield "\n".join(data[key])
                return
        for v in data.values():
            if isinstance(v, (list, dict)):
                yield from poem_texts(v)
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, (list, dict)):
                yield from poem_texts(item)


def _poetry(folder: Path, section_chars: int) -> Iterator[Doc]:
    for path in sorted(folder.glob("*/*.json")):
        for i, poem in enumerate(poem_texts(json.loads(path.read_text(encoding="utf-8")))):
            yield Doc(f"{path.relative_to(folder)}#{i}", poem)


def _cmrc(folder: Path, section_chars: int) -> Iterator[Doc]:
    for path in sorted(folder.glob("*.json")):
        for i, r in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            yield Doc(f"{path.name}:{r.get('context_id', i)}", r.get("context_text", ""),
                      [q.get("query_text", "") for q in r.get("qas", [])])


def _drcd(folder: Path, section_chars: int) -> Iterator[Doc]:
    for path in sorted(folder.glob("*.json")):
        for a, article in enumerate(json.loads(path.read_text(encoding="utf-8"))["data"]):
            for p, para in enumerate(article.get("paragraphs", [])):
                yield Doc(f"{path.name}:{a}:{p}", para.get("context", ""),
                          [q.get("question", "") for q in para.get("qas", [])])


def _alpaca(pattern: str, limit_files: int) -> Reader:
    def read(folder: Path, section_chars: int) -> Iterator[Doc]:
        for path in sorted(folder.glob(pattern))[:limit_files]:
            for i, r in _jsonl(path):
                question = "\n".join(x for x in (r.get("instruction", ""), r.get("input", "")) if x)
                yield Doc(f"{path.name}:{i}", r.get("output", ""), [question])
    return read


# corpus folder -> (domain, reader, is instruction data)
SOURCES: dict[str, tuple[str, Reader, bool]] = {
    "medical_medquad_en": ("medical", _medquad, False),
    "medical_pubmedqa_en": ("medical", _pubmedqa, False),
    "medical_dialogue_zh": ("medical", _dialogue_zh, False),
    "finance_fiqa_en": ("finance", _fiqa, False),
    "finance_phrasebank_en": ("finance", _phrasebank, False),
    "finance_reuters21578_en": ("finance", _reuters, False),
    "legal_cuad_en": ("legal", _cuad, False),
    "legal_laws_zh": ("legal", _laws_zh, False),
    "en_gutenberg": ("general", _books("*.txt"), False),
    "en_tinyshakespeare": ("general", _books("input.txt"), False),
    "en_us_presidential_speeches": ("general", _books("*/*.txt"), False),
    "zh_classical_poetry": ("general", _poetry, False),
    "zh_cmrc2018_wiki": ("general", _cmrc, False),
    "zh_drcd_wiki_traditional": ("general", _drcd, False),
    "instruct_alpaca_en": ("general", _alpaca("*.json", 2), True),
    "instruct_alpaca_zh": ("general", _alpaca("*.jsonl", 1), True),
}


def read_source(root: Path, name: str, section_chars: int) -> list[Doc]:
    """The documents of corpus ``name`` under ``root``; a DataError names a malformed file."""
    _, reader, _ = SOURCES[name]
    try:
        return list(reader(root / name, section_chars))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{root / name}: cannot read ({type(e).__name__}: {e})") from None
