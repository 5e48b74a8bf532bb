"""The from-scratch quickstart as a benchmark: `lightseek quickstart --from-scratch --fresh`, timed.

    python bench/quickstart.py [--out runs/quickstart]

Runs the quickstart from scratch in a child process (corpus, tokenizer, 600 training steps,
evaluation, plots, sample), then reads the summary it writes (OUT/quickstart.json): validation
perplexity, experts per token, dead experts, MaxVio on the held-out documents and on as many
training windows. Writes bench/results/quickstart.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quickstart")
    args = ap.parse_args()
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "lightseek", "quickstart", "--from-scratch", "--fresh",
                    f"--out_dir={args.out}"], check=True, cwd=ROOT)
    wall = time.time() - t0
    summary = json.loads((ROOT / args.out / "quickstart.json").read_text())
    result = {**provenance(), "wall_s": wall, **{k: summary[k] for k in (
        "steps", "val_loss", "val_ppl", "avg_k", "dead_experts", "max_vio", "max_vio_train", "tokens_per_s")
        if k in summary}}
    path = write_result("quickstart", result)
    print(f"| wall | val ppl | k | MaxVio training text / held-out | dead |\n|---|---|---|---|---|\n"
          f"| {wall:.0f} s | {result['val_ppl']:.2f} | {result['avg_k']:.2f} | "
          f"{result['max_vio_train']:.3f} / {result['max_vio']:.3f} | {result['dead_experts']} |")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
