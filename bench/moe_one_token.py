"""Batch-1 decode of the MoE form: each chosen expert as its own products (`few_tokens`) against
the token's experts gathered into one stack and run as three `bmm`s (`one_token`, what 'auto'
takes for one token), with the dense model beside them.

SmolLM2-135M-Instruct (`lightseek fetch smollm2-135m-instruct`) and its MoE form (`lightseek
moefy smollm2-135m-instruct --target-k 8`, runs/real_model/moe-k8 as bench/quant_real.py makes
it), in fp32: greedy `generate` tokens/s at batch 1 (64 tokens after a 64-token prompt of
held-out English, prefill included), medians of --repeats runs, the MoE's two dispatches
alternated in one process so that the machine's drift falls on both; whether they produce the
same greedy tokens.

    python bench/moe_one_token.py [--repeats 5] [--threads 2]

Writes bench/results/moe_one_token.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, write_result  # noqa: E402

NAME = "smollm2-135m-instruct"
MOE = ROOT / "runs" / "real_model" / "moe-k8"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lora_vs_full import general_tokens

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.model.generate import generate_ids
    from lightseek.model.sampling import SamplingParams
    from lightseek.models.fetch import fetch

    dense_dir = Path(fetch(NAME))
    if not (MOE / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "lightseek", "moefy", NAME, "--out", str(MOE), "--target-k", "8",
                        "--quiet"], check=True)
    prompt = [int(t) for t in general_tokens(Tokenizer.load(dense_dir / "tokenizer.json"), 64)[:64]]
    models = {"dense": load_model(dense_dir).eval(), "moe": load_model(MOE).eval()}
    runs = {"dense": ("dense", None), "moe few_tokens": ("moe", "few_tokens"), "moe one_token": ("moe", "auto")}
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[int]] = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, (form, dispatch) in runs.items():
                model = models[form]
                if dispatch:
                    model.set_dispatch(dispatch)
                t0 = time.perf_counter()
                tokens[name] = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=64, temperature=0)))
                speeds[name].append(len(tokens[name]) / (time.perf_counter() - t0))
    models["moe"].set_dispatch("auto")
    rows = {name: {"generate_b1_tok_s": statistics.median(v), "runs": v} for name, v in speeds.items()}
    for name, r in rows.items():
        print(f"{name}: {r['generate_b1_tok_s']:.1f} tok/s at batch 1", flush=True)
    same = tokens["moe few_tokens"] == tokens["moe one_token"]
    print(f"MoE dispatches give the same greedy tokens: {same}")
    out = write_result("moe_one_token", {**provenance(args.threads), "model": NAME, "moe": str(MOE.relative_to(ROOT)),
                                         "rows": rows, "moe_same_greedy_tokens": same})
    print(f"written {out}")


if __name__ == "__main__":
    main()
