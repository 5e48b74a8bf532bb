"""LabelHub's exports: a project's finished items as the training files of the commands that use
them, each record carrying its provenance under ``labelhub`` (who annotated it and when, the
pre-label shown, the agreement, how the value was decided, the review, the import's source).

    messages    {"messages": [user, assistant]}              `lora train`, `sft`, `distill`   (qa, rank)
    alpaca      {"instruction", "input", "output"}           `lora train`, `sft`              (qa, rank)
    preference  {"prompt", "chosen", "rejected"}             preference tuning  (rank; qa corrections of a draft)
    domains     {"text", "domain"}                           `domains train`                   (classify)
    safety      {"text", "categories", "lang"}               `safety train --extra`            (safety)
    spans       {"text", "spans": [{start, end, label, text}]}                                  (spans)

An item is exported once it is complete or reviewed (never when rejected). ``min_agreement``
keeps items whose annotators agreed at least that much, and items a reviewer accepted or
adjudicated (a reviewer's decision stands for agreement).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from lightseek.label.store import LabelStore, resolve
from lightseek.label.tasks import EXPORT_FORMATS as FORMATS
from lightseek.label.tasks import LabelError

CJK = re.compile(r"[\u3400-\u9fff]")


def export_records(store: LabelStore, project: str | int, fmt: str, min_agreement: float | None = None) -> list[dict]:
    p = store.project(project)
    if fmt not in FORMATS:
        raise LabelError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if p["task"] not in FORMATS[fmt]:
        own = ", ".join(f for f, ts in FORMATS.items() if p["task"] in ts)
        raise LabelError(f"format {fmt!r} is for {' and '.join(FORMATS[fmt])} projects; {p['name']!r} is a "
                         f"{p['task']} project (its formats: {own})")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise LabelError(f"min_agreement {min_agreement}: between 0 and 1")
    anns: dict[int, list[dict]] = {}
    for a in store.annotations(p["id"]):
        anns.setdefault(a["item_id"], []).append(a)
    reviews = store.reviews(p["id"])
    shown = store.prelabels([a["prelabel_id"] for rows in anns.values() for a in rows if a["prelabel_id"]])
    out = []
    for status in ("complete", "reviewed"):
        for item in store.iter_items(p["id"], status):
            review = reviews.get(item["id"])
            item_anns = anns.get(item["id"], [])
            if review and review["decision"] != "reject":
                value, how = review["value"], f"review:{review['decision']}"
            elif item_anns:
                value, how = resolve(p["task"], [a["value"] for a in item_anns])
            else:
                continue
            if min_agreement is not None and not review and (item["agreement"] is None
                                                              or item["agreement"] < min_agreement):
                continue
            prov = _provenance(p, item, item_anns, review, how, shown)
            out.extend({**rec, "labelhub": prov} for rec in _records(fmt, p, item, value))
    return out


def _provenance(p: dict, item: dict, anns: list[dict], review: dict | None, how: str, shown: dict) -> dict:
    used = [shown.get(a["prelabel_id"]) for a in anns if a["prelabel_id"]]
    return {"project": p["name"], "item_id": item["id"], "agreement": item["agreement"], "decided_by": how,
            "annotators": [{"user": a["username"], "at": _iso(a["updated_at"]), "seconds": a["seconds"],
                            "prelabel_id": a["prelabel_id"]} for a in anns],
            "prelabels": [{k: x[k] for k in ("model", "version", "score")} for x in used if x],
            "review": None if not review else {"reviewer": review["username"], "decision": review["decision"],
                                                "at": _iso(review["created_at"]), "note": review["note"]},
            "source": item["source"]}


def _iso(ts: int | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _records(fmt: str, p: dict, item: dict, value: dict) -> list[dict]:
    data, task = item["data"], p["task"]
    if fmt == "domains":
        return [{"text": data["text"], "domain": value["labels"][0],
                 **({"domains": value["labels"]} if p["config"].multi else {})}]
    if fmt == "safety":
        return [{"text": data["text"], "categories": value["categories"],
                 "lang": "zh" if CJK.search(data["text"]) else "en"}]
    if fmt == "spans":
        chars = data["text"]
        return [{"text": chars, "spans": [{"start": s, "end": e, "label": lab, "text": chars[s:e]}
                                          for s, e, lab in value["spans"]]}]
    if task == "qa":
        prompt = data["question"] + (f"\n\n{data['context']}" if data.get("context") else "")
        answer, others = value["answer"], ([data["draft"]] if data.get("draft") else [])
    else:  # rank: the best response is the answer, every other one loses to it
        prompt = data["prompt"]
        answer, others = data["responses"][value["ranking"][0]], [data["responses"][i] for i in value["ranking"][1:]]
    if fmt == "messages":
        return [{"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}]
    if fmt == "alpaca":
        return [{"instruction": data.get("question", prompt), "input": data.get("context", ""), "output": answer}]
    # preference: a corrected draft is a pair (the expert's answer over the model's); an accepted
    # draft, unchanged, is none
    return [{"prompt": prompt, "chosen": answer, "rejected": o} for o in others
            if " ".join(o.split()) != " ".join(answer.split())]


def write_export(records: list[dict], out: str | Path) -> Path:
    """JSONL, written atomically."""
    from lightseek.fileio import atomic_write_text

    out = Path(out)
    if not out.parent.is_dir():
        raise LabelError(f"{out}: its folder does not exist")
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return out
