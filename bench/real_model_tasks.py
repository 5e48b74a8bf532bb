"""Multiple-choice tasks from the shared QA sets, and SmolLM2-135M-Instruct's scores on them.

Task files (written to runs/tasks/, never committed: they are derived from the shared data):
- medquad: a MedQuAD question with its answer's first sentence and three distractors, the first
  sentences of other questions' answers (CC BY 4.0);
- fiqa: a FiQA personal-finance question, its answer and three other answers (CC BY-SA);
- pubmedqa: a PubMedQA question with the abstract's first 600 characters as context, choices
  yes / no / maybe (MIT).
Items are drawn with a fixed seed, so the files are the same on every machine with the data.

    python bench/real_model_tasks.py [--items 200] [--ckpt CKPT]

--ckpt scores another checkpoint of the same tokenizer (a converted or healed MoE, a quantized
copy) on the same items, into real_model_tasks_ckpt-<folder>.json.

Scores with `lightseek eval smollm2-135m-instruct --tasks runs/tasks/*.jsonl`, prints a markdown
table and writes bench/results/real_model_tasks.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "runs" / "tasks"
NAME = "smollm2-135m-instruct"


def first_sentence(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    s = m.group(1) if m else text
    return s if len(s) <= limit else s[:limit].rsplit(" ", 1)[0] + " ..."


def matching(pairs: list[tuple[str, str]], n: int, rng: random.Random, k: int = 4) -> list[dict]:
    """Each picked question with its own answer among k - 1 answers of other questions."""
    pairs = [(q, a) for q, a in pairs if q and a]
    picked = rng.sample(range(len(pairs)), min(n, len(pairs)))
    items = []
    for i in picked:
        others = rng.sample([j for j in range(len(pairs)) if pairs[j][1] != pairs[i][1]], k - 1)
        choices = [pairs[j][1] for j in others] + [pairs[i][1]]
        rng.shuffle(choices)
        items.append({"question": pairs[i][0], "choices": choices, "answer": choices.index(pairs[i][1])})
    return items


def build(n: int) -> dict[str, Path]:
    rng = random.Random(0)
    tasks = {}
    med = []
    for f in sorted((SHARED / "medical_medquad_en").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            med.append((r.get("question", ""), first_sentence(r.get("answer") or "")))
    tasks["medquad"] = matching(med, n, rng)
    fin = [(r["question"], first_sentence(r["answer"])) for r in
           map(json.loads, (SHARED / "finance_fiqa_en" / "fiqa_648.jsonl").read_text(encoding="utf-8").splitlines())]
    tasks["fiqa"] = matching(fin, n, rng)
    pqa = json.loads((SHARED / "medical_pubmedqa_en" / "ori_pqal.json").read_text(encoding="utf-8"))
    keys = rng.sample(sorted(pqa), min(n, len(pqa)))
    tasks["pubmedqa"] = []
    for k in keys:
        r = pqa[k]
        contexts = r["CONTEXTS"] if isinstance(r["CONTEXTS"], list) else ast.literal_eval(r["CONTEXTS"])
        tasks["pubmedqa"].append({"context": " ".join(contexts)[:600], "question": r["QUESTION"],
                                  "choices": ["yes", "no", "maybe"], "answer": r["final_decision"]})
    OUT.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, items in tasks.items():
        files[name] = OUT / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200, help="items per task")
    ap.add_argument("--ckpt", help="score this checkpoint instead of SmolLM2 itself")
    args = ap.parse_args()
    stem = "real_model_tasks" + (f"_ckpt-{Path(args.ckpt).name}" if args.ckpt else "")
    if not SHARED.is_dir():
        sys.exit(f"the shared data is not at {SHARED}: nothing to build the tasks from")
    from lightseek.eval.run import run_tasks
    from lightseek.models.fetch import fetch

    fetch(NAME)
    files = build(args.items)
    t = time.perf_counter()
    result = run_tasks(args.ckpt or NAME, [str(f) for f in files.values()])
    wall = time.perf_counter() - t
    print("| task | items | acc | acc_norm | chance |\n|---|---:|---:|---:|---:|")
    for task, r in result["tasks"].items():
        print(f"| {task} | {r['items']} | {r['acc']:.3f} ± {r['acc_ci95']:.3f} | "
              f"{r['acc_norm']:.3f} ± {r['acc_norm_ci95']:.3f} | {r['chance']:.3f} |")
    write_result(stem, {**provenance(), "model": NAME, "checkpoint": Path(args.ckpt).name if args.ckpt else NAME,
                        "wall_s": wall, "tasks": result["tasks"]})

if __name__ == "__main__":
    main()
