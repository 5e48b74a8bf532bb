"""The moderation cascade on the shared safety sets' fixed validation splits: each stage alone
and the cascade, per language and per category, and its latency.

Reported, per language (harmful vs harmless prompts and responses of that language):
  precision, recall, F1 and the false-positive rate on harmless texts at the policy's default
  thresholds (0.5), and the recall a stage reaches at a 5% false-positive rate (the targets ask
  recall >= 0.95 there);
per category: precision, recall, F1 (one category against the rest, on the harmful texts);
per source: recall and false-positive rate (how a stage generalises across ways of writing);
the OpenAI moderation set's held-out part: F1 of "flagged" (the published guard models' figure);
other sources: 120 prompts written for this project (bench/data/), harmful and harmless about
sensitive topics in both languages, scored apart: how the stages do on text unlike any they saw;
over-refusal: the share of harmless validation questions that mention sensitive topics
(medicine, law, security, history, violence) which the stage blocks;
latency: per single text of about 256 tokens, p50 and p95 on this machine (2 cores).

The model stage (hidden states of a real model) is scored on a fixed sample of the validation
texts (--model-sample), since each text costs a forward pass; the cascade asks it only about the
texts the linear stage is unsure of. ToxiCN (non-commercial, no derivatives) is in the
evaluation only: no stage was trained on it.

    python bench/safety_eval.py [--classifier runs/safety] [--model-sample 2000] [--result NAME]

Trains the classifiers first when --classifier has none (`lightseek safety train`; add
--train-model smollm2-135m-instruct for the model stage). Prints markdown tables and writes
bench/results/safety_eval.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

OTHER = ROOT / "bench" / "data" / "safety_other_sources.jsonl"  # prompts written here, not from the shared sets
DEFAULTS = {"classifier": str(ROOT / "runs" / "safety"), "model_sample": 2000, "latency_texts": 200}


def prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, tn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "fpr": fp / (fp + tn) if fp + tn else 0.0, "harmful": tp + fn, "harmless": fp + tn}


def recall_at_fpr(score: np.ndarray, truth: np.ndarray, fpr: float = 0.05) -> tuple[float, float]:
    """(recall, threshold) where the false-positive rate is at most ``fpr``."""
    neg = np.sort(score[~truth])
    if not len(neg) or not truth.any():
        return 0.0, 1.0
    th = float(neg[min(len(neg) - 1, int(np.ceil((1 - fpr) * len(neg))))]) + 1e-9
    return float((score[truth] >= th).mean()), th


def evaluate(examples, decisions, stage: str) -> dict:
    """Scores of one stage's decisions (dicts with 'harmful' in [0, 1] and 'categories') on ``examples``."""
    from lightseek.safety.policy import CATEGORIES

    truth = np.array([e.harmful for e in examples])
    flagged = np.array([bool(d["categories"]) for d in decisions])
    score = np.array([d["harmful"] for d in decisions])
    out = {"stage": stage, "texts": len(examples), "by_language": {}, "by_category": {}, "by_source": {}}
    for lang in ("en", "zh"):
        m = np.array([e.lang == lang for e in examples])
        if m.any():
            r, th = recall_at_fpr(score[m], truth[m])
            out["by_language"][lang] = {**prf(flagged[m], truth[m]), "recall_at_fpr_0.05": r, "threshold": th}
    for cat in CATEGORIES:
        t = np.array([cat in e.categories for e in examples])
        if t.sum() >= 5:
            p = np.array([cat in d["categories"] for d in decisions])
            out["by_category"][cat] = prf(p, t)
    for src in sorted({e.source for e in examples}):
        m = np.array([e.source == src for e in examples])
        out["by_source"][src] = prf(flagged[m], truth[m])
    om = np.array([e.source == "openai_moderation_en" for e in examples])
    if om.any():
        out["openai_moderation_f1"] = prf(flagged[om], truth[om])["f1"]
    return out


def decide(policy, scores: dict, hits: dict) -> dict:
    """What the cascade decides from one stage's scores and the rules that matched."""
    from lightseek.safety.cascade import combine

    _, harmful, _, cats = combine(policy, scores, hits)
    return {"harmful": harmful, "categories": cats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier")
    ap.add_argument("--data", help="the shared data folder (default ../shared/data)")
    ap.add_argument("--model-sample", type=int)
    ap.add_argument("--latency-texts", type=int)
    ap.add_argument("--train-model", help="when training: also the model stage on this checkpoint")
    ap.add_argument("--result")
    args = ap.parse_args()
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    from lightseek.safety.cascade import Moderator
    from lightseek.safety.classifier import load_stage
    from lightseek.safety.commands import shared_dir, train
    from lightseek.safety.data import load_examples, sensitive_harmless, validation
    from lightseek.safety.policy import Policy

    data = shared_dir(args.data)
    if not (data / "safety_openai_moderation_en").is_dir():
        sys.exit(f"skipped: the shared safety data is not in {data}")
    if load_stage(args.classifier, "linear") is None:
        train(args.classifier, data, args.train_model)
    mod = Moderator(args.classifier, Policy())
    policy, rules, linear, model = mod.policy, mod.rules, mod.linear, mod.model
    examples = load_examples(data)
    val = validation(examples)
    print(f"{len(val)} validation texts ({sum(e.harmful for e in val)} harmful)", flush=True)
    texts = [e.text for e in val]
    hits = [rules.match(t) for t in texts]
    lin = linear.scores(texts)
    stages = {"rules": [decide(policy, {}, h) for h in hits],
              "linear": [decide(policy, s, {}) for s in lin],
              "rules+linear": [decide(policy, s, h) for s, h in zip(lin, hits)]}
    results = {name: evaluate(val, d, name) for name, d in stages.items()}
    if model is not None:
        rng = random.Random(0)
        sample = sorted(rng.sample(range(len(val)), min(args.model_sample, len(val))))
        t0 = time.time()
        ms = model.scores([texts[i] for i in sample])
        print(f"model stage on {len(sample)} texts: {time.time() - t0:.0f} s", flush=True)
        sub = [val[i] for i in sample]
        results["model (sample)"] = evaluate(sub, [decide(policy, s, {}) for s in ms], "model (sample)")
        unsure = [i for i in sample if hits[i] == {} and policy.uncertain_low <= max(lin[i].values())
                  < policy.uncertain_high]
        m_by = dict(zip(sample, ms))
        casc = [decide(policy, m_by[i] if i in unsure else lin[i], hits[i]) for i in sample]
        results["cascade (sample)"] = evaluate(sub, casc, "cascade (sample)")
        results["rules+linear (sample)"] = evaluate(sub, [stages["rules+linear"][i] for i in sample],
                                                    "rules+linear (sample)")
        results["cascade (sample)"]["model_share"] = len(unsure) / len(sample)
    # prompts from other sources than the shared sets (written for this project), every stage
    from lightseek.safety.data import Example

    other = [Example(r["text"], r["lang"], "other_sources", frozenset(r["categories"]))
             for r in map(json.loads, OTHER.read_text(encoding="utf-8").splitlines())]
    o_texts = [e.text for e in other]
    o_hits = [rules.match(t) for t in o_texts]
    o_lin = linear.scores(o_texts)
    other_res = {"linear": evaluate(other, [decide(policy, s, {}) for s in o_lin], "linear"),
                 "rules+linear": evaluate(other, [decide(policy, s, h) for s, h in zip(o_lin, o_hits)],
                                          "rules+linear")}
    if model is not None:
        o_model = model.scores(o_texts)
        other_res["model"] = evaluate(other, [decide(policy, s, {}) for s in o_model], "model")
        other_res["cascade"] = evaluate(other, [decide(policy, m if (not h and policy.uncertain_low <= max(s.values())
                                                                     < policy.uncertain_high) else s, h)
                                                for s, m, h in zip(o_lin, o_model, o_hits)], "cascade")
    sens = sensitive_harmless(examples)
    s_dec = mod.check([e.text for e in sens])
    over = {"texts": len(sens), "blocked": sum(d.action == "block" for d in s_dec)}
    over["rate"] = over["blocked"] / max(1, len(sens))
    # latency: one text of about 256 tokens at a time; each stage gets texts of its own, never
    # seen before (the model stage caches each text's features, and a repeat would be free)
    rng = random.Random(1)

    def fresh() -> list[str]:
        return [" ".join(rng.sample(texts, 12))[:1000] for _ in range(args.latency_texts)]
    lat = {}
    timed = [("rules", lambda t: rules.match(t)), ("linear", lambda t: linear.scores([t]))]
    if model is not None:
        timed.append(("model", lambda t: model.scores([t])))
    for name, fn in (*timed, ("cascade", lambda t: mod.check([t]))):
        times = []
        for t in fresh():
            t0 = time.perf_counter()
            fn(t)
            times.append(1000 * (time.perf_counter() - t0))
        times.sort()
        lat[name] = {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}
    for name, r in results.items():
        print(f"\n### {name}\n| lang | precision | recall | F1 | FPR | recall at FPR 0.05 |\n"
              "|---|---:|---:|---:|---:|---:|")
        for lang, x in r["by_language"].items():
            print(f"| {lang} | {x['precision']:.3f} | {x['recall']:.3f} | {x['f1']:.3f} | {x['fpr']:.3f} | "
                  f"{x['recall_at_fpr_0.05']:.3f} |")
        if "openai_moderation_f1" in r:
            print(f"OpenAI moderation held-out F1: {r['openai_moderation_f1']:.3f}")
    for name, r in other_res.items():
        print(f"other sources, {name}: " + ", ".join(
            f"{lang} recall {x['recall']:.3f} FPR {x['fpr']:.3f}" for lang, x in r["by_language"].items()))
    print(f"\nover-refusal on {over['texts']} sensitive harmless questions: {over['rate']:.3f}")
    print("latency per ~256-token text: " + ", ".join(f"{k} p50 {v['p50_ms']:.2f} ms p95 {v['p95_ms']:.2f} ms"
                                                       for k, v in lat.items()))
    stem = result_name("safety_eval", args, {**DEFAULTS, "data": None, "train_model": None})
    out = write_result(stem, {**provenance(), "classifier": {k: getattr(mod, k).card for k in ("linear", "model")
                                                             if getattr(mod, k) is not None},
                              "validation_texts": len(val), "results": results, "other_sources": other_res,
                              "over_refusal": over,
                              "latency": lat, "settings": {k: getattr(args, k) for k in DEFAULTS}})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
