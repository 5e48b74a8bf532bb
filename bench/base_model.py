"""The shared base model: train it with recipes/base.yaml and record what the run took.

The adapter, quantization, distillation and serving benchmarks start from this checkpoint.

    python bench/base_model.py [--out runs/base] [--reuse]

Runs `lightseek train --config recipes/base.yaml --out_dir OUT` (the data preparation included)
in a child process, then reads OUT/metrics.jsonl: steps, tokens, median seconds per step,
wall time, the final validation perplexity and routing figures. --reuse summarises a finished
run in OUT instead of training again (the JSON says so). Writes bench/results/base_model.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/base")
    ap.add_argument("--reuse", action="store_true", help="summarise a finished run instead of training")
    args = ap.parse_args()
    out = ROOT / args.out
    cmd = [sys.executable, "-m", "lightseek", "train", "--config", "recipes/base.yaml", f"--out_dir={args.out}", "--quiet"]
    wall = None
    if not args.reuse:
        if out.exists():
            sys.exit(f"{out} exists: remove it, or pass --reuse to summarise it")
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.time() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train or not evals:
        sys.exit(f"{out}/metrics.jsonl has no training or evaluation records")
    last = evals[-1]
    result = {**provenance(), "train_command": " ".join(["lightseek", *cmd[3:]]), "reused_run": args.reuse,
              "steps": train[-1]["step"], "tokens": train[-1]["tokens"],
              "median_step_s": statistics.median(r["step_s"] for r in train),
              "wall_s": wall, "val_ppl": last["val_ppl"],
              **{k: last[k] for k in ("avg_k", "max_vio", "dead_experts") if k in last}}
    path = write_result("base_model", result)
    print(f"| steps | tokens | median s/step | wall | val ppl |\n|---|---|---|---|---|\n"
          f"| {result['steps']:,} | {result['tokens']:,} | {result['median_step_s']:.2f} | "
          f"{'' if wall is None else f'{wall / 60:.1f} min'} | {result['val_ppl']:.2f} |")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
