"""A project's numbers for its dashboard and `lightseek label stats`: progress (items by status,
annotations per annotator and per day), agreement (Fleiss' kappa, Krippendorff's alpha, per
label, per annotator, and over time), and the distribution of the labels items ended with.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from lightseek.label import agreement
from lightseek.label.store import LabelStore, resolve
from lightseek.label.tasks import value_key


def _day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def project_stats(store: LabelStore, pid: int) -> dict:
    p = store.project(pid)
    task = p["task"]
    progress = store.progress(pid)
    anns = store.annotations(pid)
    reviews = store.reviews(pid)
    units: dict[int, dict[str, object]] = defaultdict(dict)
    per_user: dict[str, dict] = defaultdict(lambda: {"annotations": 0, "seconds": [], "days": Counter()})
    last_at: dict[int, int] = {}
    for a in anns:
        units[a["item_id"]][a["username"]] = value_key(task, a["value"])
        u = per_user[a["username"]]
        u["annotations"] += 1
        u["days"][_day(a["created_at"])] += 1
        if a["seconds"] is not None:
            u["seconds"].append(a["seconds"])
        last_at[a["item_id"]] = max(last_at.get(a["item_id"], 0), a["created_at"])
    labels = p["config"].labels if task in ("classify", "safety") else None
    summary = agreement.summary(dict(units), labels=labels) if units else {}
    quality = summary.get("per_annotator", {})
    annotators = [{"user": name, "annotations": u["annotations"],
                   "median_seconds": (sorted(u["seconds"])[len(u["seconds"]) // 2] if u["seconds"] else None),
                   "kappa": quality.get(name, {}).get("kappa"), "agreement": quality.get(name, {}).get("agreement"),
                   "per_day": dict(sorted(u["days"].items()))} for name, u in sorted(per_user.items())]
    over_time: dict[str, list[float]] = defaultdict(list)
    for item_id, users in units.items():
        if len(users) >= 2:
            a = agreement.item_agreement(list(users.values()), spans=task == "spans")
            if a is not None:
                over_time[_day(last_at[item_id])].append(a)
    distribution: Counter = Counter()
    by_item: dict[int, list[dict]] = defaultdict(list)
    for a in anns:
        by_item[a["item_id"]].append(a["value"])
    for item_id, values in by_item.items():
        r = reviews.get(item_id)
        if r and r["decision"] == "reject":
            continue
        value = r["value"] if r and r["value"] is not None else resolve(task, values)[0]
        distribution.update(_labels_of(task, value))
    total, finished = progress["items"], progress["finished"]
    return {
        "project": p["name"], "task": task, "items": total, "by_status": progress["by_status"],
        "finished": finished, "progress": round(finished / total, 4) if total else 0.0,
        "annotations": len(anns), "reviews": len(reviews),
        "review_decisions": dict(Counter(r["decision"] for r in reviews.values())),
        "agreement": {k: v for k, v in summary.items() if k != "per_annotator"},
        "agreement_over_time": {d: round(sum(v) / len(v), 4) for d, v in sorted(over_time.items())},
        "annotators": annotators,
        "label_distribution": dict(distribution.most_common()),
    }


def _labels_of(task: str, value: dict) -> list[str]:
    if task == "classify":
        return value["labels"]
    if task == "safety":
        return value["categories"] or ["safe"]
    if task == "spans":
        return [s[2] for s in value["spans"]]
    if task == "rank":
        return [f"response {value['ranking'][0]} best"]
    return ["answered"]
