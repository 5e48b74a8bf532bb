"""Do the DataDistiller's rejection stages agree with the reference answers?

Reads the run of `bench/distiller_real.py` (runs/distiller_real: its input questions, which keep
each source's own answer, and the distiller's data.jsonl and rejected.jsonl) and compares every
expert answer with the reference answer to the same question by token F1 (the SQuAD measure:
the harmonic mean of the shared words' precision and recall). Per outcome (kept; rejected by the
length / repetition filter, by the judge, by the likelihood score) it reports the mean F1, beside
a baseline: the same answers against the reference answers of *other* questions of the source,
which says how much of the overlap is the source's shared vocabulary. For the answers the base
scored, the rank correlation (Spearman) of the score with the F1 says whether the likelihood
tracks closeness to the reference. Nothing is generated: this runs in seconds.

    python bench/distiller_agreement.py [--run runs/distiller_real]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, read_jsonl, write_result  # noqa: E402

WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return WORD.findall(text.lower())


def token_f1(answer: str, reference: str) -> float:
    a, r = tokens(answer), tokens(reference)
    same = sum((Counter(a) & Counter(r)).values())
    if not a or not r or not same:
        return 0.0
    p, q = same / len(a), same / len(r)
    return 2 * p * q / (p + q)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation; None for fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def answer_of(record: dict) -> str | None:
    """The expert's answer in a kept or rejected record (None when it never got one)."""
    if "messages" in record:
        return record.get("expert_answer", record["messages"][1]["content"])
    return record.get("expert_answer", record.get("answer"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/distiller_real", help="the folder bench/distiller_real.py worked in")
    args = ap.parse_args()
    run = ROOT / args.run
    if not (run / "distilled" / "data.jsonl").is_file():
        sys.exit(f"{run / 'distilled'} has no data.jsonl: run `python bench/distiller_real.py` first")
    refs = {p.stem: [r["answer"] for r in read_jsonl(p)] for p in sorted((run / "inputs").glob("*.jsonl"))}
    records = [(r, "kept") for r in read_jsonl(run / "distilled" / "data.jsonl")]
    records += [(r, r["stage"]) for r in read_jsonl(run / "distilled" / "rejected.jsonl")]
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    scored = defaultdict(lambda: ([], []))
    for r, outcome in records:
        source, index = Path(r["source"]["file"]).stem, r["source"]["index"]
        answer = answer_of(r)
        if answer is None or source not in refs:
            continue
        own = refs[source]
        f1 = token_f1(answer, own[index])
        others = [own[(index + k) % len(own)] for k in (1, 2, 3)]  # three other questions of the source
        g = groups[source][outcome]
        g.append((f1, sum(token_f1(answer, o) for o in others) / len(others)))
        if "quality" in r:
            scored[source][0].append(r["quality"]["logprob"])
            scored[source][1].append(f1)
    out = {}
    for source, by_outcome in sorted(groups.items()):
        out[source] = {"outcomes": {k: {"n": len(v), "f1": sum(a for a, _ in v) / len(v),
                                        "f1_other_questions": sum(b for _, b in v) / len(v)}
                                    for k, v in sorted(by_outcome.items())},
                       "score_vs_f1_spearman": spearman(*scored[source]), "scored": len(scored[source][0])}
        row = ", ".join(f"{k} {v['n']}: F1 {v['f1']:.3f} (others {v['f1_other_questions']:.3f})"
                        for k, v in out[source]["outcomes"].items())
        rho = out[source]["score_vs_f1_spearman"]
        print(f"{source:9s} {row}; score vs F1 rho {rho if rho is None else round(rho, 3)}")
    path = write_result("distiller_agreement", {**provenance(), "run": args.run, "sources": out})
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
