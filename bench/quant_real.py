"""Weight-only quantization of a real model: SmolLM2-135M-Instruct and its MoE form.

For the dense model (`lightseek fetch smollm2-135m-instruct`) and its MoE form (`lightseek moefy
--target-k 8`, as the README converts it), the configurations `lightseek quant` offers that the
issue asks about: int8 per channel (rtn and GPTQ), int4 rtn and GPTQ at groups of 64 and 128, the
mixed policy (router, attention and shared experts at 8 bits; routed experts, dense FFNs and the
tied embedding/head at 4, GPTQ g64) and the budget policy at 4.9 bits per weight (4 or 8 bits per
matrix by Fisher-weighted sensitivity, GPTQ g64); the MoE form a subset (MOE_CONFIGS). Ablations
run when named with --configs (a result file of their own): int4 GPTQ g64 with the tied embedding
and head at 8 bits (as the GGUF the model ships in keeps its embedding, Q8_0), in stored column
order, calibrated sequentially, and without refitting the 4-bit grids to the rounded codes. The
"tuned" rows are int4 GPTQ g64 and the budget policy followed by end-to-end tuning of their scales
and offsets (quant.tune_steps: KL to the fp32 model on 256 further windows of the calibration
text, codes fixed).
Columns: file size, bits per weight, perplexity on held-out general text and its change against
the same model in fp32, mean and p99 per-token KL(fp32 || quantized) on the same tokens, batch-1
decode tokens/s through `generate` (the one-sequence decode step) and 16-row decode tokens/s
through the model's forward with a KV cache, each against fp32 in the same run.

The imported weights come from a Q4_1 GGUF: 4-bit codes in groups of 32 along each row. A 4-bit
grid of groups of 32 would find those values again almost exactly, so it is not measured; groups
of 64 and 128 span two and four of the source's groups and lose information for real.

The fp32 reference's log-probabilities are computed once and kept (fp16) for every configuration;
the fp32 row's KL against them is that rounding alone. The "bf16 autocast" row runs the fp32 model
under bf16 autocast, no quantization: the packed kernels take bf16 activations, so its KL is the
floor under theirs. For the MoE form, "same experts" is the share of (token, router) choices equal
to the fp32 model's: a flipped choice adds or drops a whole expert, so KL there follows the flips.
GPTQ calibrates on 64 windows of 256 tokens, a third from each of CALIB's sources: a Gutenberg
book and the State of the Union addresses (bench/quant.py's calibration text) and the CMRC 2018
dev passages, since a quarter of the held-out text is Chinese (its trial passages: no text is on
both sides). The held-out text is bench/lora_vs_full.py's general set.

    python bench/quant_real.py [--eval-tokens 16384] [--forms dense moe] [--configs NAME ...]
    python bench/quant_real.py --forms moe --speed-only   # decode speeds again, of the checkpoints left
    python bench/quant_real.py --forms moe --configs int8 --moe-ckpt DIR   # another MoE form (a healed one)

Prints markdown tables and writes bench/results/quant_real.json with the run's provenance.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import SHARED, general_tokens  # noqa: E402
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402
from quant import CALIB as BOOKS  # noqa: E402
from real_model import timed  # noqa: E402

NAME = "smollm2-135m-instruct"
# English and Chinese, as the held-out text (whose Chinese quarter is CMRC 2018's trial passages)
CALIB = [*BOOKS, SHARED / "zh_cmrc2018_wiki" / "cmrc2018_dev.json"]


def w8a8_flags() -> list[str]:
    """`lightseek quant` settings of the W8A8 checkpoint bench/real_model.py and bench/serve_real.py
    time: 8-bit weights and inputs, smoothed on this bench's calibration text (English, Chinese)."""
    return ["--quant.bits=8", "--quant.activations=8", "--quant.calib.text_field=text,context_text",
            "--quant.calib.files=" + json.dumps([str(p) for p in CALIB])]
WORK = ROOT / "runs" / "quant_real"


def work_dir(form: str, args) -> Path:
    """Where a form's quantized checkpoints go: WORK/dense, WORK/moe, or for a --moe-ckpt a folder
    of its own named by its path (so that quantizing a healed form leaves the default form's
    checkpoints, which --speed-only times, in place)."""
    if form == "moe" and args.moe_ckpt:
        path = Path(args.moe_ckpt).resolve()
        tag = path.relative_to(ROOT / "runs") if path.is_relative_to(ROOT / "runs") else Path(path.name)
        return WORK / ("moe@" + str(tag).replace("/", "+"))
    return WORK / form
TUNE_STEPS = 100  # end-to-end tuning of the grids (quant.tune_steps): 4 windows a step, ~13 s a step here
CONFIGS = {
    "int8": {"bits": 8},
    # per channel still, each column's rounding error compensated in the columns after it
    "int8 gptq": {"bits": 8, "method": "gptq"},
    # the same int8 codes, multiplied dequantized in fp32: the KL of the weights' rounding alone, without
    # the packed kernels' bf16 activations (quality only: dequantizing every call is no serving path)
    "int8, fp32 compute": {"bits": 8, "kernel": "dequant"},
    # 8-bit inputs too (W8A8): the attention and FFN inputs smoothed, rounded per token, integer products
    "int8 w8a8": {"bits": 8, "activations": 8},
    "int4 rtn g64": {"bits": 4, "group_size": 64},
    "int4 rtn g128": {"bits": 4, "group_size": 128},
    "int4 gptq g64": {"bits": 4, "group_size": 64, "method": "gptq"},
    # the same codes, then every scale and offset trained end to end towards the fp32 model (KL)
    "int4 gptq g64, tuned": {"bits": 4, "group_size": 64, "method": "gptq", "tune_steps": TUNE_STEPS},
    "int4 gptq g128": {"bits": 4, "group_size": 128, "method": "gptq"},
    "mixed gptq g64": {"policy": "mixed", "group_size": 64, "method": "gptq"},
    # 4 or 8 bits matrix by matrix, by Fisher-weighted sensitivity, within 4.9 bits per weight
    "budget 4.9 gptq g64": {"policy": "budget", "max_bits": 4.9, "group_size": 64, "method": "gptq"},
    # the same choice of bits, its grids then tuned end to end as above (8-bit ones too)
    "budget 4.9 gptq g64, tuned": {"policy": "budget", "max_bits": 4.9, "group_size": 64, "method": "gptq",
                                   "tune_steps": TUNE_STEPS},
    # ablations, measured when named (--configs): as the GGUF the model ships in does, 4-bit layers with
    # the (tied) embedding and head at 8 bits; GPTQ's two options against the default (act order, one
    # calibration pass)
    "int4 gptq g64, 8-bit embedding": {"bits": 4, "group_size": 64, "method": "gptq",
                                       "roles": {"embed": 8, "head": 8}},
    "int4 gptq g64, stored order": {"bits": 4, "group_size": 64, "method": "gptq", "act_order": False},
    "int4 gptq g64, sequential": {"bits": 4, "group_size": 64, "method": "gptq", "sequential": True},
    "int4 gptq g64, no refit": {"bits": 4, "group_size": 64, "method": "gptq", "refit": 0},
}
# widths a group does not divide (576 by 128; the MoE form's 96-wide experts by 64 and 128) pad
# their last group (stored unpadded)
CONFIGS = {name: {**kw, "pad_groups": True} for name, kw in CONFIGS.items()}
ABLATIONS = ("int8, fp32 compute", "int4 gptq g64, 8-bit embedding", "int4 gptq g64, stored order",
             "int4 gptq g64, sequential", "int4 gptq g64, no refit")
QUALITY_ONLY = ("int8, fp32 compute",)  # no decode speeds
MOE_CONFIGS = ("int8", "int8 gptq", "int8, fp32 compute", "int4 rtn g64", "int4 gptq g64", "int4 gptq g64, tuned",
               "budget 4.9 gptq g64")


@contextmanager
def recorded_routes(model):
    """Collects each router's choice while inside: {router name: [(tokens, experts) bool masks]},
    one mask per forward (nothing for a dense model)."""
    from lightseek.model.moe import Router

    masks: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):
        def record(router, inputs, out) -> None:
            ids = out.expert_ids_TK  # dropped slots hold n_experts: one column past the last expert
            chosen = torch.zeros(ids.shape[0], router.n_experts + 1, dtype=torch.bool).scatter_(1, ids, True)
            masks.setdefault(name, []).append(chosen[:, :-1])
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, Router)]
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()


class Reference:
    """The fp32 model's next-token log-probabilities on the evaluation windows, kept in fp16 (steps
    of 1/64 at |log p| of 16-32, where bf16's 1/8 put a floor of 3.5e-4 under the mean KL), and for
    an MoE model every router's choice of experts per token."""

    def __init__(self, model, windows: list[torch.Tensor]):
        self.windows, self.logq, self.loss_sum = windows, [], 0.0
        with torch.inference_mode(), recorded_routes(model) as routes:
            for w in windows:
                logq = F.log_softmax(model(w[:, :-1]).logits.float(), -1)
                self.loss_sum += -logq.gather(-1, w[:, 1:, None]).sum().item()
                self.logq.append(logq.half())
        self.routes = {name: torch.cat(m) for name, m in routes.items()}
        self.n = sum(w[:, 1:].numel() for w in windows)

    def compare(self, model, bf16: bool = False) -> dict:
        """Perplexity, KL(fp32 || model) per token (mean, p99) and, for an MoE model, the share of
        (token, router) choices identical to the fp32 model's; ``bf16`` runs under CPU autocast."""
        kls, loss_sum = [], 0.0
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), recorded_routes(model) as routes, autocast:
            for w, logq_half in zip(self.windows, self.logq):
                logp = F.log_softmax(model(w[:, :-1]).logits.float(), -1)
                logq = logq_half.float()
                kls.append((logq.exp() * (logq - logp)).sum(-1).reshape(-1).clamp_min(0.0))
                loss_sum += -logp.gather(-1, w[:, 1:, None]).sum().item()
        kl = torch.cat(kls).double()
        ppl, ref_ppl = math.exp(loss_sum / self.n), math.exp(self.loss_sum / self.n)
        out = {"ppl": ppl, "ref_ppl": ref_ppl, "ppl_change": ppl / ref_ppl - 1, "kl_mean": kl.mean().item(),
               "kl_p99": kl.sort().values[round(0.99 * (kl.numel() - 1))].item(), "tokens": self.n}
        if self.routes:
            same = [(torch.cat(routes[name]) == ref).all(-1).double().mean().item() for name, ref in self.routes.items()]
            out["same_experts"] = sum(same) / len(same)
        return out


def decode_speeds(model, repeats: int, new_tokens: int = 64, rows: int = 16, prompt: int = 64) -> dict:
    """Greedy decode tokens/s: batch 1 through `generate_ids` (prefill included, as `generate` is
    timed elsewhere), and ``rows`` rows through the forward with a KV cache."""
    from lightseek.model.generate import generate_ids
    from lightseek.model.kv_cache import KVCache
    from lightseek.model.sampling import SamplingParams

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (rows, prompt), generator=g)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)

    def one():
        assert len(list(generate_ids(model, ids[0].tolist(), greedy))) == new_tokens

    def many():
        with torch.inference_mode():
            cache = KVCache.for_model(model, rows, prompt + new_tokens)
            nxt = model(ids, cache=cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(new_tokens - 1):
                nxt = model(nxt, cache=cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)

    return {"decode_b1": new_tokens / timed(one, repeats), "decode_b16": rows * new_tokens / timed(many, repeats)}


def measure_form(form: str, src: Path, windows_of, args, save) -> list[dict]:
    from lightseek.model.checkpoint import load_model
    from lightseek.quant import QuantConfig, bits_per_weight
    from lightseek.quant.config import CalibConfig
    from lightseek.quant.run import quantize_checkpoint

    fp32 = load_model(src).eval()
    ref = Reference(fp32, windows_of(src))
    size = (src / "model.safetensors").stat().st_size
    rows = [{"form": form, "config": "fp32", "size_bytes": size, "bits_per_weight": 32.0, "quant_s": 0.0,
             **ref.compare(fp32), **decode_speeds(fp32, args.repeats)}]
    report(rows[-1], rows[0])
    # no quantization, bf16 compute: the packed kernels take bf16 activations, so this is the floor
    # under their KL (for the MoE form, routing flips caused by rounding alone). Quality only: CPU
    # autocast is no serving path (4x slower than fp32 here), and timing it took 25 minutes.
    rows.append({"form": form, "config": "bf16 autocast", "size_bytes": size, "bits_per_weight": 16.0,
                 "quant_s": 0.0, **ref.compare(fp32, bf16=True)})
    report(rows[-1], rows[0])
    save(rows)
    del fp32
    calib = CalibConfig(files=[str(p) for p in CALIB], samples=args.calib_samples, seq_len=256,
                        text_field="text,context_text")
    if args.configs:
        names = {k: CONFIGS[k] for k in args.configs if form == "dense" or k in MOE_CONFIGS}
    else:
        names = {k: v for k, v in CONFIGS.items() if k not in ABLATIONS and (form == "dense" or k in MOE_CONFIGS)}
    for name, kw in names.items():
        out = work_dir(form, args) / name.replace(" ", "_")
        t0 = time.perf_counter()
        made = quantize_checkpoint(src, QuantConfig(**kw, calib=calib), out, overwrite=True, show_progress=False)
        quant_s = time.perf_counter() - t0
        q = load_model(out).eval()
        eights: dict[str, int] = {}  # matrices at 8 bits per role (the budget policy chooses them)
        for info in q.quant_layers.values():
            eights[info["role"]] = eights.get(info["role"], 0) + (info["bits"] == 8)
        rows.append({"form": form, "config": name, "size_bytes": (out / "model.safetensors").stat().st_size,
                     "at_8_bits": eights,
                     "bits_per_weight": bits_per_weight(q), "quant_s": quant_s,
                     **({"tuning": made["tuning"]} if made["tuning"] else {}), **ref.compare(q),
                     **({} if name in QUALITY_ONLY else decode_speeds(q, args.repeats))})
        report(rows[-1], rows[0])
        save(rows)
        del q
    return rows


def speeds_only(form: str, src: Path, args, save) -> list[dict]:
    """Decode speeds of fp32 and of each checkpoint in the form's `work_dir`, nothing else."""
    from lightseek.model.checkpoint import load_model

    rows = []
    work = work_dir(form, args)
    saved = {d.name.replace("_", " "): d for d in sorted(work.iterdir()) if (d / "config.json").is_file()} \
        if work.is_dir() else {}
    missing = [name for name in args.configs or () if name not in saved]
    if not saved or missing:
        raise SystemExit(f"--speed-only: no saved checkpoint of {', '.join(missing) or 'any configuration'} in "
                         f"{work} (run python bench/quant_real.py --forms {form} first)")
    names = {"fp32": src} | {name: d for name, d in saved.items()
                             if name not in QUALITY_ONLY and (not args.configs or name in args.configs)}
    for name, path in names.items():
        rows.append({"form": form, "config": name, **decode_speeds(load_model(path).eval(), args.repeats)})
        r, fp = rows[-1], rows[0]
        print(f"  {form} {name}: b1 {r['decode_b1']:.1f} tok/s ({r['decode_b1'] / fp['decode_b1']:.2f}x), "
              f"16 rows {r['decode_b16']:.1f} tok/s ({r['decode_b16'] / fp['decode_b16']:.2f}x)", flush=True)
        save(rows)
    return rows


def report(r: dict, fp: dict) -> None:
    print(f"  {r['form']} {r['config']}: {r['size_bytes'] / 2**20:.1f} MiB, {r['bits_per_weight']:.2f} bits/weight, "
          f"ppl {r['ppl']:.3f} ({100 * r['ppl_change']:+.2f}%), KL {r['kl_mean']:.5f} (p99 {r['kl_p99']:.4f}), "
          + (f"same experts {100 * r['same_experts']:.1f}%, " if "same_experts" in r else "")
          + (f"b1 {r['decode_b1']:.1f} tok/s ({r['decode_b1'] / fp['decode_b1']:.2f}x), "
             f"16 rows {r['decode_b16']:.1f} tok/s ({r['decode_b16'] / fp['decode_b16']:.2f}x)"
             if "decode_b1" in r else "speed not measured"), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens for perplexity and KL")
    ap.add_argument("--calib-samples", type=int, default=64, help="GPTQ calibration windows of 256 tokens")
    ap.add_argument("--repeats", type=int, default=3, help="timed decode runs per configuration (median)")
    ap.add_argument("--forms", nargs="+", default=["dense", "moe"], choices=["dense", "moe"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="only these configurations (and the fp32 "
                    "reference); a result file of its own")
    ap.add_argument("--speed-only", action="store_true", help="decode speeds alone, of fp32 and of the checkpoints an "
                    "earlier run left in runs/quant_real/<form>/ (after a change to the engine); a result file of its own")
    ap.add_argument("--moe-ckpt", help="the MoE form to quantize (default: runs/real_model/moe-k8, converted by "
                    "`lightseek moefy --target-k 8` when missing), e.g. a healed one from bench/moefy.py")
    ap.add_argument("--result", help="the result file's name (default: from the arguments that differ)")
    args = ap.parse_args()
    stem = result_name("quant_real", args, {k: ap.get_default(k) for k in ("eval_tokens", "calib_samples", "forms",
                                                                           "configs", "speed_only", "moe_ckpt")})
    torch.set_num_threads(args.threads)

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.models.fetch import fetch

    dense = Path(fetch(NAME))
    moe = Path(args.moe_ckpt) if args.moe_ckpt else ROOT / "runs" / "real_model" / "moe-k8"  # shared with serve_real
    if "moe" in args.forms and args.moe_ckpt and not (moe / "config.json").is_file():
        raise SystemExit(f"--moe-ckpt {moe}: no checkpoint there")
    if "moe" in args.forms and not (moe / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "lightseek", "moefy", NAME, "--out", str(moe), "--target-k", "8",
                        "--quiet"], check=True)

    def windows_of(src: Path) -> list[torch.Tensor]:
        ids = torch.tensor(general_tokens(Tokenizer.load(src), args.eval_tokens + 4096)[:args.eval_tokens + 8])
        n = args.eval_tokens // 256
        return list(ids[:n * 256 + 1].unfold(0, 257, 256)[:n].split(8))  # (8, 257) windows

    rows: list[dict] = []

    def save(form_rows: list[dict]) -> None:  # after every configuration: a run cut short keeps its rows
        write_result(stem, {**provenance(args.threads), "model": NAME, "complete": False,
                            "rows": rows + form_rows, "args": vars(args)})

    for form in args.forms:
        src = dense if form == "dense" else moe
        if args.speed_only:
            rows += speeds_only(form, src, args, save)
        else:
            rows += measure_form(form, src, windows_of, args, save)
    if args.speed_only:
        out = write_result(stem, {**provenance(args.threads), "model": NAME, "complete": True, "rows": rows,
                                  "args": vars(args)})
        print(f"\nwritten {out}")
        return
    print("\n| form | config | file MiB | bits/weight | perplexity | change | mean KL | p99 KL | same experts | "
          "b1 tok/s | b1 vs fp32 | 16 rows tok/s | vs fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fp = next(x for x in rows if x["form"] == r["form"] and x["config"] == "fp32")
        print(f"| {r['form']} | {r['config']} | {r['size_bytes'] / 2**20:.1f} | {r['bits_per_weight']:.2f} | "
              f"{r['ppl']:.3f} | {100 * r['ppl_change']:+.2f}% | {r['kl_mean']:.5f} | {r['kl_p99']:.4f} | "
              + (f"{100 * r['same_experts']:.1f}% | " if "same_experts" in r else "– | ")
              + (f"{r['decode_b1']:.1f} | {r['decode_b1'] / fp['decode_b1']:.2f}x | {r['decode_b16']:.1f} | "
                 f"{r['decode_b16'] / fp['decode_b16']:.2f}x |" if "decode_b1" in r else "– | – | – | – |"))
    out = write_result(stem, {**provenance(args.threads), "model": NAME, "complete": True, "rows": rows,
                              "args": vars(args)})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
