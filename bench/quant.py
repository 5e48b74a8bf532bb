"""Weight-only quantization of the shared base checkpoint: size, bits per weight, quality, decode speed.

Rows: fp32 (the base checkpoint), bf16 (the same weights cast), int8 (per channel, rtn), int4
rtn g64, int4 gptq at groups 32 / 64 / 128, and the mixed policy (router, attention and shared
experts at 8 bits; routed experts, dense FFN and the tied embedding/head at 4, gptq g64). The
base's experts are 96 wide, so groups of 64 and 128 leave a shorter last group there
(quant.pad_groups=true; it is stored unpadded).

Columns: model.safetensors size and how many times smaller than fp32, bits per weight (codes,
scales, offsets and full-precision parameters over the parameter count), perplexity on held-out
general text (two Gutenberg books, the inaugural addresses, the CMRC 2018 trial passages: never
trained on) and its change, mean and p99 per-token KL(fp32 || model) on the same tokens, and
greedy decode tokens/s at batch 1 and 8 (median of --repeats runs, KV cache, one process).

The base model is small (3.3M parameters, most of them in the embedding): its decode time is
mostly Python and framework overhead, which hides differences between kernels. A second table
measures decode speed on a randomly initialised model of a larger preset (`small`, 108M
parameters; random weights are fine for speed, its quality columns mean nothing and are not
shown). A third compares the two matmul paths of quantized layers, PyTorch's packed int8/int4
kernels and dequantize-then-matmul, per layer shape, which is how `quant.kernel=auto` was chosen.

    python bench/quant.py [--repeats 5] [--new-tokens 64] [--scale-preset small]
    python bench/quant.py --quick        # a smoke run of every code path (seconds; numbers mean nothing)

The base checkpoint is runs/base (built with recipes/base.yaml when missing: ~30 min on 2 cores).
Prints markdown tables and writes bench/results/quant.json, with the run's provenance (command,
revision, date, machine, versions), and docs/results/quant.md. A --quick run writes
bench/results/quant_quick.json only. A probe writes its own file only: other --base,
--eval-tokens, --seq-len, --batch-size, --calib-samples, --new-tokens, --scale-preset or
--scale-tokens than the defaults write quant[_quick]_<the arguments that differ>.json
(`--scale-preset ''`: quant_scale-preset-none.json), and docs/results/quant.md is left alone;
--repeats and --kernel-calls do not change the name. --result NAME writes bench/results/NAME.json
(and docs/results/quant.md only when NAME is quant and the run is not --quick).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import GENERAL, ensure_base, general_tokens  # noqa: E402
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

DOC = ROOT / "docs" / "results" / "quant.md"
CONFIGS = {
    "int8": {"bits": 8},
    "int4 rtn g64": {"bits": 4, "group_size": 64},
    "int4 gptq g32": {"bits": 4, "group_size": 32, "method": "gptq"},
    "int4 gptq g64": {"bits": 4, "group_size": 64, "method": "gptq"},
    "int4 gptq g128": {"bits": 4, "group_size": 128, "method": "gptq"},
    "mixed gptq g64": {"policy": "mixed", "group_size": 64, "method": "gptq"},
}
CALIB = [ROOT.parent / "shared" / "data" / "en_gutenberg" / "austen-emma.txt",
         ROOT.parent / "shared" / "data" / "en_us_presidential_speeches" / "state_union"]  # trained on


def eval_windows(tokenizer, seq_len: int, tokens: int, batch: int) -> list[torch.Tensor]:
    """(b, seq_len + 1) windows of the held-out general text, ``tokens`` in all (split evenly)."""
    from lightseek.eval.run import token_windows

    return list(token_windows(general_tokens(tokenizer, tokens), batch, seq_len))


@torch.no_grad()
def decode_tps(model, batch: int, new_tokens: int, repeats: int, prompt_len: int = 32) -> float:
    """Median greedy decode tokens/s (all rows) after a ``prompt_len`` prefill, KV cache."""
    from lightseek.model.kv_cache import KVCache

    prompt = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    rates = []
    for _ in range(repeats + 1):  # the first run warms up (packing, allocator)
        cache = KVCache.for_model(model, batch, prompt_len + new_tokens + 1)
        tok = model(prompt, cache=cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            tok = model(tok, cache=cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)
        rates.append(batch * new_tokens / (time.perf_counter() - t0))
    return statistics.median(rates[1:])


def bf16_size(model, out: Path) -> int:
    from safetensors.torch import save_file

    from lightseek.model.checkpoint import model_state

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model_state(model).items()},
              str(out / "model.safetensors"))
    return (out / "model.safetensors").stat().st_size


def quality_rows(args, base: Path, work: Path) -> list[dict]:
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.kl import kl_divergence
    from lightseek.model.checkpoint import load_model
    from lightseek.quant import QuantConfig, bits_per_weight
    from lightseek.quant.config import CalibConfig
    from lightseek.quant.run import quantize_checkpoint

    ref, tok = load_model(base), Tokenizer.load(base)
    batches = eval_windows(tok, args.seq_len, args.eval_tokens, args.batch_size)
    fp32_size = (base / "model.safetensors").stat().st_size
    rows = []

    def add(name: str, model, size: int, bpw: float, quant_s: float = 0.0) -> None:
        r = kl_divergence(model, ref, batches)
        row = {"config": name, "size_bytes": size, "x_smaller": fp32_size / size, "bits_per_weight": bpw,
               "quant_s": quant_s, **r,
               "decode_b1": decode_tps(model, 1, args.new_tokens, args.repeats),
               "decode_b8": decode_tps(model, 8, args.new_tokens, args.repeats)}
        rows.append(row)
        print(f"  {name}: ppl {row['ppl']:.3f} ({100 * row['ppl_change']:+.2f}%), KL {row['kl_mean']:.5f}, "
              f"{row['bits_per_weight']:.2f} bits/weight, {row['decode_b1']:.0f} / {row['decode_b8']:.0f} tok/s", flush=True)

    add("fp32", ref, fp32_size, 32.0)
    bf = copy.deepcopy(ref).to(torch.bfloat16)
    add("bf16", bf, bf16_size(bf, work / "bf16"), 16.0)
    del bf
    calib = CalibConfig(files=[str(p) for p in CALIB], samples=args.calib_samples, seq_len=args.seq_len,
                        text_field="text,context_text")
    for name, kw in CONFIGS.items():
        out = work / name.replace(" ", "_")
        t0 = time.perf_counter()
        quantize_checkpoint(base, QuantConfig(**kw, pad_groups=True, calib=calib), out, overwrite=True,
                            show_progress=False)
        q = load_model(out)
        add(name, q, (out / "model.safetensors").stat().st_size, bits_per_weight(q), time.perf_counter() - t0)
    return rows


def scale_rows(args) -> list[dict]:
    """Decode speed of fp32, bf16, int8, int4 g64 and mixed on a random model of a larger preset."""
    from lightseek.model.config import preset
    from lightseek.model.transformer import Transformer
    from lightseek.quant import QuantConfig, bits_per_weight, quantize

    torch.manual_seed(0)
    base = Transformer(preset(args.scale_preset)).eval()
    variants = {"fp32": lambda m: m, "bf16": lambda m: m.to(torch.bfloat16),
                "int8": lambda m: quantize(m, QuantConfig(bits=8)),
                "int4 rtn g64": lambda m: quantize(m, QuantConfig(bits=4, group_size=64, pad_groups=True)),
                "mixed rtn g64": lambda m: quantize(m, QuantConfig(policy="mixed", group_size=64, pad_groups=True))}
    rows = []
    for name, make in variants.items():
        m = make(copy.deepcopy(base))
        bpw = bits_per_weight(m) if name not in ("fp32", "bf16") else (32.0 if name == "fp32" else 16.0)
        row = {"config": name, "params": sum(p.numel() for p in base.parameters()), "bits_per_weight": bpw,
               "decode_b1": decode_tps(m, 1, args.scale_tokens, args.repeats),
               "decode_b8": decode_tps(m, 8, args.scale_tokens, args.repeats)}
        rows.append(row)
        print(f"  {args.scale_preset} {name}: {row['decode_b1']:.1f} / {row['decode_b8']:.1f} tok/s", flush=True)
        del m
    return rows


def kernel_rows(args) -> list[dict]:
    """Per layer shape and batch rows: fp32 matmul, packed kernel and dequantize-then-matmul (us)."""
    from lightseek.quant.modules import QuantLinear
    from lightseek.quant.schemes import quantize_rtn

    def best_us(f, n: int) -> float:
        f()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            times.append((time.perf_counter() - t0) / n * 1e6)
        return min(times)

    rows = []
    shapes = [(384, 128), (8192, 128), (1536, 512), (512, 1536)] if not args.quick else [(384, 128)]
    with torch.no_grad():
        for n_out, n_in in shapes:
            w = torch.randn(n_out, n_in) * 0.05
            for m in (1, 8, 64):
                x = torch.randn(m, n_in)
                row = {"shape": f"{n_out}x{n_in}", "rows": m,
                       "fp32_us": best_us(lambda x=x, w=w: torch.nn.functional.linear(x, w), args.kernel_calls)}
                for bits in (8, 4):
                    layer = QuantLinear(quantize_rtn(w, bits, 64))
                    for kernel in ("packed", "dequant"):
                        layer.kernel = kernel
                        row[f"int{bits}_{kernel}_us"] = best_us(lambda layer=layer, x=x: layer(x), args.kernel_calls)
                rows.append(row)
    return rows


def tables(rows: list[dict], scale: list[dict], kernels: list[dict], preset_name: str) -> str:
    fp = rows[0]
    out = [("| config | file | x smaller | bits/weight | perplexity | change | mean KL | p99 KL | decode b1 tok/s | "
           "b1 vs fp32 | decode b8 tok/s | b8 vs fp32 |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['config']} | {r['size_bytes'] / 2**20:.2f} MiB | {r['x_smaller']:.2f}x | {r['bits_per_weight']:.2f} | "
                   f"{r['ppl']:.3f} | {100 * r['ppl_change']:+.2f}% | {r['kl_mean']:.5f} | {r['kl_p99']:.4f} | "
                   f"{r['decode_b1']:.0f} | {r['decode_b1'] / fp['decode_b1']:.2f}x | {r['decode_b8']:.0f} | "
                   f"{r['decode_b8'] / fp['decode_b8']:.2f}x |")
    if scale:
        sf = scale[0]
        out += ["", f"Decode speed, `{preset_name}` preset ({scale[0]['params'] / 1e6:.0f}M parameters, random weights):", "",
                "| config | bits/weight | decode b1 tok/s | b1 vs fp32 | decode b8 tok/s | b8 vs fp32 |",
                "|---|---:|---:|---:|---:|---:|"]
        for r in scale:
            out.append(f"| {r['config']} | {r['bits_per_weight']:.2f} | {r['decode_b1']:.1f} | "
                       f"{r['decode_b1'] / sf['decode_b1']:.2f}x | {r['decode_b8']:.1f} | {r['decode_b8'] / sf['decode_b8']:.2f}x |")
    out += ["", "Matmul of one quantized layer (best of repeats, microseconds; g64 for int4):", "",
            "| shape (out x in) | rows | fp32 | int8 packed | int8 dequant | int4 packed | int4 dequant |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for k in kernels:
        out.append(f"| {k['shape']} | {k['rows']} | {k['fp32_us']:.0f} | {k['int8_packed_us']:.0f} | "
                   f"{k['int8_dequant_us']:.0f} | {k['int4_packed_us']:.0f} | {k['int4_dequant_us']:.0f} |")
    return "\n".join(out)


def targets(rows: list[dict], scale: list[dict]) -> list[str]:
    by = {r["config"]: r for r in rows}
    fp = by["fp32"]
    best_b1 = max([r["decode_b1"] / fp["decode_b1"] for r in rows[2:]]
                  + [r["decode_b1"] / scale[0]["decode_b1"] for r in scale[2:]])
    checks = [
        ("int8 perplexity within 0.5%", abs(by["int8"]["ppl_change"]) <= 0.005, f"{100 * by['int8']['ppl_change']:+.2f}%"),
        ("int8 mean KL <= 0.002", by["int8"]["kl_mean"] <= 0.002, f"{by['int8']['kl_mean']:.5f}"),
        ("int4 gptq g64 perplexity within 3%", abs(by["int4 gptq g64"]["ppl_change"]) <= 0.03,
         f"{100 * by['int4 gptq g64']['ppl_change']:+.2f}%"),
        ("mixed <= 4.9 bits/weight", by["mixed gptq g64"]["bits_per_weight"] <= 4.9, f"{by['mixed gptq g64']['bits_per_weight']:.2f}"),
        ("int4 files >= 3.5x smaller than fp32", min(r["x_smaller"] for n, r in by.items() if n.startswith("int4")) >= 3.5,
         f"{min(r['x_smaller'] for n, r in by.items() if n.startswith('int4')):.2f}x (smallest)"),
        ("decode at batch 1 >= 1.5x fp32 (best quantized row)", best_b1 >= 1.5, f"{best_b1:.2f}x"),
    ]
    return [f"- {'PASS' if ok else 'MISS'}: {name}: {value}" for name, ok, value in checks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_quant"), help="where the quantized checkpoints go")
    ap.add_argument("--eval-tokens", type=int, default=160_000, help="held-out tokens for perplexity and KL")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per speed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale-preset", default="small", help="larger preset for the speed table ('' = skip)")
    ap.add_argument("--scale-tokens", type=int, default=32)
    ap.add_argument("--kernel-calls", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, the `tiny` preset for scale")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: quant or quant_quick, plus the "
                                     "arguments that differ from the defaults)")
    args = ap.parse_args()
    measured = ("base", "eval_tokens", "seq_len", "batch_size", "calib_samples", "new_tokens", "scale_preset",
                "scale_tokens")
    stem = result_name("quant_quick" if args.quick else "quant", args, {k: ap.get_default(k) for k in measured})
    if args.quick:
        args.eval_tokens, args.seq_len, args.calib_samples, args.new_tokens, args.repeats = 4_000, 128, 8, 4, 1
        args.scale_preset, args.scale_tokens, args.kernel_calls = args.scale_preset and "tiny", 4, 3
        args.work = str(Path(args.work).with_name(Path(args.work).name + "_quick"))
    missing = [str(p) for p in GENERAL + CALIB if not Path(p).exists()]
    if missing:
        sys.exit(f"skipped: the shared data is not here ({', '.join(missing)})")
    base = Path(args.base)
    ensure_base(base)
    base = base / "checkpoint" if (base / "checkpoint").exists() else base

    print(f"quality and speed on {base} ...", flush=True)
    rows = quality_rows(args, base, Path(args.work))
    scale = []
    if args.scale_preset:
        print(f"decode speed on a random `{args.scale_preset}` model ...", flush=True)
        scale = scale_rows(args)
    print("matmul paths ...", flush=True)
    kernels = kernel_rows(args)
    table = tables(rows, scale, kernels, args.scale_preset)
    checks = targets(rows, scale)
    print("\n" + table + "\n\n" + "\n".join(checks))
    out = write_result(stem, {**provenance(torch.get_num_threads()), "rows": rows, "scale": scale, "kernels": kernels,
                              "targets": checks, "args": vars(args), "torch": torch.__version__,
                              "torch_threads": torch.get_num_threads()})
    print(f"\nwritten {out}")
    if not args.quick and stem == "quant":  # the document shows the main result only
        write_doc(table, checks, args)


def results_block(table: str, checks: list[str]) -> str:
    """The tables and the targets, as docs/results/quant.md shows them (bench/report.py renders
    the same block from the JSON)."""
    return f"{table}\n\nTargets:\n\n" + "\n".join(checks) + "\n"


def write_doc(table: str, checks: list[str], args) -> None:
    cmd = "python bench/quant.py " + " ".join(a for a in sys.argv[1:])
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Quantization\n"
    head = text.split("## Results", 1)[0].rstrip()
    DOC.write_text(f"{head}\n\n## Results\n\nCommand ({torch.get_num_threads()} threads, torch {torch.__version__}):\n\n"
                   f"```bash\n{cmd.strip()}\n```\n\nFrom `bench/results/quant.json` (`rows`, `scale`, `kernels`, "
                   f"`targets`; `python bench/report.py` renders the block below from it):\n\n"
                   f"<!-- results:quant -->\n{results_block(table, checks)}<!-- /results:quant -->\n", encoding="utf-8")
    print(f"written {DOC}")


if __name__ == "__main__":
    main()
