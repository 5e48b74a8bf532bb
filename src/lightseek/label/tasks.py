"""LabelHub's task types: a project's settings, what an item holds, what an annotation may say.

    classify  a text gets one label (or several, ``multi``)        {"labels": ["medical"]}
    qa        a question gets an answer, written or corrected from the model's draft
                                                                    {"answer": "..."}
    rank      a prompt's responses are ordered best first           {"ranking": [2, 0, 1]}
    spans     character ranges of a text are tagged                 {"spans": [[0, 3, "PER"], ...]}
    safety    a text gets the safety policy's categories it violates (none: harmless)
                                                                    {"categories": ["S10"]}

Span offsets count Unicode code points (Python's string indices), so a span in Chinese text is
the same characters wherever it is read; the browser converts from its UTF-16 offsets.
Every check raises `LabelError` naming the field at fault: the API turns it into a 422.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from lightseek.errors import LightseekError

TASKS = ("classify", "qa", "rank", "spans", "safety")
ORDERS = ("sequential", "least_confidence", "disagreement")
REVIEWS = ("disagreement", "all", "none")
# export format -> the task types it is made from (see export.py)
EXPORT_FORMATS = {"messages": ("qa", "rank"), "alpaca": ("qa", "rank"), "preference": ("qa", "rank"),
                  "domains": ("classify",), "safety": ("safety",), "spans": ("spans",)}


class LabelError(LightseekError):
    """Input a LabelHub user sent that cannot be taken (the message names the field)."""


class NotFound(LabelError):
    """A project, item or user that does not exist (or that the caller may not see): 404."""


def is_int(x) -> bool:
    """An integer as JSON has one (True and 1.0 are not)."""
    return type(x) is int


def safety_categories() -> list[str]:
    from lightseek.safety.policy import CATEGORIES

    return list(CATEGORIES)


@dataclass
class ProjectConfig:
    """A project's settings (stored as JSON with the project)."""
    labels: list[str] = field(default_factory=list)  # classify and spans; safety: the policy's S1-S13
    multi: bool = False                              # classify: several labels per text
    overlap: int = 1                                 # annotators per item
    order: str = "sequential"                        # sequential | least_confidence | disagreement
    review: str = "disagreement"                     # items for review: disagreement | all | none
    instructions: str = ""
    lease_hours: float = 24.0                        # an unanswered item goes back to the pool after this

    @classmethod
    def of(cls, task: str, raw: dict | None) -> ProjectConfig:
        if task not in TASKS:
            raise LabelError(f"task {task!r}: choose one of {', '.join(TASKS)}")
        if raw is not None and not isinstance(raw, dict):
            raise LabelError("config: the project's settings must be a JSON object")
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise LabelError(f"unknown project setting(s): {', '.join(sorted(unknown))}")
        for name, kind in (("labels", list), ("multi", bool), ("instructions", str), ("order", str), ("review", str)):
            if name in raw and not isinstance(raw[name], kind):
                raise LabelError(f"{name}: must be a JSON {kind.__name__.replace('str', 'string')}")
        if "lease_hours" in raw and not (type(raw["lease_hours"]) in (int, float) and raw["lease_hours"] > 0):
            raise LabelError(f"lease_hours {raw['lease_hours']!r}: hours an item waits for its annotator, > 0")
        if "overlap" in raw and not is_int(raw["overlap"]):
            raise LabelError(f"overlap {raw['overlap']!r}: annotators per item, 1 to 20")
        cfg = cls(**raw)
        if task == "safety" and not cfg.labels:
            cfg.labels = safety_categories()
        if task in ("classify", "spans", "safety"):
            if not cfg.labels or not all(isinstance(x, str) and x.strip() for x in cfg.labels):
                raise LabelError(f"labels: a {task} project needs a list of label names")
            if len(set(cfg.labels)) != len(cfg.labels):
                raise LabelError("labels: a label is listed twice")
        if task == "safety" and set(cfg.labels) - set(safety_categories()):
            raise LabelError(f"labels: {sorted(set(cfg.labels) - set(safety_categories()))} are not the safety "
                             "policy's categories (S1-S13)")
        if not isinstance(cfg.overlap, int) or not 1 <= cfg.overlap <= 20:
            raise LabelError(f"overlap {cfg.overlap!r}: annotators per item, 1 to 20")
        if cfg.order not in ORDERS:
            raise LabelError(f"order {cfg.order!r}: choose one of {', '.join(ORDERS)}")
        if cfg.review not in REVIEWS:
            raise LabelError(f"review {cfg.review!r}: choose one of {', '.join(REVIEWS)}")
        return cfg

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def _text(rec: dict, name: str, *fields: str) -> str:
    for f in fields:
        v = rec.get(f)
        if isinstance(v, str) and v.strip():
            return v
    raise LabelError(f"{name}: the record has no text in {' / '.join(fields)}")


def item_data(task: str, rec: dict) -> tuple[dict, dict]:
    """(the item's data, its provenance) from one imported record. A DataDistiller record
    ({"messages": [user, assistant], domain, expert, ...}) becomes a question with the distilled
    answer as its draft, the rest of the record kept as provenance."""
    if not isinstance(rec, dict):
        raise LabelError("a record must be a JSON object")
    rec = dict(rec)
    msgs = rec.pop("messages", None)
    if isinstance(msgs, list) and msgs:
        users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        answers = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "assistant"]
        if users:
            rec.setdefault("question", users[0])
            rec.setdefault("text", users[0])
        if answers:
            rec.setdefault("draft", answers[-1])
    if task in ("classify", "spans", "safety"):
        data = {"text": _text(rec, "text", "text", "question", "prompt", "input")}
    elif task == "qa":
        data = {"question": _text(rec, "question", "question", "instruction", "prompt", "text")}
        if rec.get("input"):
            data["context"] = str(rec["input"])
        draft = rec.get("draft") or rec.get("answer") or rec.get("output")
        if draft:
            data["draft"] = str(draft)
    else:  # rank
        responses = rec.get("responses")
        if responses is None and rec.get("chosen") and rec.get("rejected"):
            responses = [rec["chosen"], rec["rejected"]]
        if not (isinstance(responses, list) and len(responses) >= 2 and all(isinstance(r, str) for r in responses)):
            raise LabelError("responses: a rank item needs a list of at least two response texts")
        data = {"prompt": _text(rec, "prompt", "prompt", "question", "instruction", "text"), "responses": responses}
    used = {"text", "question", "prompt", "instruction", "input", "draft", "answer", "output", "responses",
            "chosen", "rejected"}
    source = {k: v for k, v in rec.items() if k not in used}
    return data, source


def check_value(task: str, cfg: ProjectConfig, data: dict, value) -> dict:
    """The annotation ``value`` normalised, or LabelError naming what is wrong."""
    if not isinstance(value, dict):
        raise LabelError("value: an annotation value must be a JSON object")
    if task == "classify":
        labels = value.get("labels")
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not labels:
            raise LabelError("labels: choose at least one label")
        bad = [x for x in labels if not isinstance(x, str) or x not in cfg.labels]
        if bad:
            raise LabelError(f"labels: {bad} are not this project's labels")
        if not cfg.multi and len(labels) != 1:
            raise LabelError("labels: this project takes exactly one label per item")
        return {"labels": sorted(set(labels), key=cfg.labels.index)}
    if task == "safety":
        cats = value.get("categories")
        if not isinstance(cats, list) or any(not isinstance(c, str) or c not in cfg.labels for c in cats):
            raise LabelError(f"categories: a list of the policy's categories ({', '.join(cfg.labels)}), "
                             "empty for harmless")
        return {"categories": sorted(set(cats), key=cfg.labels.index)}
    if task == "qa":
        answer = value.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise LabelError("answer: write an answer (empty is not one)")
        return {"answer": answer.strip()}
    if task == "rank":
        ranking, n = value.get("ranking"), len(data["responses"])
        if not isinstance(ranking, list) or not all(map(is_int, ranking)) or sorted(ranking) != list(range(n)):
            raise LabelError(f"ranking: every response index 0..{n - 1} once, best first")
        return {"ranking": ranking}
    spans, text = value.get("spans"), data["text"]
    if not isinstance(spans, list):
        raise LabelError("spans: a list of [start, end, label]")
    out = []
    for s in spans:
        if not (isinstance(s, (list, tuple)) and len(s) == 3):
            raise LabelError(f"spans: {s!r} is not [start, end, label]")
        start, end, label = s
        if not (is_int(start) and is_int(end) and 0 <= start < end <= len(text)):
            raise LabelError(f"spans: [{start!r}, {end!r}] is not a range of the text's {len(text)} characters")
        if not isinstance(label, str) or label not in cfg.labels:
            raise LabelError(f"spans: label {label!r} is not one of this project's labels")
        out.append([start, end, label])
    return {"spans": sorted(map(list, {tuple(s) for s in out}))}


def value_key(task: str, value: dict):
    """A hashable form of a value, equal for annotations that say the same thing (agreement)."""
    if task == "classify":
        labels = value["labels"]
        return labels[0] if len(labels) == 1 else tuple(labels)
    if task == "safety":
        return tuple(value["categories"]) or "safe"
    if task == "rank":
        return tuple(value["ranking"])
    if task == "spans":
        return tuple(tuple(s) for s in value["spans"])
    return " ".join(value["answer"].split())


def read_records(name: str, content: bytes | str) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) of a JSONL or CSV upload; a broken line is a LabelError
    naming it. CSV columns are the header's names."""
    try:
        text = content.decode("utf-8-sig") if isinstance(content, bytes) else content
    except UnicodeDecodeError as e:
        raise LabelError(f"{name}: not UTF-8 (byte {e.start})") from None
    if name.lower().endswith(".csv"):
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        rows = csv.DictReader(io.StringIO(text, newline=""))
        i = 1
        try:
            for i, row in enumerate(rows, start=2):
                yield i, {k: v for k, v in row.items() if k is not None}
        except csv.Error as e:
            raise LabelError(f"{name} row {i + 1}: not CSV ({e})") from None
        return
    # JSON lines end at \n only: U+2028 and the like may stand raw inside a JSON string
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelError(f"{name} line {i}: not JSON ({e.msg})") from None
        yield i, rec
