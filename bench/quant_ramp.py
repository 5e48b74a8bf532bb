"""Does a soft routing threshold keep an int8 MoE form's predictions with its fp32 form's?

An int8 copy of SmolLM2's MoE form (bench/quant_real.py) switches a quarter of its routing
choices against the fp32 form, and each switch adds or drops a whole expert: its mean KL is some
50 times the int8 target (0.002), where the dense model meets it. `model.threshold_ramp` fades an
expert out over a band of routing mass below the threshold instead of cutting it, so that a
perturbation moves the output a little: the same experts run. This measures, for each ramp
width, the fp32 form's perplexity with that ramp (against the hard cut's: the price of a ramp the
form was not healed with) and the int8 copy's KL against the fp32 form with the same ramp.

The int8 copy is made once (per-channel round to nearest, bench/quant_real.py's "int8"); the
ramp is a routing setting, applied to both models after loading. The held-out text, windows and
KL are bench/quant_real.py's.

    python bench/quant_ramp.py --moe-ckpt runs/moefy_bench/heal_k5_<stamp>/healed [--ramps 0 0.05 0.1 0.2]

Writes bench/results/quant_ramp.json with the run's provenance.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import general_tokens  # noqa: E402
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402
from quant_real import Reference  # noqa: E402

WORK = ROOT / "runs" / "quant_ramp"


def set_ramp(model, ramp: float) -> None:
    """The routing setting on a loaded model (its routers read it from the shared config)."""
    for layer in model.moe_layers():
        object.__setattr__(layer.router.cfg, "threshold_ramp", ramp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe-ckpt", required=True, help="the MoE form (a dynamic router), e.g. a healed one from "
                    "bench/moefy.py")
    ap.add_argument("--ramps", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    ap.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens for perplexity and KL")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--result", help="the result file's name (default: from the arguments that differ)")
    args = ap.parse_args()
    stem = result_name("quant_ramp", args, {k: ap.get_default(k) for k in ("ramps", "eval_tokens")})
    torch.set_num_threads(args.threads)

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.quant import QuantConfig
    from lightseek.quant.run import quantize_checkpoint

    src = Path(args.moe_ckpt)
    if not (src / "config.json").is_file():
        raise SystemExit(f"--moe-ckpt {src}: no checkpoint there")
    fp32 = load_model(src).eval()
    if fp32.cfg.router_mode != "dynamic":
        raise SystemExit(f"--moe-ckpt {src}: its router is '{fp32.cfg.router_mode}'; the ramp is a dynamic router's")
    out = WORK / "int8"
    t0 = time.perf_counter()
    quantize_checkpoint(src, QuantConfig(bits=8), out, overwrite=True, show_progress=False)
    quant_s = time.perf_counter() - t0
    q = load_model(out).eval()

    ids = torch.tensor(general_tokens(Tokenizer.load(src), args.eval_tokens + 4096)[:args.eval_tokens + 8])
    n = args.eval_tokens // 256
    windows = list(ids[:n * 256 + 1].unfold(0, 257, 256)[:n].split(8))  # (8, 257) windows, as quant_real's

    rows: list[dict] = []
    hard_ppl = None
    for ramp in args.ramps:
        set_ramp(fp32, ramp)
        set_ramp(q, ramp)
        ref = Reference(fp32, windows)
        ppl = math.exp(ref.loss_sum / ref.n)
        hard_ppl = ppl if ramp == 0 else hard_ppl
        rows.append({"ramp": ramp, "fp32_ppl": ppl, **{f"int8_{k}": v for k, v in ref.compare(q).items()}})
        r = rows[-1]
        print(f"  ramp {ramp}: fp32 ppl {ppl:.3f}, int8 KL {r['int8_kl_mean']:.5f} (p99 {r['int8_kl_p99']:.4f}), "
              f"same experts {100 * r['int8_same_experts']:.1f}%, int8 ppl change {100 * r['int8_ppl_change']:+.2f}%",
              flush=True)
        write_result(stem, {**provenance(args.threads), "moe_ckpt": str(src), "quant_s": quant_s,
                            "hard_cut_fp32_ppl": hard_ppl, "complete": False, "rows": rows, "args": vars(args)})
    print("\n| ramp | fp32 perplexity | vs hard cut | int8 mean KL | int8 p99 KL | same experts | int8 perplexity change |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = f"{100 * (r['fp32_ppl'] / hard_ppl - 1):+.1f}%" if hard_ppl else "–"
        print(f"| {r['ramp']} | {r['fp32_ppl']:.2f} | {vs} | {r['int8_kl_mean']:.4f} | {r['int8_kl_p99']:.3f} | "
              f"{100 * r['int8_same_experts']:.1f}% | {100 * r['int8_ppl_change']:+.2f}% |")
    path = write_result(stem, {**provenance(args.threads), "moe_ckpt": str(src), "quant_s": quant_s,
                               "hard_cut_fp32_ppl": hard_ppl, "complete": True, "rows": rows, "args": vars(args)})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
