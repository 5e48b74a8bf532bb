"""Domain classifier: build the labelled data from ../shared/data, train, evaluate.

Runs the CLI end to end and times each step:

    lightseek domains build --out runs/domains/data
    lightseek domains train --data runs/domains/data --out runs/domains/model
    lightseek domains eval runs/domains/model --data runs/domains/data/heldout.jsonl --plot ...
    lightseek domains eval runs/domains/model --data runs/domains/data/questions.jsonl --plot ...
    (and both again with --threshold 0: the plain argmax, no `general` fallback)

    python bench/domains.py [--out runs/domains] [--encoder PATH] [--result NAME]

Prints a markdown table (per-domain P/R/F1 and macro-F1 on the held-out passages and on the
second, differently written set) and writes bench/results/domains.json, with the run's
provenance (command, revision, date, machine, versions), and the confusion matrices
docs/results/domains_heldout.png and docs/results/domains_questions.png. With --encoder (another
classifier than the default TF-IDF one) they are domains_encoder-<folder name>.json and
docs/results/domains_encoder-<folder name>_{heldout,questions}.png, so that a probe never
overwrites the main result; --result NAME names them NAME.json and NAME_{heldout,questions}.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domains_styles import language  # noqa: E402
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

from lightseek.data.domains.metrics import evaluate  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SETS = {"heldout": "held-out passages", "questions": "second set (questions, titles, headlines)"}


def run(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lightseek", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def table(results: dict) -> str:
    domains = sorted({d for r in results.values() for d, m in r["per_domain"].items() if m["support"]})
    head = "| set | threshold | " + " | ".join(f"{d} P / R / F1" for d in domains) + " | macro-F1 | accuracy | n |"
    lines = [head, "|---|---:|" + "---|" * len(domains) + "---:|---:|---:|"]
    for (name, r) in results.items():
        cells = []
        for d in domains:
            m = r["per_domain"].get(d, {"precision": 0, "recall": 0, "f1": 0})
            cells.append(f"{m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}")
        lines.append(f"| {SETS[name.split('@')[0]]} | {r['threshold']} | " + " | ".join(cells)
                     + f" | **{r['macro_f1']:.3f}** | {r['accuracy']:.3f} | {r['n']} |")
    return "\n".join(lines)


def classify(model: Path, questions: Path, out: Path, commands: dict, timings: dict,
             threshold: float | None = None) -> list[dict]:
    """The records `domains classify` writes for the second set, at the model's threshold or at
    ``threshold``."""
    key = "classify questions" + ("" if threshold is None else f" @{threshold}")
    cmd = ["domains", "classify", str(model), str(questions), "--out", str(out)]
    cmd += [] if threshold is None else ["--threshold", str(threshold)]
    timings[key], _ = run(cmd)
    commands[key] = "lightseek " + " ".join(cmd)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def by_source(truth: list[dict], got: list[dict]) -> dict:
    """Accuracy of the predictions on the second set, per source corpus."""
    stats: dict = {}
    for t, g in zip(truth, got, strict=True):
        n, right = stats.get(t["source"], (0, 0))
        stats[t["source"]] = (n + 1, right + (g["domain"] == t["domain"]))
    domain = {t["source"]: t["domain"] for t in truth}
    return {s: (domain[s], n, right / n) for s, (n, right) in stats.items()}


def by_language(truth: list[dict], got: list[dict]) -> dict:
    """The metrics of each language's part of the second set (the target holds in both)."""
    pairs = defaultdict(lambda: ([], []))
    for t, g in zip(truth, got, strict=True):
        pairs[language(t["source"])][0].append(t["domain"])
        pairs[language(t["source"])][1].append(g["domain"])
    return {lang: evaluate(*tp) for lang, tp in sorted(pairs.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "domains"))
    ap.add_argument("--encoder", help="a local Hugging Face encoder folder (default: TF-IDF)")
    ap.add_argument("--result", help="write bench/results/RESULT.json and docs/results/RESULT_<set>.png "
                                     "(default: domains, or named after --encoder)")
    args = ap.parse_args()
    stem = result_name("domains", args, {"encoder": None})
    if not SHARED.exists():
        sys.exit(f"{SHARED} is not here: this benchmark needs the shared corpora")
    out = Path(args.out)
    data, model = out / "data", out / "model"
    timings, commands, results = {}, {}, {}
    steps = {"build": ["domains", "build", "--out", str(data), "--shared", str(SHARED)],
             "train": ["domains", "train", "--data", str(data), "--out", str(model)]
             + (["--encoder", args.encoder] if args.encoder else [])}
    for name, cmd in steps.items():
        timings[name], stdout = run(cmd)
        commands[name] = "lightseek " + " ".join(cmd)
        print(f"{name}: {timings[name]:.1f} s", flush=True)
    for name in SETS:
        for threshold in (None, 0.0):
            key = name if threshold is None else f"{name}@argmax"
            js = out / f"eval_{key.replace('@', '_')}.json"
            cmd = ["domains", "eval", str(model), "--data", str(data / f"{name}.jsonl"), "--json", str(js)]
            if threshold is None:
                cmd += ["--plot", str(ROOT / "docs" / "results" / f"{stem}_{name}.png")]
            else:
                cmd += ["--threshold", str(threshold)]
            timings[f"eval {key}"], stdout = run(cmd)
            commands[f"eval {key}"] = "lightseek " + " ".join(cmd)
            results[key] = json.loads(js.read_text(encoding="utf-8"))
            print(stdout)
    questions = data / "questions.jsonl"
    truth = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines()]
    got = classify(model, questions, out / "questions_classified.jsonl", commands, timings)
    per_source, languages = by_source(truth, got), {"threshold": by_language(truth, got)}
    got = classify(model, questions, out / "questions_classified_argmax.jsonl", commands, timings, threshold=0.0)
    languages["argmax"] = by_language(truth, got)
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    print(table(results))
    print("\n| second-set source | domain | texts | accuracy |\n|---|---|---:|---:|")
    for source, (domain, n, acc) in per_source.items():
        print(f"| {source} | {domain} | {n} | {acc:.3f} |")
    for how, per in languages.items():
        for lang, r in per.items():
            print(f"second set, {how}, {lang}: macro-F1 {r['macro_f1']:.3f}, accuracy {r['accuracy']:.3f} "
                  f"({r['n']} texts)")
    print(f"\nbuild {timings['build']:.0f} s, train {timings['train']:.0f} s, total {sum(timings.values()):.0f} s")
    out = write_result(stem, {**provenance(), "commands": commands, "timings_s": timings, "counts": manifest["counts"],
                              "results": results, "questions_accuracy_by_source": per_source,
                              "questions_by_language": languages,
                              "table": table(results)})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
