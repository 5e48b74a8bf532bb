"""How much is left in the moderation cascade's linear stage: variants of its "harmful at all"
head, each trained on the same training split and scored on the same validation split as
bench/safety_eval.py.

The shipped stage (`lightseek safety train`): TF-IDF of character (2-4, `char_wb`) and word
(1-2) n-grams, a logistic regression with C = 4 and balanced class weights. Variants: the
regularisation C (1, 4, 16); source-balanced sample weights (harmful and harmless texts half the
weight each, and within each, every source the same share, so the many easy harmless
instructions do not outweigh the few hard harmless texts of the toxicity sets, whose false
positives set the 5% threshold); wider
n-grams (character 1-5, word 1-3, up to 500k features each). Per variant: recall at a 5%
false-positive rate and F1 at 0.5 per language, and F1 on the OpenAI moderation set's held-out
part at 0.5 (the targets' three figures), plus that set's best F1 over thresholds 0.05-0.95
(an upper bound: the threshold is chosen on the scored texts).

    python bench/safety_linear_variants.py [--data ../shared/data]

About 2 minutes on 2 cores. Writes bench/results/safety_linear_variants.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_result  # noqa: E402
from safety_eval import prf, recall_at_fpr  # noqa: E402


def source_balanced(sources: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample weights: the two labels half the total each, and within a label every source the
    same share; scaled so the weights sum to the number of examples."""
    w = np.zeros(len(y))
    cells = {(s, t) for s, t in zip(sources, y)}
    for s, t in cells:
        m = (sources == s) & (y == t)
        w[m] = 1.0 / m.sum()
    for t in (True, False):
        m = y == t
        w[m] *= 0.5 / w[m].sum()
    return w * len(y)


def scores_of(p: np.ndarray, y: np.ndarray, lang: np.ndarray, om: np.ndarray) -> dict:
    out = {}
    for code in ("en", "zh"):
        m = lang == code
        r, th = recall_at_fpr(p[m], y[m])
        f = prf(p[m] >= 0.5, y[m])
        out[code] = {"recall_at_fpr_0.05": r, "threshold_at_fpr_0.05": th, "f1": f["f1"], "fpr": f["fpr"]}
    out["openai_moderation_f1"] = prf(p[om] >= 0.5, y[om])["f1"]
    out["openai_moderation_best_f1"] = max(prf(p[om] >= t, y[om])["f1"] for t in np.linspace(0.05, 0.95, 19))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="the shared data folder (default ../shared/data)")
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    from lightseek.safety.classifier import SafetyClassifier
    from lightseek.safety.commands import shared_dir
    from lightseek.safety.data import for_training, load_examples, validation

    data = shared_dir(args.data)
    if not (data / "safety_openai_moderation_en").is_dir():
        sys.exit(f"skipped: the shared safety data is not in {data}")
    examples = load_examples(data)
    train, val = for_training(examples), validation(examples)
    y = np.array([e.harmful for e in train])
    yv = np.array([e.harmful for e in val])
    lang = np.array([e.lang for e in val])
    om = np.array([e.source == "openai_moderation_en" for e in val])
    weights = source_balanced(np.array([e.source for e in train]), y)
    print(f"{len(train)} training texts, {len(val)} validation texts", flush=True)

    featurizers = {
        "shipped n-grams": SafetyClassifier("linear")._featurizer(),
        "wider n-grams": SafetyClassifier("linear", max_features=500_000, char_ngrams=(1, 5),
                                          word_ngrams=(1, 3))._featurizer(),
    }
    fits = {"shipped n-grams": [(4.0, "balanced"), (1.0, "balanced"), (16.0, "balanced"),
                                (4.0, "source-balanced"), (16.0, "source-balanced")],
            "wider n-grams": [(4.0, "balanced"), (4.0, "source-balanced")]}
    rows = []
    for feat_name, feat in featurizers.items():
        t0 = time.perf_counter()
        x = feat.fit_transform([e.text for e in train])
        xv = feat.transform([e.text for e in val])
        feat_s = time.perf_counter() - t0
        for c, weighting in fits[feat_name]:
            t0 = time.perf_counter()
            if weighting == "balanced":
                head = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(x, y)  # as shipped
            else:
                head = LogisticRegression(C=c, max_iter=2000).fit(x, y, sample_weight=weights)
            row = {"features": feat_name, "n_features": int(x.shape[1]), "C": c, "weights": weighting,
                   "features_s": round(feat_s, 1), "fit_s": round(time.perf_counter() - t0, 1),
                   **scores_of(head.predict_proba(xv)[:, 1], yv, lang, om)}
            rows.append(row)
            print(f"{feat_name}, C={c:g}, {weighting}: recall at 5% FPR en {row['en']['recall_at_fpr_0.05']:.3f} "
                  f"zh {row['zh']['recall_at_fpr_0.05']:.3f}; F1 en {row['en']['f1']:.3f} zh {row['zh']['f1']:.3f}; "
                  f"OpenAI moderation F1 {row['openai_moderation_f1']:.3f} "
                  f"(best threshold {row['openai_moderation_best_f1']:.3f})", flush=True)
    out = write_result("safety_linear_variants", {**provenance(), "training_texts": len(train),
                                                  "validation_texts": len(val), "rows": rows})
    print(f"written {out}")


if __name__ == "__main__":
    main()
