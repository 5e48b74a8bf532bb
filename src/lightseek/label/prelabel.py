"""Pre-labels from the project's own models, each recorded with the model's name, its version
(the sha256 of its files) and a score, so that an annotator sees the suggestion and the export
says which model made it:

    domains  a domain classifier (`lightseek domains train`): the top domain and its probability
    safety   the safety classifiers (`lightseek safety train`): the categories at or over the
             policy's thresholds, scored by how sure the cascade is (|harmful - 0.5| * 2, mapped to [0.5, 1])
    model    a lightseek model (checkpoint, adapter spec or fetched name) answers each question:
             the answer, scored by exp(mean log-probability per token) of the answer under it

Scores feed active learning: least confidence orders items by 1 - the best score.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from lightseek.label.store import LabelStore
from lightseek.label.tasks import LabelError

KINDS = {"domains": ("classify",), "safety": ("safety",), "model": ("qa",)}


def _files_sha(folder: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob(pattern)):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _texts(store: LabelStore, pid: int, field: str, limit: int | None, only_new: str | None):
    """(item ids, texts) of a project's open items, skipping those that model already pre-labelled."""
    done = set()
    if only_new:
        import sqlalchemy as sa

        from lightseek.label import tables as t

        with store.engine.connect() as c:
            done = set(c.execute(sa.select(t.prelabels.c.item_id).join(t.items, t.items.c.id == t.prelabels.c.item_id)
                                 .where(t.items.c.project_id == pid, t.prelabels.c.model == only_new)).scalars())
    ids, texts = [], []
    for r in store.iter_items(pid, status="open"):
        if limit is not None and len(ids) >= limit:
            break
        if r["id"] not in done:
            ids.append(r["id"])
            texts.append(r["data"][field])
    return ids, texts


def prelabel(store: LabelStore, project: str | int, kind: str, source: str, limit: int | None = None,
             batch: int = 256, max_tokens: int = 128, temperature: float = 0.0, log=print) -> int:
    """Pre-label a project's open items with ``source`` (a classifier folder or a model spec)."""
    p = store.project(project)
    if kind not in KINDS:
        raise LabelError(f"pre-labels come from {', '.join(KINDS)}; not {kind!r}")
    if p["task"] not in KINDS[kind]:
        raise LabelError(f"{kind} pre-labels are for {' and '.join(KINDS[kind])} projects; "
                         f"{p['name']!r} is a {p['task']} project")
    name = f"{kind}:{Path(source).name}"
    ids, texts = _texts(store, p["id"], "question" if kind == "model" else "text", limit, name)
    if not ids:
        log(f"{p['name']}: no open item without a pre-label from {name}")
        return 0
    predict, version = _predictor(kind, source, p, max_tokens, temperature)
    added = empty = 0
    for i in range(0, len(ids), batch):
        values = predict(texts[i:i + batch])
        rows = [{"item_id": iid, "model": name, "version": version, "value": vs[0], "score": vs[1]}
                for iid, vs in zip(ids[i:i + batch], values) if vs is not None]
        added += store.add_prelabels(p["id"], rows) if rows else 0
        empty += len(values) - len(rows)
        log(f"{p['name']}: {added}/{len(ids)} pre-labelled by {name}"
            + (f" ({empty} without a suggestion: the model wrote nothing)" if empty else ""))
    return added


def _predictor(kind: str, source: str, project: dict, max_tokens: int, temperature: float):
    labels = project["config"].labels
    if kind == "domains":
        from lightseek.data.domains.classifier import DomainClassifier

        clf = DomainClassifier.load(source)
        missing = sorted(set(clf.domains) - set(labels))
        if missing:
            raise LabelError(f"the classifier predicts {missing}, which are not labels of {project['name']!r} "
                             f"({', '.join(labels)})")

        def predict(texts):
            return [({"labels": [d]}, round(float(c), 4)) for d, c in
                    ((clf.domains[int(row.argmax())], row.max()) for row in clf.predict_proba(texts))]
        return predict, _files_sha(Path(source), "*")
    if kind == "safety":
        from lightseek.safety.cascade import Moderator

        mod = Moderator(source)

        def predict(texts):
            return [({"categories": [c for c in d.categories if c in labels]},
                     round(0.5 + abs(d.harmful - 0.5), 4)) for d in mod.check(texts)]
        return predict, _files_sha(Path(source), "*.pkl")
    from lightseek.distill.generators import GenerationConfig, answer_logprob, make_generator

    gen = make_generator(source, GenerationConfig(max_tokens=max_tokens, temperature=temperature))
    version = gen.version.get("sha256", "")[:16] or "endpoint"

    def predict(texts):
        out = []
        for q, a in zip(texts, gen.generate(texts, seeds=list(range(len(texts))))):
            if not a["text"]:  # nothing to suggest
                out.append(None)
                continue
            lp = answer_logprob(gen.local, q, a["text"]) if hasattr(gen, "local") else float("nan")
            out.append(({"answer": a["text"]}, None if math.isnan(lp) else round(math.exp(lp), 4)))
        return out
    return predict, version
