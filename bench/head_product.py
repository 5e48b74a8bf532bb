"""The vocabulary head's product: `F.linear` against `VocabHead` (the same product in slices
through one `bmm`), and what that does to a real model's decode.

Part 1, the product alone: a (rows x 576) @ (576 x 49,152) product, SmolLM2-135M-Instruct's head
shape, in fp32 on this machine's threads, for 1-256 rows: milliseconds per product (median of
--repeats timings of a loop) through `F.linear` and through `VocabHead` with 2, 4 and 8 slices,
and the largest difference between their results.

Part 2, a real model (`lightseek fetch smollm2-135m-instruct`; skipped with --no-model): greedy
tokens/s at batch 1 through `generate` (64 new tokens after a 64-token prompt, the prompt's
prefill included in the time, as a user of `generate` waits for it; the one-sequence decode
step) and decode tokens/s of 16 rows through the forward with a KV cache (32 new tokens each,
timed after the 64-token prompts' prefill), with the head as it ships
(`VocabHead`) and with it swapped for a plain `nn.Linear` sharing the same weight, alternated in
one run, and whether the two produce the same greedy tokens.

    python bench/head_product.py [--repeats 5] [--threads 2] [--no-model]

Writes bench/results/head_product.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, timed_ms, write_result  # noqa: E402

VOCAB, DIM = 49_152, 576
ROWS = (1, 2, 4, 7, 8, 16, 32, 64, 256)


def product_rows(repeats: int) -> list[dict]:
    from lightseek.model.transformer import VocabHead

    torch.manual_seed(0)
    heads = {}
    for s in (2, 4, 8):
        h = VocabHead(DIM, VOCAB, bias=False).requires_grad_(False)
        h.SLICES = s
        heads[s] = h
    w = heads[8].weight
    for h in heads.values():
        h.weight = w
    rows = []
    with torch.inference_mode():
        for m in ROWS:
            x = torch.randn(m, DIM)
            inner = max(2, 64 // m)
            ref = F.linear(x, w)
            row = {"rows": m, "linear_ms": timed_ms(lambda: F.linear(x, w), inner, repeats, warmup=1)}
            for s, h in heads.items():
                row[f"slices_{s}_ms"] = timed_ms(lambda: h(x), inner, repeats, warmup=1)
                row[f"slices_{s}_max_abs_diff"] = float((h(x) - ref).abs().max())
            rows.append(row)
            print(f"rows {m:>3}: F.linear {row['linear_ms']:.2f} ms; "
                  + ", ".join(f"{s} slices {row[f'slices_{s}_ms']:.2f} ms" for s in heads), flush=True)
    return rows


def model_rows(repeats: int) -> dict:
    from torch import nn

    from lightseek.model.checkpoint import load_model
    from lightseek.model.generate import generate_ids
    from lightseek.model.kv_cache import KVCache
    from lightseek.model.sampling import SamplingParams
    from lightseek.models.fetch import fetch

    model = load_model(fetch("smollm2-135m-instruct")).eval()
    shipped = model.head
    plain = nn.Linear(shipped.in_features, shipped.out_features, bias=False)
    plain.weight = shipped.weight
    prompt = list(range(1000, 1064))
    batch = torch.arange(16 * 64).reshape(16, 64) % 20000 + 1000
    out: dict = {"model": "smollm2-135m-instruct"}

    def b1() -> list[int]:
        return list(generate_ids(model, prompt, SamplingParams(max_new_tokens=64, temperature=0)))

    def b16() -> float:
        """Seconds of the 32 decode steps (the prefill before them not counted)."""
        cache = KVCache.for_model(model, 16, 64 + 32)
        logits = model(batch, cache=cache, last_only=True).logits
        t0 = time.perf_counter()
        for _ in range(32):
            logits = model(logits[:, -1:].argmax(-1), cache=cache).logits
        return time.perf_counter() - t0

    times: dict[str, dict[str, list[float]]] = {"VocabHead": {"b1": [], "b16": []}, "nn.Linear": {"b1": [], "b16": []}}
    tokens = {}
    with torch.inference_mode():
        for _ in range(repeats):  # alternated, so drift of the machine falls on both
            for name, head in (("VocabHead", shipped), ("nn.Linear", plain)):
                model.head = head
                t0 = time.perf_counter()
                tokens[name] = b1()
                times[name]["b1"].append(len(tokens[name]) / (time.perf_counter() - t0))
                times[name]["b16"].append(16 * 32 / b16())
    model.head = shipped
    for name, t in times.items():
        out[name] = {"generate_b1_tok_s": statistics.median(t["b1"]), "decode_b16_tok_s": statistics.median(t["b16"])}
        print(f"{name}: generate at batch 1 {out[name]['generate_b1_tok_s']:.1f} tok/s (prefill included), "
              f"16 rows decoding {out[name]['decode_b16_tok_s']:.1f} tok/s", flush=True)
    out["same_greedy_tokens"] = tokens["VocabHead"] == tokens["nn.Linear"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-model", dest="model", action="store_false", help="the product alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = {**provenance(args.threads), "shape": [VOCAB, DIM], "products": product_rows(args.repeats)}
    if args.model:
        data["decode"] = model_rows(args.repeats)
    print(f"written {write_result('head_product', data)}")


if __name__ == "__main__":
    main()
