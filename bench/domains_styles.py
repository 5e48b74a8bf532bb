"""The domain classifier on text written differently from anything it trained on: leave one source out.

Each source corpus of the built domain data (`lightseek domains build`: medical answers,
abstracts and patient dialogues; finance forum answers, analyst sentences and news; contracts
and Chinese statutes; books, speeches, poetry, wiki and instructions for `general`) has its own
style. For every source, a classifier is trained on all *other* sources' training passages and
scored on the left-out source's held-out passages and questions, so its style is one the
classifier never saw. Predictions of all the left-out runs are pooled per language (English,
Chinese) into per-domain precision / recall / F1 and macro-F1; per source, accuracy. A source
that is the only one of its domain in its language (English contracts, Chinese statutes and
patient dialogues) can only be recognised across languages: those are reported, and pooled
separately, so that the figure for styles with a same-language sibling is not hidden by them.

    python bench/domains_styles.py [--data runs/domains/data] [--model NAME [--layer L]]
                                   [--max-test 300] [--result NAME]

Features: TF-IDF n-grams (default), or --model (a lightseek checkpoint or fetched model such as
smollm2-135m-instruct: the mean of block --layer's hidden states beside the n-grams; features are
cached per text, so the sixteen runs embed each text once), or --zero-shot MODEL (the instruct
model is asked; nothing is trained, so leaving a source out changes only the label set).
Predictions are the plain argmax (threshold 0: no `general` fallback). Writes
bench/results/domains_styles.json (TF-IDF), domains_styles_model.json (--model) or
domains_styles_zero-shot.json (--zero-shot).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, read_jsonl, result_name, write_result  # noqa: E402


def language(source: str) -> str:
    return "zh" if source.startswith("zh_") or "_zh" in source else "en"


def test_rows(data: Path, source: str, limit: int) -> list[dict]:
    """The left-out source's held-out passages and questions, at most ``limit`` (a fixed sample)."""
    rows = [r for name in ("heldout.jsonl", "questions.jsonl") if (data / name).is_file()
            for r in read_jsonl(data / name) if r["source"] == source]
    random.Random(source).shuffle(rows)
    return rows[:limit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/domains/data", help="a folder made by `lightseek domains build`")
    ap.add_argument("--model", help="lightseek checkpoint or fetched model: its hidden states beside TF-IDF")
    ap.add_argument("--layer", type=int, default=-1, help="the block of --model whose output is pooled")
    ap.add_argument("--no-tfidf", dest="tfidf", action="store_false", help="--model: its features alone, no n-grams")
    ap.add_argument("--zero-shot", help="an instruct model asked for each text's domain (nothing trained)")
    ap.add_argument("--max-test", type=int, default=300, help="test texts per left-out source")
    ap.add_argument("--result")
    args = ap.parse_args()
    # one result per feature kind: the n-gram baseline, the model's features, the zero-shot model
    kind = "_zero-shot" if args.zero_shot else "_model" if args.model else ""
    stem = result_name("domains_styles" + kind, args, {"data": "runs/domains/data", "layer": -1, "max_test": 300,
                                                       "tfidf": True})

    from lightseek.data.domains import DomainClassifier, DomainConfig
    from lightseek.data.domains.metrics import evaluate

    data = ROOT / args.data
    if not (data / "train.jsonl").is_file():
        print(f"{data} is missing: building it with `lightseek domains build`", flush=True)
        subprocess.run([sys.executable, "-m", "lightseek", "domains", "build", "--out", str(data)], check=True,
                       cwd=ROOT)
    train = read_jsonl(data / "train.jsonl")
    sources = sorted({r["source"] for r in train})
    domain_of = {r["source"]: r["domain"] for r in train}
    alone = {s for s in sources if not any(o != s and domain_of[o] == domain_of[s] and language(o) == language(s)
                                           for o in sources)}
    cfg = DomainConfig(threshold=0.0, model=args.model or "", model_layer=args.layer, zero_shot=args.zero_shot or "",
                       model_tfidf=args.tfidf)
    per_source, pooled = {}, defaultdict(lambda: ([], []))
    t0 = time.perf_counter()
    for source in sources:
        rows = test_rows(data, source, args.max_test)
        if not rows:
            continue
        kept = [r for r in train if r["source"] != source]
        start = time.perf_counter()
        clf = DomainClassifier.fit([r["text"] for r in kept], [r["domain"] for r in kept], cfg)
        predicted = [d for d, _ in clf.predict([r["text"] for r in rows])]
        truth = [r["domain"] for r in rows]
        wrong = defaultdict(int)
        for t, p in zip(truth, predicted):
            if t != p:
                wrong[p] += 1
        acc = sum(t == p for t, p in zip(truth, predicted)) / len(rows)
        per_source[source] = {"domain": domain_of[source], "language": language(source), "n": len(rows),
                              "accuracy": acc, "only_one_of_its_domain_in_its_language": source in alone,
                              "predicted_instead": dict(sorted(wrong.items())), "fit_s": time.perf_counter() - start}
        group = f"{language(source)}{' (alone)' if source in alone else ''}"
        pooled[group][0].extend(truth)
        pooled[group][1].extend(predicted)
        print(f"{source:30s} {domain_of[source]:8s} accuracy {acc:.3f} on {len(rows)}"
              f"{'  (alone in its language)' if source in alone else ''}", flush=True)
    reports = {g: evaluate(t, p) for g, (t, p) in sorted(pooled.items())}
    print("\n| pooled left-out sources | macro-F1 | accuracy | texts |\n|---|---:|---:|---:|")
    for g, r in reports.items():
        print(f"| {g} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {r['n']} |")
    features = (f"zero-shot {args.zero_shot}" if args.zero_shot else
                f"model{'+tfidf' if args.tfidf else ''} {args.model}" if args.model else "tfidf")
    out = write_result(stem, {**provenance(), "features": features, "layer": args.layer if args.model else None,
                              "max_test": args.max_test, "wall_s": time.perf_counter() - t0,
                              "sources": per_source, "pooled": reports})
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
