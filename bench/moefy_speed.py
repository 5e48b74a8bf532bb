"""Dense against its dynamic MoE form in lightseek's own generation path: is the compute cut real?

SmolLM2-135M-Instruct and the 16-expert MoE that `bench/moefy.py` converts (co-activation split,
fitted routers), re-targeted to --k experts per token on average (default 5 of 16, 31% of the
FFN), each in fp32, int8 (per channel) and int4 (group 32: the experts are 96 neurons wide, and
64 does not divide 96) through `lightseek quant`. Each system runs in a process of its own
through `bench/real_model.py`'s lightseek runner (prefill of one 512-token prompt, greedy
batch-1 decode of 64 tokens after a 64-token prompt, 16 rows decoding 32 tokens each; medians of
--repeats), with prompts cut from held-out English text, so the routers see real text. Then a
torch.profiler pass of one batch-1 decode of each fp32 model says where the time goes (top
operators by self CPU time). --dispatch runs the MoE with another expert dispatch (for example
grouped_mm, which 'auto' used for every batch size before the per-row decode path).

    python bench/moefy_speed.py [--k 5] [--repeats 3] [--threads 2] [--dispatch auto]

Needs the converted checkpoint of `python bench/moefy.py` (runs/moefy_bench/moe_coactivation_*).
Writes bench/results/moefy_speed.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

NAME = "smollm2-135m-instruct"
RUNS = ROOT / "runs" / "moefy_bench"


def prompt_text(path: Path) -> Path:
    """Held-out text for the prompts: the benchmark's medical and speech sources."""
    from moefy import eval_sources

    if not path.is_file():
        src = eval_sources()
        path.write_text("\n\n".join(src["medical"][:200] + src["speeches"][:3]), encoding="utf-8")
    return path


def moe_at(k: float) -> Path:
    """The converted checkpoint re-targeted to an average of ``k`` (on the benchmark's calibration mix)."""
    import torch
    from moefy import calibration_mix, latest_conversion

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import TOKENIZER, load_model, resolve_checkpoint, save_checkpoint
    from lightseek.moefy.convert import retarget

    out = RUNS / f"speed_moe_k{k:g}"
    if (out / "config.json").is_file():
        return out
    src = latest_conversion()
    model = load_model(src).eval()
    dense = resolve_checkpoint(NAME)
    with torch.inference_mode():
        retarget(model, calibration_mix(Tokenizer.load(dense), model.cfg.max_seq_len), k)
    save_checkpoint(out, model, tokenizer_file=dense / TOKENIZER, extra={"retargeted_from": str(src), "k": k})
    return out


def quantized(src: Path, name: str, flags: list[str]) -> Path:
    from lightseek.quant.run import load_quant_config, quantize_checkpoint

    out = RUNS / f"speed_{name}"
    if not (out / "config.json").is_file():
        quantize_checkpoint(src, load_quant_config(None, flags), out, show_progress=False)
    return out


def profile(ckpt: Path, text: Path, threads: int, dispatch: str, top: int = 8) -> list[dict]:
    """Top operators by self CPU time over one 64-token greedy decode (in this process)."""
    import torch
    from real_model import NEW, PROMPT, prompts
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.model.generate import generate_ids
    from lightseek.model.sampling import SamplingParams

    torch.set_num_threads(threads)
    model = load_model(ckpt)
    model.set_dispatch(dispatch)
    one = prompts(1, PROMPT, text_ids=Tokenizer.load(ckpt).encode(text.read_text(encoding="utf-8")))[0]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=NEW)
    list(generate_ids(model, one, greedy))  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        list(generate_ids(model, one, greedy))
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1000,
             "share": e.self_cpu_time_total / total} for e in events[:top]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=float, default=5.0, help="average routed experts per token, of 16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dispatch", default="auto",
                    help="the MoE's expert dispatch (auto: per-row for one token, grouped GEMM for more)")
    ap.add_argument("--result")
    args = ap.parse_args()
    stem = result_name("moefy_speed", args, {"k": 5.0, "repeats": 3, "threads": 2, "dispatch": "auto"})

    from lightseek.model.checkpoint import resolve_checkpoint

    dense = resolve_checkpoint(NAME)
    moe = moe_at(args.k)
    text = prompt_text(RUNS / "speed_prompts.txt")
    int8, int4 = ["--quant.bits=8"], ["--quant.bits=4", "--quant.group_size=32"]
    systems = [("dense", "fp32", dense), ("moe", "fp32", moe),
               ("dense", "int8", quantized(dense, "dense_int8", int8)),
               ("moe", "int8", quantized(moe, "moe_int8", int8)),
               ("dense", "int4 g32", quantized(dense, "dense_int4_g32", int4)),
               ("moe", "int4 g32", quantized(moe, "moe_int4_g32", int4))]
    rows = []
    for model, precision, ckpt in systems:
        cmd = [sys.executable, str(ROOT / "bench" / "real_model.py"), "--system", "lightseek", "--source", str(ckpt),
               "--text", str(text), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--dispatch", args.dispatch]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append({"model": model, "precision": precision, **json.loads(out)})
        print(f"{model} {precision}: {rows[-1]}", file=sys.stderr, flush=True)
    by = {(r["model"], r["precision"]): r for r in rows}
    ratios = {p: {m: by[("moe", p)][m] / by[("dense", p)][m] for m in ("prefill_tok_s", "decode_b1_tok_s",
                                                                         "decode_b16_tok_s")}
              for p in ("fp32", "int8", "int4 g32")}
    profiles = {f"{m} fp32": profile(c, text, args.threads, args.dispatch) for m, p, c in systems if p == "fp32"}
    print("\n| model | precision | prefill tok/s | decode b1 tok/s | decode 16 rows tok/s | k | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['prefill_tok_s']:.0f} | {r['decode_b1_tok_s']:.1f} | "
              f"{r['decode_b16_tok_s']:.1f} | {r.get('avg_k', 0):.2f} | {r['peak_mib']:.0f} |")
    for p, r in ratios.items():
        print(f"MoE / dense, {p}: " + ", ".join(f"{m} {v:.2f}x" for m, v in r.items()))
    out = write_result(stem, {**provenance(args.threads), "model": NAME, "k": args.k,
                              "settings": {"repeats": args.repeats, "threads": args.threads, "dispatch": args.dispatch,
                                           "prompts": "held-out MedQuAD answers and State of the Union text"},
                              "rows": rows, "ratios": ratios, "profiles": profiles})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
