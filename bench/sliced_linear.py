"""Products in slices (`lightseek.kernels.linear`): SmolLM2's fp32 projections against `F.linear`,
and what that does to decoding, beside transformers `generate` in the same run.

Part 1, the products alone: each projection shape of SmolLM2-135M-Instruct (query and output
576 x 576, key and value 192 x 576, the decode step's fused query-key-value 960 x 576, gate and
up 1536 x 576, down 576 x 1536) at 1, 4, 16, 64 and 256 rows, fp32: milliseconds per product
(median of --repeats timings of a loop) through `F.linear` and through `sliced_linear` in 2 and 4
slices, with 30 weights of the shape taken in turn (as a model's 30 layers leave the caches), and
the largest difference from `F.linear`'s result.

Part 2, the model (`lightseek fetch smollm2-135m-instruct`; skipped with --no-model): the
workload of bench/real_model.py (greedy `generate` at batch 1, 64 new tokens after a 64-token
prompt; 16 rows decoding 32 tokens each after their 64-token prompts; prefill included in both,
as transformers' `generate` is timed) with the products
  plain      every product through `F.linear`
  head       the vocabulary head in 8 slices, the rest through `F.linear` (the previous release)
  all        every projection in slices, the head in 8 (as shipped)
alternated in one process, --repeats times each (medians), whether the three give the same
greedy tokens, and transformers `generate` on the same weights (real_model.py's
`run_transformers`) in the same run.

    python bench/sliced_linear.py [--repeats 5] [--threads 2] [--no-model]

Writes bench/results/sliced_linear.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, timed_ms, write_result  # noqa: E402
from real_model import ROW_NEW, ROWS, decode_workload, run_transformers  # noqa: E402

NAME = "smollm2-135m-instruct"
SHAPES = {"q, o": (576, 576), "k, v": (192, 576), "q k v fused": (960, 576), "gate, up": (1536, 576),
          "down": (576, 1536)}
PRODUCT_ROWS = (1, 4, 16, 64, 256)
LAYERS = 30


def product_rows(repeats: int) -> list[dict]:
    from lightseek.kernels.linear import sliced_linear

    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            weights = [torch.randn(n, k) / k ** 0.5 for _ in range(LAYERS)]
            for m in PRODUCT_ROWS:
                x = torch.randn(m, k)
                turn = iter(range(10 ** 9))

                def product(slices: int):
                    w = weights[next(turn) % LAYERS]
                    return F.linear(x, w) if slices == 1 else sliced_linear(x, w, None, slices)

                inner = 2 * LAYERS
                row = {"shape": name, "out": n, "in": k, "rows": m,
                       "linear_ms": timed_ms(lambda: product(1), inner, repeats, warmup=LAYERS)}
                for s in (2, 4):
                    row[f"slices_{s}_ms"] = timed_ms(lambda: product(s), inner, repeats, warmup=LAYERS)
                    row[f"slices_{s}_max_abs_diff"] = max(
                        float((sliced_linear(x, w, None, s) - F.linear(x, w)).abs().max()) for w in weights[:4])
                rows.append(row)
                print(f"{name} {n}x{k}, {m:>3} rows: F.linear {row['linear_ms'] * 1e3:.0f} us, "
                      f"2 slices {row['slices_2_ms'] * 1e3:.0f} us, 4 slices {row['slices_4_ms'] * 1e3:.0f} us",
                      flush=True)
    return rows


@contextmanager
def products(setting: str):
    """Linear and VocabHead slicing as ``setting`` says (class attributes, restored after)."""
    from lightseek.kernels.linear import Linear
    from lightseek.model.transformer import VocabHead

    before = Linear.SLICES, VocabHead.SLICES
    Linear.SLICES = before[0] if setting == "all" else 1
    VocabHead.SLICES = 1 if setting == "plain" else before[1]
    try:
        yield
    finally:
        Linear.SLICES, VocabHead.SLICES = before


def model_rows(repeats: int) -> dict:
    from lightseek.known_models import KNOWN_MODELS, cache_dir
    from lightseek.model.checkpoint import load_model
    from lightseek.models.fetch import fetch

    model = load_model(fetch(NAME)).eval()
    generate1, generate16 = decode_workload(model)
    settings = ("plain", "head", "all")
    times = {s: {"b1": [], "b16": []} for s in settings}
    tokens = {}
    with torch.inference_mode():
        for _ in range(repeats):  # alternated, so drift of the machine falls on all three
            for s in settings:
                with products(s):
                    t0 = time.perf_counter()
                    tokens[s] = generate1()
                    times[s]["b1"].append(len(tokens[s]) / (time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    generate16()
                    times[s]["b16"].append(ROWS * ROW_NEW / (time.perf_counter() - t0))
    out: dict = {"model": NAME}
    for s, t in times.items():
        out[s] = {"generate_b1_tok_s": statistics.median(t["b1"]), "decode_b16_tok_s": statistics.median(t["b16"])}
        print(f"{s}: generate at batch 1 {out[s]['generate_b1_tok_s']:.1f} tok/s, "
              f"16 rows {out[s]['decode_b16_tok_s']:.1f} tok/s (prefill included)", flush=True)
    out["same_greedy_tokens"] = tokens["plain"] == tokens["head"] == tokens["all"]
    gguf = cache_dir() / "sources" / NAME / KNOWN_MODELS[NAME].member.rsplit("/", 1)[-1]
    hf = run_transformers(str(gguf), repeats)
    out["transformers"] = {"generate_b1_tok_s": hf["decode_b1_tok_s"], "generate_b16_tok_s": hf["decode_b16_tok_s"]}
    print(f"transformers generate: batch 1 {hf['decode_b1_tok_s']:.1f} tok/s, "
          f"batch 16 {hf['decode_b16_tok_s']:.1f} tok/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-model", dest="model", action="store_false", help="the products alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = {**provenance(args.threads), "products": product_rows(args.repeats)}
    if args.model:
        data["decode"] = model_rows(args.repeats)
    print(f"written {write_result('sliced_linear', data)}")


if __name__ == "__main__":
    main()
