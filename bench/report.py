"""The results tables of README.md and docs/results/*.md, rendered from bench/results/*.json.

Every figure in those tables comes from a committed result file that a benchmark wrote (with its
command, git revision, date, machine and library versions). A table sits between two markers in
its document, and this script owns what lies between them:

    <!-- results:NAME -->
    | ... rendered from the JSON ... |
    <!-- /results:NAME -->

    python bench/report.py           rewrite every table from the JSON files
    python bench/report.py --check   exit 1, with a diff, where a document differs from its JSON

A table is a function of the result files it names (`TABLES`); the README's results table is one
row per result (`README_ROWS`), each naming its JSON file and the command that wrote it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MARKER = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


class ReportError(Exception):
    pass


@cache
def bench_module(name: str):
    """bench/<name>.py as a module of its own name-space (``lightseek_bench.<name>``), imported
    without leaving bench/ on sys.path, where its scripts would shadow packages of the same name
    (tests/distill, for one)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"lightseek_bench.{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    saved = list(sys.path)
    sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their neighbours (provenance)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


@cache
def result(name: str) -> dict:
    """bench/results/<name>.json."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise ReportError(f"{path.relative_to(ROOT)} is missing (run the benchmark that writes it)")
    return json.loads(path.read_text(encoding="utf-8"))


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one character per column, 'l' or 'r'."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|\n"
    return "".join("| " + " | ".join(cells) + " |\n" for cells in [header]) + rule + "".join(
        "| " + " | ".join(cells) + " |\n" for cells in rows)


def rows_by(data: dict, key: str, field: str = "system") -> dict:
    return {r[field]: r for r in data[key]}


# --- the README's results table -----------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    what: str
    source: str                       # result file name, without .json
    figure: Callable[[dict], str]     # the figure(s), from that file


def _serve_load_row(d: dict) -> str:
    by = {r["clients"]: r for r in d["levels"]}
    same = {h["batch"]: h["output_tok_s"] for h in d["transformers_generate"]}
    last = max(by)
    return (f"{by[16]['output_tok_s']:,.0f} / {by[last]['output_tok_s']:,.0f}; "
            f"{by[16]['output_tok_s'] / by[1]['output_tok_s']:.1f}x / {by[last]['output_tok_s'] / by[1]['output_tok_s']:.1f}x; "
            f"{by[16]['output_tok_s'] / same[16]:.2f}x / {by[last]['output_tok_s'] / same[last]:.2f}x (target 2x at 16: "
            f"{'met' if by[16]['output_tok_s'] >= 2 * same[16] else 'not met'}); {by[last]['errors']} errors, "
            f"{by[last]['leaked_slots']} leaked slots, {by[last]['disconnects']:,} disconnects")


def _serve_ceiling_row(d: dict) -> str:
    free = next(r for r in d["levels"] if r["forward_ms"] == 0)
    needed = d["needed_forward_ms"]
    return (f"{'≤ ' + format(needed, '.2f') + ' ms' if needed is not None else 'not bracketed'} vs "
            f"{d['real_forward_ms']:.2f} ms; {free['output_tok_s']:,.0f} tok/s")


def _throughput_row(d: dict) -> str:
    r = {x["variant"]: x for x in d["rows"]}
    dyn, dense = r["dynamic MoE (k~2.5)"], r["dense, equal active params"]
    return f"{dyn['tokens_per_s']:,.0f} vs {dense['tokens_per_s']:,.0f} ({dyn['ratio_to_dense']:.2f}x)"


def _quant_quality(d: dict) -> str:
    by = {r["config"]: r for r in d["rows"]}
    return (f"{100 * by['int8']['ppl_change']:+.2f}% / {100 * by['int4 gptq g64']['ppl_change']:+.2f}% / "
            f"{100 * by['mixed gptq g64']['ppl_change']:+.2f}% ({by['mixed gptq g64']['bits_per_weight']:.2f} bits per "
            f"weight); {by['int4 gptq g64']['x_smaller']:.1f}x smaller")


def _quant_speed(d: dict) -> str:
    by = {r["config"]: r for r in d["scale"]}
    fp = by["fp32"]["decode_b1"]
    return f"{by['int8']['decode_b1'] / fp:.2f}x / {by['int4 rtn g64']['decode_b1'] / fp:.2f}x"


def _routing_row(d: dict) -> str:
    parts = []
    for c, v in d["corpora"].items():
        r = {x["variant"]: x for x in v["rows"]}
        dyn = r["dynamic k~2.5"]
        parts.append(f"{c}: dynamic {dyn['val_loss']:.4f} vs topk k=2 {r['topk k=2']['val_loss']:.4f}, k=3 "
                     f"{r['topk k=3']['val_loss']:.4f}; MaxVio {dyn['max_vio_train']:.3f} training text / "
                     f"{dyn['max_vio']:.3f} held out")
    return "; ".join(parts) + " ([routing.md](docs/results/routing.md))"


def _real_model_speed(d: dict) -> str:
    r = rows_by(d, "rows")
    ref = r["transformers fp32 (generate)"]["decode_b1_tok_s"]
    ours = [r[s]["decode_b1_tok_s"] for s in ("lightseek fp32", "lightseek int8", "lightseek int4 g64", "lightseek w8a8")]
    best = max(ours[1:])
    llama = next(v for k, v in r.items() if k.startswith("llama.cpp"))

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    against_llama = ("llama.cpp not measured" if "skipped" in llama else
                     f"{llama['decode_b1_tok_s']:.1f} for llama.cpp; best quantized {best / llama['decode_b1_tok_s']:.2f}x "
                     f"llama.cpp, target 0.5x: {met(best >= 0.5 * llama['decode_b1_tok_s'])}")
    return (f"{' / '.join(f'{v:.1f}' for v in ours)} vs {ref:.1f} for transformers "
            f"({' / '.join(f'{v / ref:.2f}x' for v in ours)}; target 3x: fp32 {met(ours[0] >= 3 * ref)}, "
            f"quantized {met(best >= 3 * ref)}); {against_llama}")


def _sliced_linear_row(d: dict) -> str:
    ours, hf = d["decode"]["all"], d["decode"]["transformers"]
    b1, b16 = ours["generate_b1_tok_s"] / hf["generate_b1_tok_s"], ours["decode_b16_tok_s"] / hf["generate_b16_tok_s"]
    return (f"{ours['generate_b1_tok_s']:.1f} / {ours['decode_b16_tok_s']:.1f} vs {hf['generate_b1_tok_s']:.1f} / "
            f"{hf['generate_b16_tok_s']:.1f} ({b1:.2f}x / {b16:.2f}x; 3x at batch 1 {'met' if b1 >= 3 else 'not met'})")


def _real_model_tasks(d: dict) -> str:
    return " / ".join(f"{d['tasks'][t]['acc']:.3f}" for t in ("medquad", "fiqa", "pubmedqa"))


# the real base's learning-rate sweep: full fine-tuning and rank 8 at each pair of peak rates
LR_SWEEP = ("lora_vs_full_real_configs-full-lora-r8-lora-r8-bf16",
            "lora_vs_full_real_configs-full-lora-r8_lr-full-0.0001_lr-lora-0.001",
            "lora_vs_full_real_configs-full-lora-r8_lr-full-0.0002_lr-lora-0.002")


def _by_language(d: dict, how: str) -> str:
    """The domain classifier's second-set macro-F1, English; Chinese, at ``how`` (threshold or argmax)."""
    return "; ".join(f"{d['questions_by_language'][how][lang]['macro_f1']:.3f}" for lang in ("en", "zh"))


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _moe_layer_row(d: dict) -> str:
    heads = {(c["dim"], c["n_experts"]): next(h["fwdbwd_s"] for h in c["headline"] if h["ours"].startswith("dynamic"))
             for c in d["configs"]}
    a, b = heads[(512, 16)], heads[(512, 64)]
    return " / ".join(f"{x['vs_hf_eager']:.2f}x; {x['vs_hf_best']:.2f}x; {x['vs_dense']:.2f}x" for x in (a, b))


def _adapters_row(d: dict) -> str:
    by = {(r["domain"], r["config"]): r for r in d["results"]}
    gains = " / ".join(f"{100 * by[(dom, 'lora')]['gain_recovered']:.0f}%" for dom in ("medical", "finance"))
    lora = " / ".join(f"{by[(dom, 'lora')]['general_change_pct']:+.1f}%" for dom in ("medical", "finance"))
    full = " / ".join(f"{by[(dom, 'full')]['general_change_pct']:+.1f}%" for dom in ("medical", "finance"))
    ok = all(by[(dom, "lora")]["gain_recovered"] >= 0.9 and abs(by[(dom, "lora")]["general_change_pct"]) <= 2
             for dom in ("medical", "finance"))
    return f"{gains}; {lora} vs {full} (targets 90% and 2%: {_met(ok)})"


def _moefy_row(d: dict) -> str:
    pts = {(p["method"], p["k"]): p for p in d["points"]}
    dense = pts[("dense", None)]["ppl"]
    parts = [f"dense {dense:.1f}"]
    for method, k in (("dynamic", 8.0), ("teal", 8.0), ("dynamic", 5.0), ("healed", 5.0)):
        if (method, k) in pts:
            parts.append(f"{method} at {100 * k / 16:.0f}% {pts[(method, k)]['ppl']:.1f}")
    free, healed = pts.get(("dynamic", 8.0)), pts.get(("healed", 5.0))
    ok = (free is not None and free["ppl"] <= 1.10 * dense) and (healed is not None and healed["ppl"] <= 1.15 * dense)
    return "; ".join(parts) + f" (targets: +10% at 50% training-free, +15% at ≤35% healed: {_met(ok)})"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


MOEFY = "moefy"   # the run docs/results/moefy.md reports (202,240 held-out tokens)

def _demo_row(d: dict) -> str:
    rows = d["quickstart"]["rows"]
    dense, moe = rows["dense"], rows["moe"]
    return (f"{_minutes(d['wall_s'])} (set-up {d['setup_s']:.0f} s, quickstart {d['demo_s']:.0f} s; target 10 min); "
            f"ppl {dense['ppl']:.2f} / {moe['ppl']:.2f}; {dense['decode_tok_s']:.1f} / {moe['decode_tok_s']:.1f} tok/s")


def _moefy_speed_row(d: dict) -> str:
    r = d["ratios"]["fp32"]
    return (f"{r['prefill_tok_s']:.2f}x; {r['decode_b1_tok_s']:.2f}x; {r['decode_b16_tok_s']:.2f}x "
            f"(targets 1.3x prefill: {_met(r['prefill_tok_s'] >= 1.3)}, "
            f"1.4x batch-1 decode: {_met(r['decode_b1_tok_s'] >= 1.4)})")


def _level(system: dict, clients: int) -> dict | None:
    return next((r for r in system.get("levels", []) if r["clients"] == clients), None)


def _serve_real_row(d: dict) -> str:
    by = {s["system"]: s for s in d["systems"]}
    b16 = next(h["output_tok_s"] for h in d["transformers_generate"] if h["batch"] == 16)

    def at16(name: str) -> str:
        r = _level(by.get(name, {}), 16)
        return "-" if r is None else f"{r['output_tok_s']:,.0f}"

    ours = [s for s in d["systems"] if s["system"].startswith("lightseek") and _level(s, 16)]
    best = max(ours, key=lambda s: _level(s, 16)["output_tok_s"])
    x = _level(best, 16)["output_tok_s"] / b16
    names = ('lightseek fp32', 'lightseek MoE', 'lightseek int8', 'lightseek int4 g64', 'lightseek w8a8')
    return (f"{' / '.join(at16(n) for n in names)}"
            f"; {at16('llama.cpp Q4_1')}; {best['system']} {x:.2f}x transformers' {b16:,.0f} (target 2x: "
            f"{'met' if x >= 2 else 'not met'})")


# after W8A8, the decode step for the engine's batch of rows and prompt chunks riding along
SERVE_REAL_W8A8 = "serve_real_systems-lightseek-w8a8-lightseek-fp32"
# after the one-row decode step (one client), then grouped attention for the rows (16 and more)
SERVE_REAL_ONE_ROW = "serve_real_systems-lightseek-w8a8-lightseek-int4-g64-lightseek-fp32"
SERVE_REAL_LATEST = "serve_real_systems-lightseek-w8a8"


def _serve_w8a8_row(d: dict) -> str:
    b16 = next(h["output_tok_s"] for h in d["transformers_generate"] if h["batch"] == 16)
    parts = []
    for s in d["systems"]:
        at = {r["clients"]: r["output_tok_s"] for r in s["levels"]}
        x2, x5 = at[16] / b16, at[16] / at[1]
        parts.append(f"{s['system'].removeprefix('lightseek ')}: {at[1]:.0f} / {at[16]:.0f} / {at[64]:.0f}; "
                     f"{x2:.2f}x ({'met' if x2 >= 2 else 'not met'}), {x5:.2f}x ({'met' if x5 >= 5 else 'not met'})")
    return "; ".join(parts) + f" (transformers batch 16: {b16:.0f})"


def _w8a8_quality_row(d: dict) -> str:
    by = _dense_by_config(d)
    r, f = by["int8 w8a8"], by["fp32"]
    return (f"{100 * r['ppl_change']:+.2f}%, {r['kl_mean']:.4f}; {r['size_bytes'] / 2**20:.0f} MiB "
            f"({f['size_bytes'] / r['size_bytes']:.1f}x smaller); {r['decode_b1'] / f['decode_b1']:.2f}x")


QUANT_README = ("int4 gptq g64", "int4 gptq g128", "mixed gptq g64", "budget 4.9 gptq g64")


def _dense_by_config(d: dict) -> dict[str, dict]:
    return {r["config"]: r for r in d["rows"] if r["form"] == "dense"}


def _quant_real_row(d: dict) -> str:
    by = _dense_by_config(d)
    out = " / ".join(f"{100 * by[n]['ppl_change']:+.2f}% ({by[n]['bits_per_weight']:.2f})" if n in by else "-"
                     for n in QUANT_README)
    if "int4 gptq g64, no refit" in by:
        out += f"; int4 gptq g64 without refitting its grids {100 * by['int4 gptq g64, no refit']['ppl_change']:+.2f}%"
    return out


def _as_rounded_and_tuned(d: dict, config: str) -> tuple[dict, dict, str]:
    """The dense rows of ``config`` and of ``config`` tuned end to end, and their perplexity
    change and mean KL: "as rounded / tuned"."""
    by = _dense_by_config(d)
    plain, tuned = by[config], by[f"{config}, tuned"]
    return plain, tuned, " / ".join(f"{100 * r['ppl_change']:+.2f}%, {r['kl_mean']:.4f}" for r in (plain, tuned))


def _quant_tuned_row(d: dict) -> str:
    plain, tuned, figures = _as_rounded_and_tuned(d, "int4 gptq g64")
    return (f"{figures}; quantizing took {tuned['quant_s'] / 60:.0f} min with the tuning, "
            f"{plain['quant_s'] / 60:.0f} min without")


def _budget_tuned_row(d: dict) -> str:
    _, tuned, figures = _as_rounded_and_tuned(d, "budget 4.9 gptq g64")
    return f"{tuned['bits_per_weight']:.2f} bits per weight: {figures}"


def _quant_real_int8_row(d: dict) -> str:
    by = _dense_by_config(d)
    return " / ".join(f"{100 * by[n]['ppl_change']:+.2f}%, {by[n]['kl_mean']:.5f}" for n in ("int8", "int8 gptq")
                      ) + f"; bf16 autocast alone {by['bf16 autocast']['kl_mean']:.5f}"


README_ROWS: list[Row] = [
    Row("`make demo` from a fresh clone, set-up included: wall time; held-out stdlib perplexity dense / MoE at 12 of "
        "16 experts; batch-1 decode dense / MoE", "demo", _demo_row),
    Row("`lightseek quickstart --from-scratch` wall time (corpus, tokenizer, 600 training steps, evaluation, "
        "plots, sample)", "quickstart",
        lambda d: _minutes(d["wall_s"])),
    Row("quickstart validation perplexity / experts per token / dead experts; MaxVio on training text / on "
        "held-out documents (target 0.10)", "quickstart",
        lambda d: f"{d['val_ppl']:.2f} / {d['avg_k']:.2f} / {d['dead_experts']}; "
                  f"{d['max_vio_train']:.3f} / {d['max_vio']:.3f}"),
    Row("training tokens/s, tiny dynamic MoE vs dense with equal active parameters", "train_throughput", _throughput_row),
    Row("MoE layer forward+backward, dynamic routing (k 2.5), dim 512 with 16 / 64 experts: speed vs transformers "
        "`DeepseekV3MoE` eager; vs its best implementation; vs a dense FFN of equal active parameters",
        "moe_layer", _moe_layer_row),
    Row("SmolLM2-135M-Instruct as a 16-expert dynamic MoE: held-out perplexity of dense; converted at 50% of the "
        "FFN; TEAL-style thresholding at 50%; converted at 31%; healed at 31% ([moefy.md](docs/results/moefy.md))",
        MOEFY, _moefy_row),
    Row("SmolLM2 MoE at 31% of the FFN against dense, fp32, lightseek's generation path: prefill; batch-1 decode; "
        "16-row decode ([moefy.md](docs/results/moefy.md))", "moefy_speed", _moefy_speed_row),
    Row("routing study, 7 variants x 2 corpora at an equal token budget: validation loss of dynamic routing "
        "(k~2.5) against topk k=2 and k=3; its MaxVio on training text / held-out text (target 0.10)",
        "routing_study", _routing_row),
    Row("expert specialisation by corpus (6 kinds of text): score, 0 = shared alike, 1 = own experts",
        "specialisation", lambda d: _specialisation_row(d)),
    Row("shared base model (recipes/base.yaml): training steps / tokens of English, Chinese, medical, finance and "
        "legal text; validation perplexity", "base_model",
        lambda d: f"{d['steps']:,} / {d['tokens'] / 1e6:.1f}M; {d['val_ppl']:.1f}"),
    Row("LoRA (0.91% of the parameters) against full fine-tuning of the shared base, medical / finance: share of "
        "full fine-tuning's domain-perplexity gain; general-text perplexity change, LoRA vs full", "lora_vs_full",
        _adapters_row),
    Row("LoRA rank 8 (1.82% of the parameters) against full fine-tuning of SmolLM2-135M-Instruct, medical, each "
        "at the best of three peak learning rates ([adapters.md](docs/results/adapters.md)): share of full "
        "fine-tuning's domain-perplexity gain; general-text perplexity change, LoRA vs full", LR_SWEEP[-1],
        lambda d: _lr_sweep_row()),
    Row("quantization of the base: int8 / int4 gptq g64 / mixed perplexity change; int4 file size", "quant",
        _quant_quality),
    Row("quantized decode at batch 1 vs fp32, 108M-parameter preset (random weights): int8 / int4", "quant",
        _quant_speed),
    Row("domain classifier macro-F1: held-out passages / differently written questions (English; Chinese)",
        "domains",
        lambda d: f"{_macro_f1(d, 'heldout'):.3f} / {_macro_f1(d, 'questions'):.3f} "
                  f"({_by_language(d, 'threshold')}; at argmax {_by_language(d, 'argmax')})"),
    Row("cleaning pipeline throughput, general recipe, one core", "pipeline",
        lambda d: f"{d['overall']['mb_per_s']:.2f} MB/s"),
    Row("serving, 16 / 64 concurrent streaming clients: output tok/s; vs one at a time; vs transformers `generate` at "
        "the same batch; the 64-client level after 60 s with disconnects", "serve_load", _serve_load_row),
    Row("serving ceiling at 16 clients: the forward pass twice transformers `generate` needs, against the model's "
        "decode forward; served tok/s with a free forward", "serve_ceiling", _serve_ceiling_row),
    Row("16-row decode forward, one thread: the model / the same forward as one fixed-shape function under "
        "`torch.compile` with frozen weights", "decode_floor",
        lambda d: f"{d['ms']['model']:.2f} ms / {d['ms']['static frozen']:.2f} ms"),
    Row("SmolLM2-135M-Instruct (imported, fp32 / int8 / int4 g64 / W8A8) batch-1 decode tok/s vs transformers "
        "`generate` fp32 and llama.cpp Q4_1", "real_model", _real_model_speed),
    Row("SmolLM2-135M-Instruct fp32 with every projection in slices (`kernels/linear.py`): generate at batch 1 / "
        "16 rows, tok/s, against transformers `generate` in the same run (target 3x at batch 1)", "sliced_linear",
        _sliced_linear_row),
    Row("SmolLM2-135M-Instruct multiple-choice accuracy, medquad / fiqa / pubmedqa (200 items each; "
        "chance 0.25 / 0.25 / 0.33)", "real_model_tasks", _real_model_tasks),
    Row("SmolLM2-135M-Instruct served, 16 streaming clients: output tok/s of lightseek fp32 / MoE / int8 / int4 g64 / "
        "W8A8 and llama.cpp's server (Q4_1); the best lightseek server against transformers `generate` at batch 16",
        "serve_real", _serve_real_row),
    Row("SmolLM2-135M-Instruct served with 8-bit weights and inputs (W8A8), the latest engine: output tok/s at 1 / 16 / "
        "64 clients; 16 clients against transformers `generate` at batch 16 in the same run (target 2x) and against "
        "one client (target 5x)", SERVE_REAL_LATEST, _serve_w8a8_row),
    Row("SmolLM2-135M-Instruct distilled into a student cut to 49% of its parameters (1.2M tokens, 45 min): "
        "multiple-choice retention; held-out perplexity, teacher / distilled / same student on the data alone",
        "distill_real", lambda d: (f"{d['models']['distilled']['retention']['tasks']['mean']:.2f}; "
                                   + " / ".join(f"{d['models'][k]['ppl']['ppl']:.1f}"
                                                for k in ("teacher", "distilled", "data only")))),
    Row("DataDistiller on SmolLM2-135M-Instruct, 500 real questions (experts: LoRA adapters; the base judges and "
        "scores): answers kept; held-out MedQuAD perplexity with an adapter on none / the original answers / the "
        "distilled answers to the same questions", "distiller_real",
        lambda d: f"{d['distiller']['kept']} of {d['distiller']['inputs']}; " + _useful_ppl(d)),
    Row("SmolLM2-135M-Instruct int8 per channel (dense): perplexity change, mean KL of round-to-nearest / GPTQ "
        "(target +0.5%, 0.002)", "quant_real_forms-dense", _quant_real_int8_row),
    Row("SmolLM2-135M-Instruct quantized (dense): perplexity change (bits per weight) of int4 gptq g64 / "
        "int4 gptq g128 / mixed by role / budget policy at 4.9 bits", "quant_real_int4-refit", _quant_real_row),
    Row("SmolLM2-135M-Instruct int8 with 8-bit inputs (W8A8, smoothed, dense): perplexity change, mean KL; file size; "
        "batch-1 decode vs fp32", "quant_real_forms-dense_configs-int8-w8a8", _w8a8_quality_row),
    Row("SmolLM2-135M-Instruct int4 gptq g64 (dense), its scales and offsets as rounded / tuned end to end "
        "(`--tune-steps`): perplexity change, mean KL (target +3%); tuning time", "quant_real_tuned", _quant_tuned_row),
    Row("SmolLM2-135M-Instruct mixed by sensitivity within 4.9 bits per weight (budget policy, GPTQ g64, dense), "
        "its grids as rounded / tuned end to end: perplexity change, mean KL", "quant_real_budget-tuned",
        _budget_tuned_row),
    Row("SmolLM2-135M-Instruct's MoE form (k = 5, healed) against the dense model, batch-1 decode tok/s, int4 gptq "
        "g64 / fp32 (target: the MoE form faster)", "quant_real_b1-forms-healed", lambda d: _b1_forms_row(d)),
]


def _b1_forms(d: dict, config: str) -> tuple[float, float]:
    """Batch-1 decode tok/s of the MoE form and of the dense model, ``config``, in one speed-only run."""
    forms = {r["form"]: r["decode_b1"] for r in d["rows"] if r["config"] == config}
    return forms["moe"], forms["dense"]


def _b1_forms_row(d: dict) -> str:
    parts = []
    for config in ("int4 gptq g64", "fp32"):
        moe, dense = _b1_forms(d, config)
        parts.append(f"{moe:.1f} vs {dense:.1f} ({moe / dense:.2f}x: {'met' if moe > dense else 'not met'})")
    return " / ".join(parts)


def readme_results() -> str:
    rows = []
    for row in README_ROWS:
        d = result(row.source)
        rows.append([row.what, row.figure(d), f"`{d['command']}` ([{row.source}.json](bench/results/{row.source}.json))"])
    return table(["what", "figure", "command (result file)"], rows)


# --- tables of docs/results ---------------------------------------------------------------------
def real_model_systems() -> str:
    d = result("real_model")
    ref = rows_by(d, "rows")["transformers fp32 (generate)"]["decode_b1_tok_s"]
    llama_version = d.get("versions", {}).get("llama-cpp-python")

    def name(r):
        return f"{r['system']} (llama-cpp-python {llama_version})" if r["system"].startswith("llama.cpp") else r["system"]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    def row(r):
        if "skipped" in r:
            return [name(r), f"not measured: {r['skipped']}", "", "", "", "", ""]
        return [name(r), num(r["load_s"], ".1f"), num(r["prefill_tok_s"], ".0f"), num(r["decode_b1_tok_s"], ".1f"),
                f"{r['decode_b1_tok_s'] / ref:.2f}x", num(r["decode_b16_tok_s"], ".1f"), num(r["peak_mib"], ".0f")]

    return table(["system", "load s", "prefill tok/s", "decode b1 tok/s", "vs transformers", "decode 16 rows tok/s",
                  "peak MiB"], [row(r) for r in d["rows"]], "lrrrrrr")


def sliced_linear_products() -> str:
    d = result("sliced_linear")
    rows = [[f"{r['shape']} ({r['out']} x {r['in']})", str(r["rows"]), f"{r['linear_ms'] * 1e3:.0f}",
             f"{r['slices_2_ms'] * 1e3:.0f}", f"{r['slices_4_ms'] * 1e3:.0f}",
             f"{r['linear_ms'] / r['slices_4_ms']:.2f}x"] for r in d["products"]]
    return table(["product (out x in)", "rows", "F.linear µs", "2 slices µs", "4 slices µs (shipped)",
                  "F.linear / shipped"], rows, "lrrrrr")


def sliced_linear_decode() -> str:
    d = result("sliced_linear")["decode"]
    hf = d["transformers"]
    what = {"plain": "every product through `F.linear`", "head": "the head in 8 slices (the release before)",
            "all": "every projection in slices, the head in 8 (shipped)"}
    rows = [[what[k], f"{d[k]['generate_b1_tok_s']:.1f}", f"{d[k]['generate_b1_tok_s'] / hf['generate_b1_tok_s']:.2f}x",
             f"{d[k]['decode_b16_tok_s']:.1f}", f"{d[k]['decode_b16_tok_s'] / hf['generate_b16_tok_s']:.2f}x"]
            for k in what]
    rows.append(["transformers `generate`, fp32", f"{hf['generate_b1_tok_s']:.1f}", "1.00x",
                 f"{hf['generate_b16_tok_s']:.1f}", "1.00x"])
    return (table(["lightseek fp32, products", "batch 1 tok/s", "vs transformers", "16 rows tok/s",
                   "vs transformers"], rows, "lrrrr")
            + f"\nThe three lightseek settings give the same greedy tokens: "
              f"{'yes' if d['same_greedy_tokens'] else '**no**'}.\n")


def real_model_tasks() -> str:
    d = result("real_model_tasks")
    return table(["task", "items", "acc", "acc_norm", "chance"],
                 [[t, str(v["items"]), f"{v['acc']:.3f} ± {v['acc_ci95']:.3f}",
                   f"{v['acc_norm']:.3f} ± {v['acc_norm_ci95']:.3f}", f"{v['chance']:.3f}"]
                  for t, v in d["tasks"].items()], "lrrrr")


def serve_load() -> str:
    d = result("serve_load")
    one = next(r for r in d["levels"] if r["clients"] == 1)["output_tok_s"]
    same = {h["batch"]: h["output_tok_s"] for h in d["transformers_generate"]}
    rows = []
    for r in d["levels"]:
        n = r["clients"]
        rows.append([str(n), f"{r['output_tok_s']:,.0f}", f"{r['output_tok_s'] / one:.2f}x",
                     f"{same[n]:,.0f}" if n in same else "-",
                     f"{r['output_tok_s'] / same[n]:.2f}x" if n in same else "-",
                     f"{r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f}", f"{r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f}",
                     f"{r['requests']:,}", f"{r['disconnects']:,}", str(r["errors"]), str(r["leaked_slots"])])
    return table(["clients", "output tok/s", "vs one at a time", "transformers `generate`, same batch, tok/s",
                  "vs transformers", "TTFT p50 / p95 ms", "ITL p50 / p95 ms", "requests", "disconnects", "errors",
                  "slots held after"], rows, "rrrrrllrrrr")


def serve_targets() -> str:
    d = result("serve_load")
    by = {r["clients"]: r for r in d["levels"]}
    same = {h["batch"]: h["output_tok_s"] for h in d["transformers_generate"]}
    x5 = by[16]["output_tok_s"] / by[1]["output_tok_s"]
    x2 = by[16]["output_tok_s"] / same[16]
    last = by[max(by)]
    return table(["target", "result (`bench/results/serve_load.json`)", "met?"], [
        ["16 clients ≥ 5x one-at-a-time throughput", f"{x5:.2f}x (`levels[clients=16].output_tok_s` / "
         f"`levels[clients=1].output_tok_s`)", "yes" if x5 >= 5 else "**no**"],
        ["16 clients ≥ 2x transformers `generate` at batch 16", f"{x2:.2f}x (`levels[clients=16].output_tok_s` / "
         f"`transformers_generate[batch=16].output_tok_s`)", "yes" if x2 >= 2 else "**no**"],
        [f"zero errors and no leaked slots after {max(by)} clients for {d['args']['long_seconds']:.0f} s, with "
         f"disconnects", f"{last['errors']} errors, {last['leaked_slots']} slots held, {last['disconnects']:,} "
         f"disconnects (`levels[clients={max(by)}]`)",
         "yes" if last["errors"] == 0 and last["leaked_slots"] == 0 and last["disconnects"] > 0 else "**no**"],
    ])


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


SERVE_REAL_SLICED = "serve_real_systems-lightseek-fp32-lightseek-int4-g64"  # after products in slices


def serve_real(name: str = "serve_real") -> str:
    d = result(name)
    same = {h["batch"]: h["output_tok_s"] for h in d["transformers_generate"]}
    rows = []
    for s in d["systems"]:
        if "skipped" in s:
            rows.append([s["system"], f"not measured: {s['skipped']}"] + [""] * 9)
            continue
        one = s["levels"][0]["output_tok_s"]
        for r in s["levels"]:
            rows.append([s["system"], str(r["clients"]), f"{r['output_tok_s']:,.0f}", f"{r['output_tok_s'] / one:.2f}x",
                         *(f"{r['output_tok_s'] / same[b]:.2f}x" if b in same else "-" for b in (1, 16)),
                         f"{r['ttft_p50_ms']:,.0f} / {r['ttft_p95_ms']:,.0f}",
                         f"{r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f}", f"{r['requests']:,}",
                         f"{r['disconnects']:,}", str(r["errors"]), str(r.get("leaked_slots", "-"))])
    rows += [[f"transformers `generate` fp32, batch {h['batch']} (no HTTP)", str(h["batch"]),
              f"{h['output_tok_s']:,.0f}"] + [""] * 9 for h in d["transformers_generate"]]
    return table(["system", "clients", "output tok/s", "vs 1 client", "vs transformers b1", "vs transformers b16",
                  "TTFT p50 / p95 ms", "ITL p50 / p95 ms", "requests", "disconnects", "errors", "slots held after"],
                 rows, "lrrrrrllrrrr")


def serve_real_targets(name: str = "serve_real") -> str:
    d = result(name)
    same = {h["batch"]: h["output_tok_s"] for h in d["transformers_generate"]}
    rows = []
    for s in d["systems"]:
        if "skipped" in s or not s["system"].startswith("lightseek"):
            continue
        by = {r["clients"]: r for r in s["levels"]}
        last = by[max(by)]
        x2, x5 = by[16]["output_tok_s"] / same[16], by[16]["output_tok_s"] / by[1]["output_tok_s"]
        rows.append([s["system"], f"{x2:.2f}x ({_yes(x2 >= 2)})", f"{x5:.2f}x ({_yes(x5 >= 5)})",
                     f"{last['errors']} errors, {last.get('leaked_slots', '-')} slots held, {last['disconnects']} "
                     f"disconnects ({_yes(last['errors'] == 0 and last.get('leaked_slots') == 0)})"])
    return table(["lightseek server", "16 clients vs transformers `generate` batch 16 (target 2x)",
                  "16 clients vs 1 client (target 5x)", f"{max(d['args']['levels'])} clients: zero errors, no leaks"],
                 rows, "lrrl")


# per form, the result files its rows come from, newest first (dense: int8 with 8-bit inputs, W8A8,
# on this project's current machine; the budget policy at 4.9
# bits with and without end-to-end tuning of its grids, int4 GPTQ g64 with and without it, the
# 4-bit GPTQ run with refit grids, the int8 run of that form alone, then the earlier run of both
# forms; MoE: int4 GPTQ g64 with and without tuning, its 4-bit GPTQ rows with refit grids, then
# its full earlier run; not every MoE file used the same conversion, so a row compares with its
# own file's fp32); each configuration comes from the first file that has it
QUANT_REAL = {"dense": ("quant_real_forms-dense_configs-int8-w8a8", "quant_real_budget-tuned", "quant_real_tuned",
                        "quant_real_int4-refit",
                        "quant_real_forms-dense", "quant_real"),
              "moe": ("quant_real_moe-tuned", "quant_real_moe-refit", "quant_real_forms-moe")}
# decode speeds alone of both forms' int4 GPTQ g64 checkpoints in one run (--speed-only): the MoE
# form the README converts (k = 8, its grids tuned), and the healed k = 5 form (--moe-ckpt)
QUANT_B1_FORMS = {"quant_real_b1-forms": "k = 8", "quant_real_b1-forms-healed": "k = 5, healed"}


def _quant_real_rows() -> list[dict]:
    """bench/quant_real.py's rows of every form, each configuration from the newest file that has
    it, with the name of that file ("file") and that file's fp32 row ("fp32", for the ratios)."""
    rows = []
    for form, names in QUANT_REAL.items():
        seen = set()
        for name in names:
            mine = [r for r in result(name)["rows"] if r["form"] == form]
            fp32 = next(r for r in mine if r["config"] == "fp32")
            rows += [{**r, "file": name, "fp32": fp32} for r in mine if r["config"] not in seen]
            seen |= {r["config"] for r in mine}
    return rows


def quant_real() -> str:
    cells = []
    for r in _quant_real_rows():
        f = r["fp32"]
        same = f"{100 * r['same_experts']:.1f}%" if "same_experts" in r else "–"
        cells.append([r["form"], r["config"], f"{r['size_bytes'] / 2**20:.1f}",
                      f"{f['size_bytes'] / r['size_bytes']:.2f}x",
                      f"{r['bits_per_weight']:.2f}", f"{r['ppl']:.3f}", f"{100 * r['ppl_change']:+.2f}%",
                      f"{r['kl_mean']:.5f}", f"{r['kl_p99']:.4f}", same,
                      *([f"{r['decode_b1']:.1f}", f"{r['decode_b1'] / f['decode_b1']:.2f}x", f"{r['decode_b16']:.1f}",
                         f"{r['decode_b16'] / f['decode_b16']:.2f}x"] if "decode_b1" in r else ["–"] * 4),
                      f"`{r['file']}`"])
    return table(["form", "config", "file MiB", "x smaller", "bits/weight", "perplexity", "change", "mean KL",
                  "p99 KL", "same experts", "b1 tok/s", "b1 vs fp32", "16 rows tok/s", "16 rows vs fp32", "result"],
                 cells, "llrrrrrrrrrrrrl")


def _int8_figures(r: dict) -> str:
    return f"{100 * r['ppl_change']:+.2f}%, {r['kl_mean']:.5f}"


def _int8_met(r: dict) -> bool:
    return r["ppl_change"] <= 0.005 and r["kl_mean"] <= 0.002


def _ppl_change(r: dict) -> str:
    return f"{100 * r['ppl_change']:+.2f}%"


# (configuration, target, measured, met?) of bench/quant_real.py's rows, per form
QUANT_REAL_TARGETS = [
    ("int8", "int8: perplexity within +0.5%, mean KL ≤ 0.002", _int8_figures, _int8_met),
    ("int8 gptq", "the same with GPTQ", _int8_figures, _int8_met),
    ("int4 gptq g64", "int4 g64 GPTQ: perplexity within +3%", _ppl_change, lambda r: r["ppl_change"] <= 0.03),
    ("int4 gptq g64, tuned", "int4 g64 GPTQ, scales and offsets then tuned end to end (quant.tune_steps): within +3%",
     _ppl_change, lambda r: r["ppl_change"] <= 0.03),
    ("int4 gptq g64, 8-bit embedding", "the same with the embedding and head at 8 bits (as the shipped GGUF)",
     _ppl_change, lambda r: r["ppl_change"] <= 0.03),
    ("mixed gptq g64", "mixed by role: ≤ 4.9 bits per weight", lambda r: f"{r['bits_per_weight']:.2f}",
     lambda r: r["bits_per_weight"] <= 4.9),
    ("budget 4.9 gptq g64", "mixed by sensitivity (budget policy): ≤ 4.9 bits per weight",
     lambda r: f"{r['bits_per_weight']:.2f} ({100 * r['ppl_change']:+.2f}%)", lambda r: r["bits_per_weight"] <= 4.9),
    ("budget 4.9 gptq g64, tuned", "the same, its grids then tuned end to end: ≤ 4.9 bits per weight",
     lambda r: f"{r['bits_per_weight']:.2f} ({100 * r['ppl_change']:+.2f}%)", lambda r: r["bits_per_weight"] <= 4.9),
]


def quant_real_targets() -> str:
    all_rows = _quant_real_rows()
    rows = []
    for form in dict.fromkeys(r["form"] for r in all_rows):
        by = {r["config"]: r for r in all_rows if r["form"] == form}
        for config, target, measured, met in QUANT_REAL_TARGETS:
            if config in by:  # a run cut short lacks some
                rows.append([form, target, measured(by[config]), _yes(met(by[config]))])
    # batch-1 speed of the two forms, each pair from one speed-only run of both
    for name, form in QUANT_B1_FORMS.items():
        for config in ("int4 gptq g64", "fp32"):
            moe, dense = _b1_forms(result(name), config)
            x = moe / dense
            rows.append([f"moe ({form}) vs dense", f"the MoE form faster than the dense one at batch 1 ({config}; "
                         f"one run, `{name}`)", f"{moe:.1f} / {dense:.1f} tok/s = {x:.2f}x", _yes(x > 1)])
    return table(["form", "target", "measured", "met?"], rows)


def quant_ramp() -> str:
    """bench/quant_ramp.py: the MoE form's fp32 perplexity and its int8 copy's KL per ramp width."""
    d = result("quant_ramp")
    hard = d["hard_cut_fp32_ppl"]
    rows = [[f"{r['ramp']:g}" + (" (hard cut)" if r["ramp"] == 0 else ""), f"{r['fp32_ppl']:.2f}",
             f"{100 * (r['fp32_ppl'] / hard - 1):+.1f}%", f"{r['int8_kl_mean']:.4f}", f"{r['int8_kl_p99']:.3f}",
             f"{100 * r['int8_same_experts']:.1f}%", f"{100 * r['int8_ppl_change']:+.2f}%"] for r in d["rows"]]
    return table(["ramp", "fp32 perplexity", "vs hard cut", "int8 mean KL", "int8 p99 KL", "same experts as fp32",
                  "int8 perplexity change"], rows, "lrrrrrr")


def grammar_libs() -> str:
    d = result("grammar_libs")
    rows = [[name, r["version"], f"{r['setup_s']:.2f} s", f"{r['compile_ms_mean']:.1f} ms",
             f"{r['mask_us_p50']:.0f} / {r['mask_us_p95']:.0f} / {r['mask_us_max']:.0f} µs",
             "yes" if r["correct"] else "**no**"]
            for name, r in d["libraries"].items() if "skipped" not in r]
    return table(["library", "version", "vocabulary set-up", "schema compile (mean of 4)", "mask p50 / p95 / max",
                  "correct"], rows, "llrrrl")


def structured() -> str:
    d = result("structured")
    rows = [[name, f"{r['valid']} / {r['requests']}", f"{r['parsed']}", f"{r['finished']}",
             f"{len(r['closed_by_budget'])}" if name == "constrained" else "", f"{r['tokens']:,}",
             f"{r['wall_s']:.0f} s", f"{r['output_tok_s']:.1f}"] for name, r in d["results"].items()]
    ratio = d["constrained_over_free_tok_s"]
    return (table(["requests", "valid JSON for the schema", "parse", "ended by the model", "closed to fit max_tokens",
                   "output tokens", "wall", "output tok/s"], rows, "lrrrrrrr")
            + f"\nConstrained throughput {100 * ratio:.1f}% of unconstrained (target: the masks cost ≤ 20%, "
              f"{'met' if ratio >= 0.8 else '**not met**'}); {d['slots']} requests decode together.\n")


def eval_harness() -> str:
    """lm-eval's local-completions through the server beside lightseek's evaluator, per task."""
    d = result("eval_harness")
    rows = [[r["task"], f"{r['items']}", f"{r['choices']}", f"{r['max_abs_ll_diff']:.1e}",
             f"{r['same_argmax_items']} / {r['items']}",
             f"{r['lightseek']['acc']:.3f} / {r['harness']['acc']:.3f}",
             f"{r['lightseek']['acc_norm']:.3f} / {r['harness']['acc_norm']:.3f}",
             f"{r['answers_identical']} / {r['items']}"] for r in d["rows"]]
    g = d["generation"]
    return (table(["task", "items", "choices", "largest log-likelihood difference", "same pick",
                   "acc: lightseek / lm-eval", "acc_norm: lightseek / lm-eval", "greedy answers identical"], rows,
                  "lrrrrllr")
            + f"\nWall time, scoring: lightseek's evaluator in process {d['lightseek_wall_s']:.0f} s; lm-eval "
              f"{d['lm_eval']} through the server, {d['args']['batch']} prompts per request, "
              f"{d['harness_wall_s']:.0f} s. Generation (up to {g['max_tokens']} tokens each): lightseek's engine, "
              f"one prompt at a time, {g['lightseek_alone_wall_s']:.0f} s; lm-eval through the server "
              f"{g['harness_wall_s']:.0f} s.\n"
            + f"\nThe same scoring at git {(b := result('eval_harness_git-856b058'))['git_revision'][:7]}, before the "
              f"engine scored a prompt in its prefill (a second forward pass over each prompt then; "
              f"`eval_harness_git-856b058.json`, the same hour): lm-eval through the server {b['harness_wall_s']:.0f} s, "
              f"log-likelihoods within {max(r['max_abs_ll_diff'] for r in b['rows']):.1e} of the evaluator's.\n")


def platform_overhead() -> str:
    d = result("platform_overhead")
    m = d["median"]
    rows = [[("with" if mode == "on" else "without") + " the platform", f"{m[mode]['p50_ms']:.2f}",
             f"{m[mode]['p95_ms']:.2f}", f"{m[mode]['tok_s']:.0f}"] for mode in ("off", "on")]
    s = d["settings"]
    p95, change = d["added_p95_ms"], d["throughput_change"]
    return (table(["server", "p50 (ms), 1 client", "p95 (ms), 1 client", f"tok/s, {s['clients']} clients"], rows,
                  "lrrr")
            + f"\nAdded at p95: {p95:+.2f} ms (target ≤ 2 ms, {'met' if p95 <= 2 else '**not met**'}); throughput "
              f"{100 * change:+.1f}% (target ≥ −5%, {'met' if change >= -0.05 else '**not met**'}). Medians of "
              f"{s['rounds']} rounds, {s['requests']} requests of {s['max_tokens']} tokens each; ledger audit after "
              f"the run: {'clean' if not d['audit_problems'] else d['audit_problems']}.\n")


def label_load(name: str = "label_load") -> str:
    """LabelHub under load (bench/label_load.py): per backend, each route's latency, the target
    line and the consistency check."""
    d = result(name)
    s, target = d["settings"], d["target_p95_ms"]
    routes = (("**next + annotate**", None), ("next", "next"), ("annotate", "annotate"), ("skip", "skip"),
              ("review (reviewer)", "review"), ("stats (reviewer)", "stats"))
    rows, notes = [], []
    for backend, b in d["backends"].items():
        for label, key in routes:
            f = b["annotator"] if key is None else b["routes"].get(key)
            if f:
                rows.append([backend, label, f"{f['requests']:,}", f"{f['per_s']:.1f}", f"{f['p50_ms']:.1f}",
                             f"{f['p95_ms']:.1f}", f"{f['p99_ms']:.1f}", f"{f['max_ms']:.0f}", str(f["errors"])])
        bad = {k: v for k, v in b["consistency"]["problems"].items() if v}
        apart = b.get("annotator_apart_from_reviewer") or {}
        notes.append(f"{backend} ({b['server_version']}): p95 of next + annotate {b['annotator_p95_ms']:.1f} ms "
                     f"(target < {target:g} ms, {'met' if b['target_met'] else '**not met**'}; "
                     f"{apart.get('p95_ms', float('nan')):.1f} ms over the requests that overlapped none of the "
                     f"reviewer's); setup of {b['items']:,} items {b['setup']['total_s']:.0f} s; "
                     f"{b['consistency']['totals']['annotations']:,} annotations, consistency "
                     f"{'clean' if not bad else '**' + ', '.join(f'{k} {v}' for k, v in bad.items()) + '**'}.")
    for backend, why in d.get("skipped", {}).items():
        notes.append(f"{backend}: not measured ({why}).")
    return (table(["backend", "route", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"], rows,
                  "llrrrrrrr")
            + f"\n{s['annotators']} annotators (think time exponential, mean {s['think']:g} s) and a reviewer "
              f"(review queue and stats every {s['review_every']:g} s) on {s['items']:,} items, overlap "
              f"{s['overlap']}, least-confidence order; {s['duration']:g} s measured after {s['warmup']:g} s.\n\n"
            + "".join(f"- {n}\n" for n in notes))


def safety_linear_variants() -> str:
    """The linear stage's "harmful at all" head under other settings, on the same splits."""
    d = result("safety_linear_variants")
    rows = [[r["features"], f"{r['n_features']:,}", f"{r['C']:g}", r["weights"],
             f"{r['en']['recall_at_fpr_0.05']:.3f} / {r['zh']['recall_at_fpr_0.05']:.3f}",
             f"{r['en']['f1']:.3f} / {r['zh']['f1']:.3f}",
             f"{r['openai_moderation_f1']:.3f} ({r['openai_moderation_best_f1']:.3f})"] for r in d["rows"]]
    return (table(["n-grams", "features", "C", "class weights", "recall at 5% false positives (en / zh)",
                   "F1 at 0.5 (en / zh)", "OpenAI moderation set F1 at 0.5 (best threshold)"], rows, "lrrlrrr")
            + f"\nCommand: `{d['command']}` ({d['training_texts']:,} training, {d['validation_texts']:,} "
              f"validation texts).\n")


def safety_stages() -> str:
    """Each stage alone and the cascade, per language, at the policy's thresholds and at a 5% FPR."""
    d = result("safety_eval")
    rows = []
    for name, r in d["results"].items():
        for lang, x in r["by_language"].items():
            rows.append([name, lang, f"{x['harmful']:,} / {x['harmless']:,}", f"{x['precision']:.3f}",
                         f"{x['recall']:.3f}", f"{x['f1']:.3f}", f"{x['fpr']:.3f}", f"{x['recall_at_fpr_0.05']:.3f}",
                         f"{r['openai_moderation_f1']:.3f}" if lang == "en" and "openai_moderation_f1" in r else ""])
    o, lat = d["over_refusal"], d["latency"]
    return (table(["stage", "language", "harmful / harmless", "precision", "recall", "F1", "false positives",
                   "recall at 5% false positives", "OpenAI moderation set F1"], rows, "llrrrrrrr")
            + f"\nOver-refusal: {o['blocked']} of {o['texts']} harmless questions on sensitive topics blocked "
              f"({100 * o['rate']:.1f}%). Latency per text of about 256 tokens, one at a time: "
            + ", ".join(f"{k} p50 {v['p50_ms']:.1f} ms, p95 {v['p95_ms']:.1f} ms" for k, v in lat.items())
            + ".\n")


def safety_other() -> str:
    """Prompts written for this project (bench/data/safety_other_sources.jsonl), not from the shared sets."""
    d = result("safety_eval")
    rows = [[name, lang, f"{x['recall']:.2f}", f"{x['fpr']:.2f}", f"{x['recall_at_fpr_0.05']:.2f}"]
            for name, r in d["other_sources"].items() for lang, x in r["by_language"].items()]
    return table(["stage", "language", "recall (30 harmful)", "false positives (30 harmless, sensitive topics)",
                  "recall at 5% false positives"], rows, "llrrr")


def safety_sources() -> str:
    """Recall and false positives per source (how the stages generalise across ways of writing)."""
    d = result("safety_eval")
    names = [n for n in d["results"] if n in ("linear", "cascade (sample)", "model (sample)")]
    sources = sorted({s for n in names for s in d["results"][n]["by_source"]})
    rows = []
    for src in sources:
        row = [src]
        for n in names:
            x = d["results"][n]["by_source"].get(src)
            row.append("–" if x is None else (f"{x['recall']:.2f} / {x['fpr']:.2f}" if x["harmful"] and x["harmless"]
                                             else f"{x['recall']:.2f}" if x["harmful"] else f"– / {x['fpr']:.2f}"))
        rows.append(row)
    return table(["source", *(f"{n}: recall / FPR" for n in names)], rows, "l" + "r" * len(names))


def prefix_cache() -> str:
    d = result("prefix_cache")
    rows = [[name, f"{r['ttft_ms_p50']:.0f}", f"{r['ttft_ms_mean']:.0f}", f"{r['prefix_hit_tokens']:,}"]
            for name, r in d["rows"].items()]
    return (table(["prefix cache", "time to first token p50 (ms)", "mean (ms)", "prompt tokens reused"], rows,
                  "lrrr")
            + f"\n{d['settings']['questions']} requests of {d['mean_prompt_tokens']:.0f} prompt tokens on average, one "
              f"after another; {d['ttft_speedup']:.1f}x faster to the first token with the cache; greedy outputs "
              f"{'identical' if d['outputs_identical'] else '**different**'}.\n" + _prefix_burst(d))


def _prefix_burst(d: dict) -> str:
    """The same requests all at once (bench/prefix_cache.py's ``together``), where it was measured."""
    if "together" not in d:
        return ""
    rows = [[name, f"{r['ttft_ms_p50']:.0f}", f"{r['ttft_ms_max']:.0f}", f"{r['wall_s']:.1f}",
             f"{r['prefix_hit_tokens']:,}", "yes" if r["outputs_identical"] else "**no**"]
            for name, r in d["together"].items()]
    return "\nAll at once:\n\n" + table(["prefix cache", "time to first token p50 (ms)", "last first token (ms)",
                                          "wall (s)", "prompt tokens reused", "outputs as one at a time"], rows,
                                         "lrrrrl")


def serve_ceiling() -> str:
    d = result("serve_ceiling")
    hf = d["transformers_generate"]["output_tok_s"]
    rows = []
    for r in d["levels"]:
        label = f"real model ({d['real_forward_ms']:.2f} ms decode)" if r["forward_ms"] is None else f"{r['forward_ms']:g} ms"
        rows.append([label, f"{r['output_tok_s']:,.0f}", f"{r['output_tok_s'] / hf:.2f}x",
                     f"{r['engine_steps'] / r['wall_s']:,.0f}", f"{r['itl_p50_ms']:.1f}"])
    return table(["forward per call", f"served tok/s at {d['args']['clients']} clients", "vs transformers `generate`",
                  "engine steps/s", "ITL p50 ms"], rows, "lrrrr")


def decode_floor() -> str:
    d = result("decode_floor")
    what = {"model": "the model (`Transformer.forward` over a `KVCache`, all rows at one position, routing "
                     "statistics kept)",
            "static eager": "static function, eager: fused QKV, attention without copying the cache, every expert "
                            "and the shared one as three products per MoE layer, no routing statistics",
            "static compiled": "the same under `torch.compile` (inductor)",
            "static frozen": "the same with inductor's weight freezing",
            "head product alone": "the output head's product alone"}
    rows = [[what.get(k, k), f"{v:.2f}"] for k, v in d["ms"].items()]
    if d.get("needed_ms"):
        rows.append(["needed for twice transformers `generate` (`serve_ceiling.json` `needed_forward_ms`)",
                     f"{d['needed_ms']:.2f}"])
    return table([f"{d['args']['rows']}-row decode forward, {d['args']['threads']} thread(s)", "ms"], rows, "lr")


def routing_table(corpus: str) -> Callable[[], str]:
    def render() -> str:
        study_table = bench_module("routing_study").table  # the study prints the same table

        return study_table(result("routing_study")["corpora"][corpus]["rows"]) + "\n"

    return render


def routing_targets() -> str:
    corpora = result("routing_study")["corpora"]
    rows = {c: {r["variant"]: r for r in corpora[c]["rows"]} for c in corpora}
    moe = ("topk k=2", "topk k=3", "dynamic k~2.5", "topk k=2 + aux loss")
    biased = ("topk k=2", "topk k=3", "dynamic k~2.5")

    def cells(fn):
        return [fn(rows[c]) for c in corpora]

    def vs(a, b):
        return lambda r: f"{r[a]['val_loss']:.4f} vs {r[b]['val_loss']:.4f} ({r[a]['val_loss'] - r[b]['val_loss']:+.4f})"

    def span(key):
        return lambda r: " to ".join(f"{v:.3f}" for v in (min(r[v][key] for v in biased), max(r[v][key] for v in biased)))

    return table(["target (`routing_study.json`, `corpora.*.rows`)", *[corpora[c]["title"] for c in corpora]], [
        ["dynamic no worse than topk k=3 (`val_loss`)", *cells(vs("dynamic k~2.5", "topk k=3"))],
        ["dynamic better than topk k=2 (`val_loss`)", *cells(vs("dynamic k~2.5", "topk k=2"))],
        ["every MoE variant below dense with equal active FLOPs (`val_loss`)", *cells(lambda r: (
            f"{sum(r[v]['val_loss'] < r['dense (equal active)']['val_loss'] for v in moe)} of {len(moe)} below "
            f"{r['dense (equal active)']['val_loss']:.4f}"))],
        ["with bias balancing, MaxVio ≤ 0.10 on training text (`max_vio_train`, mean over layers)", *cells(span("max_vio_train"))],
        ["the same on held-out documents (`max_vio`)", *cells(span("max_vio"))],
        ["no dead experts with bias balancing (`dead_experts`)", *cells(lambda r: str(sum(r[v]["dead_experts"] for v in biased)))],
        ["without balancing (`dynamic, no balancing`): MaxVio training text / held-out, dead experts", *cells(lambda r: (
            f"{r['dynamic, no balancing']['max_vio_train']:.3f} / {r['dynamic, no balancing']['max_vio']:.3f}, "
            f"{r['dynamic, no balancing']['dead_experts']} dead"))],
        ["dynamic average k within ± 0.1 of 2.5 (`avg_k`)", *cells(lambda r: f"{r['dynamic k~2.5']['avg_k']:.2f}")],
    ])


def quickstart() -> str:
    d = result("quickstart")
    return table(["figure", "value"], [
        ["wall time (corpus, tokenizer, 600 steps, evaluations, plots, sample)", _minutes(d["wall_s"])],
        ["validation loss / perplexity (the first 40 batches of the validation split)",
         f"{d['val_loss']:.3f} / {d['val_ppl']:.2f}"],
        ["average experts per token (target 2.5)", f"{d['avg_k']:.2f}"],
        ["MaxVio on training text (mean over the MoE layers; target 0.10)", f"{d['max_vio_train']:.3f}"],
        ["MaxVio on the held-out documents", f"{d['max_vio']:.3f}"],
        ["dead experts", str(d["dead_experts"])],
        ["training throughput over the run (evaluation and checkpoint pauses included)", f"{d['tokens_per_s']:,.0f} tokens/s"],
    ])


def train_throughput() -> str:
    d = result("train_throughput")
    return table(["variant", "train tokens/s", "vs dense (equal active)", "experts/token while timed", "total params",
                  "active params", "active MFLOPs/token"],
                 [[r["variant"], f"{r['tokens_per_s']:,.0f}", f"{r['ratio_to_dense']:.2f}x", f"{r['avg_k']:.2f}",
                   f"{r['total_params']:,}", f"{r['active_params']:,}", f"{r['active_mflops_per_token']:.2f}"]
                  for r in d["rows"]], "lrrrrrr")


def pipeline() -> str:
    d = result("pipeline")
    o = d["overall"]
    rows = [[r["step"], f"{r['records_in']:,}", f"{r['mb_in']:.2f}", f"{r['records_removed']:,}", f"{r['seconds']:.2f}",
             f"{r['mb_per_s']:.2f}", f"{100 * r['seconds'] / o['wall_s']:.0f}%"] for r in d["steps"]]
    rows.append(["**overall**", f"{o['records_in']:,}", f"{o['mb_in']:.2f}", f"{o['records_in'] - o['records_kept']:,}",
                 f"{o['wall_s']:.2f}", f"**{o['mb_per_s']:.2f}**", "100%"])
    return table(["step", "records in", "MB in", "removed", "seconds", "MB/s", "share of time"], rows, "lrrrrrr")


def pipeline_removed() -> str:
    """What each step of the recipe removed, by reason."""
    d = result("pipeline")
    o = d["overall"]
    rows = [[r["step"], f"{r['records_removed']:,}",
             ", ".join(f"{why} {n:,}" for why, n in d["removed"].get(r["step"], {}).items()) or "–"]
            for r in d["steps"] if r["step"] in d["removed"]]  # the recipe's steps, not reading and writing
    rows.append(["**kept**", f"{o['records_kept']:,} of {o['records_in']:,}",
                 f"{o['mb_kept']:.2f} of {o['mb_in']:.2f} MB"])
    return table(["step", "removed", "by reason"], rows, "lrl")


def quant_results() -> str:
    quant = bench_module("quant")  # the benchmark prints the same block
    results_block, tables = quant.results_block, quant.tables

    d = result("quant")
    return results_block(tables(d["rows"], d["scale"], d["kernels"], d["args"]["scale_preset"]), d["targets"])


LANGUAGES = {"en": "English", "zh": "Chinese"}


def domains_results() -> str:
    domains_table = bench_module("domains").table  # the benchmark prints the same table

    d = result("domains")
    per = d["questions_by_language"]
    rows = [[name, str(per["threshold"][lang]["n"]),
             *(f"**{per[how][lang]['macro_f1']:.3f}** / {per[how][lang]['accuracy']:.3f}"
               for how in ("threshold", "argmax"))]
            for lang, name in LANGUAGES.items()]
    return (domains_table(d["results"]) + "\n\nSecond set by language:\n\n"
            + table(["language", "texts", "threshold 0.5: macro-F1 / accuracy", "argmax: macro-F1 / accuracy"],
                    rows, "lrrr"))


def domains_by_source() -> str:
    d = result("domains")
    return table(["second-set source", "domain", "texts", "accuracy (threshold applied)"],
                 [[src, dom, str(n), f"{acc:.3f}"] for src, (dom, n, acc) in d["questions_accuracy_by_source"].items()],
                 "llrr")


# the trained kinds, side by side on the same texts; the zero-shot run has a table of its own
# (domains_zero_shot: fewer texts a source, since it asks the model about each)
STYLE_RUNS = (("domains_styles", "TF-IDF n-grams"), ("domains_styles_model", "SmolLM2 features + TF-IDF"),
              ("domains_styles_model_no-tfidf", "SmolLM2 features alone"),
              ("domains_styles_model_layer-15_no-tfidf", "SmolLM2 block 15 features alone"))


STYLE_GROUPS = {"en": "English, styles with a same-language sibling",
                "zh": "Chinese, styles with a same-language sibling",
                "en (alone)": "English, the only source of its domain (contracts)",
                "zh (alone)": "Chinese, the only sources of their domain (statutes, patient dialogues)"}


def domains_styles() -> str:
    """Leave one source out (bench/domains_styles.py): pooled macro-F1 per language for each
    feature kind measured, then accuracy per left-out source."""
    runs = [(label, result(name)) for name, label in STYLE_RUNS if (RESULTS / f"{name}.json").is_file()]
    rows = [[what, str(runs[0][1]["pooled"][g]["n"]),
             *(f"**{d['pooled'][g]['macro_f1']:.3f}** / {d['pooled'][g]['accuracy']:.3f}" for _, d in runs)]
            for g, what in STYLE_GROUPS.items() if g in runs[0][1]["pooled"]]
    head = table(["left-out sources, pooled", "texts", *(f"{label}: macro-F1 / accuracy" for label, _ in runs)],
                 rows, "lr" + "r" * len(runs))
    sources = runs[0][1]["sources"]
    per = [[src, v["domain"], str(v["n"]), *(f"{d['sources'][src]['accuracy']:.3f}" for _, d in runs)]
           for src, v in sorted(sources.items(), key=lambda kv: (kv[1]["language"], kv[1]["domain"], kv[0]))]
    commands = "; ".join(f"`{d['command']}`" for _, d in runs)
    return (head + "\n" + table(["left-out source", "domain", "texts", *(f"{label}: accuracy" for label, _ in runs)],
                                 per, "llr" + "r" * len(runs)) + f"\nCommands: {commands}.\n")


ZERO_SHOT_RUN = "domains_styles_zero-shot_max-test-60"


def domains_zero_shot() -> str:
    """The zero-shot mode on the first texts of each left-out source (bench/domains_styles.py
    --zero-shot): pooled macro-F1 per language, then per source its accuracy and what it said instead."""
    d = result(ZERO_SHOT_RUN)
    pooled = [[what, str(d["pooled"][g]["n"]), f"**{d['pooled'][g]['macro_f1']:.3f}**",
               f"{d['pooled'][g]['accuracy']:.3f}"] for g, what in STYLE_GROUPS.items() if g in d["pooled"]]
    per = [[src, v["domain"], str(v["n"]), f"{v['accuracy']:.3f}",
            ", ".join(f"{k} {n}" for k, n in v["predicted_instead"].items()) or "–"]
           for src, v in sorted(d["sources"].items(), key=lambda kv: (kv[1]["language"], kv[1]["domain"], kv[0]))]
    return (table(["left-out sources, pooled", "texts", "macro-F1", "accuracy"], pooled, "lrrr") + "\n"
            + table(["source", "domain", "texts", "accuracy", "answered instead (texts)"], per, "llrrl")
            + f"\nCommand: `{d['command']}` ({d['wall_s'] / 60:.0f} minutes).\n")


def _macro_f1(d: dict, key: str) -> float:
    return d["results"][key]["macro_f1"]


SPECIALISATION = re.compile(r"specialisation score[^:]*: ([0-9.]+)")
LAYER_SCORE = re.compile(r"layer (\d+): expert share \(%\) by corpus, specialisation ([0-9.]+)")


def specialisation_report() -> str:
    report = result("specialisation")["report"]
    start = report.index("corpus ")  # the table and the layers, not the training summary before them
    return "```\n" + report[start:].strip() + "\n```\n"


def _specialisation_row(d: dict) -> str:
    score = SPECIALISATION.search(d["report"])[1]
    layers = [v for _, v in LAYER_SCORE.findall(d["report"])]
    return f"{score} (per layer {' / '.join(layers)})"


def _x(r: float) -> str:
    return f"{r:.2f}x"


def _moe_config_name(c: dict) -> str:
    return f"D{c['dim']} E{c['n_experts']}"


def moe_layer_summary() -> str:
    """Our best path, forward+backward, against the three targets, per configuration."""
    rows = []
    for c in result("moe_layer")["configs"]:
        for h in c["headline"]:
            r = h["fwdbwd_s"]
            rows.append([_moe_config_name(c), h["ours"], _x(r["vs_hf_eager"]), _x(r["vs_hf_best"]), _x(r["vs_dense"])])
    return table(["config", "ours (k)", "vs HF eager (target >= 2x)", "vs HF best (target >= 1.3x)",
                  "vs dense equal active (target >= 0.67x)"], rows, "llrrr")


def moe_layer_configs() -> str:
    """Per configuration: tok/s of every variant, our best path's ratios, the profile."""
    d = result("moe_layer")
    buckets = bench_module("moe_layer").BUCKETS
    out = []
    for c in d["configs"]:
        out.append(f"### dim {c['dim']}, {c['n_experts']} routed experts, width {c['width']}, 1 shared, "
                   f"{c['tokens']:,} tokens, fp32 CPU\n\n")
        out.append(table(["variant", "fwd tok/s", "fwd+bwd tok/s", "note"], [
            [v["name"], f"{v['fwd_tok_s']:,.0f}" if v["fwd_tok_s"] else "-",
             f"{v['fwdbwd_tok_s']:,.0f}" if v["fwdbwd_tok_s"] else "-", v["error"] or ("auto pick" if v["auto"] else "")]
            for v in c["variants"]], "lrrl"))
        out.append("\nOur best path (tok/s ratio, >1 = ours faster; dynamic vs HF interpolated to the same k):\n\n")
        rows = []
        for h in c["headline"]:
            cells = []
            for which in ("fwd_s", "fwdbwd_s"):
                r = h[which]
                cells += [_x(r["vs_hf_eager"]), f"{_x(r['vs_hf_best'])} ({r['hf_best_impl'] or '-'})", _x(r["vs_dense"])]
            rows.append([f"{h['ours']} [{h['fwd_s']['ours_path']}/{h['fwdbwd_s']['ours_path']}]", *cells])
        out.append(table(["ours [fwd/fwd+bwd path]", "fwd vs HF eager", "fwd vs HF best", "fwd vs dense",
                          "fwd+bwd vs HF eager", "fwd+bwd vs HF best", "fwd+bwd vs dense"], rows, "lrrrrrr"))
        if c["profile"]:
            out.append("\nShare of forward+backward self CPU time (torch.profiler):\n\n")
            out.append(table(["ours", "path", "ms/iter", *buckets], [
                [s["variant"], s["path"], f"{s['ms_per_iter']:.1f}", *(f"{100 * s[b]:.0f}%" for b in buckets)]
                for s in c["profile"]], "llr" + "r" * len(buckets)))
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


def _mb(x: float) -> str:
    return f"{x:,.1f} MB" if x < 100 else f"{x:,.0f} MB"


def adapters_main() -> str:
    """Each domain's fine-tuning runs: cost, domain gain, share of full fine-tuning's gain, forgetting."""
    rows = []
    for r in result("lora_vs_full")["results"]:
        mem = r["accounted_memory"]
        gain = "–" if r["gain_recovered"] is None else f"{100 * r['gain_recovered']:.0f}%"
        rows.append([r["domain"], r["config"], f"{r['trainable_parameters']:,}", f"{r['trainable_pct']:.2f}%",
                     _mb(r["optimizer_state_mb"]), f"{r['train_state_mb']:.1f} / {mem['activations_mb']:.0f} MB",
                     f"{r['step_s_median']:.3f}", f"{r['base_domain_ppl']:.2f} → {r['domain_ppl']:.2f}", gain,
                     f"{r['base_general_ppl']:.2f} → {r['general_ppl']:.2f}", f"{r['general_change_pct']:+.1f}%",
                     f"{r['avg_k']:.2f} / {r['max_vio']:.2f}"])
    return table(["domain", "run", "trainable", "% of model", "optimizer state",
                  "params+grads+optimizer / saved activations", "s/step", "domain ppl before → after",
                  "gain recovered", "general ppl before → after", "general change", "avg k / MaxVio"],
                 rows, "llrrrrrlrlrr")


def adapters_real() -> str:
    """The real base (SmolLM2-135M-Instruct): LoRA ranks against full fine-tuning, same data and tokens."""
    rows = []
    d = result("lora_vs_full_real")
    for r in d["results"]:
        mem = r["accounted_memory"]
        c = r.get("cost_vs_full", {})
        gain = "–" if r["gain_recovered"] is None else f"{100 * r['gain_recovered']:.0f}%"
        task = (f"{r['base_task']['acc']:.3f} → {r['task']['acc']:.3f}" if r.get("task") else "–")
        rows.append([r["config"], f"{r['trainable_parameters']:,} ({r['trainable_pct']:.2f}%)",
                     f"{mem['total_mb']:.0f} MB" + (f" ({100 * c['accounted_total']:.0f}%)" if c else ""),
                     f"{r['peak_over_start_mb']:.0f} MB", f"{r['step_s_median']:.1f}",
                     f"{r['base_domain_ppl']:.2f} → {r['domain_ppl']:.2f}", gain,
                     f"{r['general_change_pct']:+.1f}%", task,
                     f"{r['stored_mb']:.1f} MB" + (f" ({100 * c['stored']:.1f}%)" if "stored" in c else "")])
    return table(["run", "trainable (% of model)", "training memory (vs full)", "peak RSS over start", "s/step",
                  "domain ppl before → after", "gain recovered", "general ppl change", "MedQuAD MC acc",
                  "stored (vs full)"], rows, "lrrrrlrrlr")


def _rate(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def _lr_sweep_runs() -> list[dict]:
    runs = []
    for name in LR_SWEEP:
        d = result(name)
        for r in d["results"]:
            if r["config"] in ("full", "lora-r8"):
                lr = d["args"]["lr_full"] if r["config"] == "full" else d["args"]["lr_lora"]
                runs.append({**r, "lr": lr, "file": name})
    return runs


def _lr_sweep_best(runs: list[dict]) -> tuple[dict, dict, float]:
    """Full fine-tuning's and rank 8's best runs, and the share of the gain rank 8 recovers."""
    f, lo = (min((r for r in runs if r["config"] == c), key=lambda r: r["domain_ppl"]) for c in ("full", "lora-r8"))
    return f, lo, (lo["base_domain_ppl"] - lo["domain_ppl"]) / (f["base_domain_ppl"] - f["domain_ppl"])


def _lr_sweep_row() -> str:
    f, lo, share = _lr_sweep_best(_lr_sweep_runs())
    return (f"{100 * share:.1f}%; {lo['general_change_pct']:+.1f}% vs {f['general_change_pct']:+.1f}% (targets 90%: "
            f"{_met(share >= 0.9)}; general perplexity no more than 2% worse: {_met(lo['general_change_pct'] <= 2)})")


def adapters_lr() -> str:
    """Full fine-tuning and LoRA rank 8 at three peak learning rates each (same data, steps and
    seed), then each at its best rate: the share of the gain compared best against best."""
    runs = _lr_sweep_runs()
    f, lo, share = _lr_sweep_best(runs)
    rows = [[r["config"], _rate(r["lr"]), f"{r['base_domain_ppl']:.2f} → {r['domain_ppl']:.2f}",
             f"{r['base_domain_ppl'] - r['domain_ppl']:.2f}", f"{r['general_change_pct']:+.1f}%",
             f"{r['step_s_median']:.1f}", "**best**" if r is f or r is lo else ""]
            for r in sorted(runs, key=lambda r: (r["config"], r["lr"]))]
    files = ", ".join(f"`{n}.json`" for n in LR_SWEEP)
    return (table(["run", "peak learning rate", "domain ppl before → after", "gain", "general ppl change", "s/step",
                   ""], rows, "lrlrrrl")
            + f"\nEach at its best rate: rank 8 ({_rate(lo['lr'])}) recovers **{100 * share:.1f}%** of full "
              f"fine-tuning's gain ({_rate(f['lr'])}); target 90%: {_met(share >= 0.9)}. From {files}.\n")


def adapters_memory() -> str:
    """Training memory of full fine-tuning and LoRA on the real base: whole logits or the loss
    alone, the frozen base in fp32 or bf16 (bench/train_memory.py)."""
    d = result("train_memory")
    full = {r["whole_logits"]: r["accounted_memory"]["total_mb"] for r in d["rows"] if r["config"] == "full"}
    rows = []
    for r in d["rows"]:
        m = r["accounted_memory"]
        rows.append([r["config"], "whole logits" if r["whole_logits"] else "loss alone", r["frozen_dtype"],
                     f"{r['trainable_parameters']:,} ({r['trainable_pct']:.2f}%)", f"{m['weights_mb']:.0f}",
                     f"{m['grads_mb'] + m['optimizer_mb']:.0f}", f"{m['activations_mb']:.0f}", f"{m['total_mb']:.0f}",
                     f"{100 * m['total_mb'] / full[r['whole_logits']]:.0f}%", f"{r['step_s_median']:.1f}"])
    return table(["run", "loss from", "frozen base", "trainable (% of model)", "weights MB",
                  "gradients + optimizer MB", "saved activations MB", "total MB", "vs full, same loss", "s/step"],
                 rows, "lllrrrrrrr")


def adapters_moe() -> str:
    """The MoE form of the real base: adapters on attention, routed experts or both, and how the
    domain's routing moved."""
    rows = []
    for r in result("lora_vs_full_moe")["results"]:
        shift = r["routing_shift"]
        rows.append([r["config"], f"{r['trainable_parameters']:,} ({r['trainable_pct']:.2f}%)",
                     f"{r['step_s_median']:.1f}", f"{r['base_domain_ppl']:.2f} → {r['domain_ppl']:.2f}",
                     f"{r['general_change_pct']:+.1f}%", f"{shift['tv_distance']:.3f}", f"{shift['top4_overlap']:.2f}",
                     f"{r['stored_mb']:.1f} MB"])
    return table(["run", "trainable (% of model)", "s/step", "domain ppl before → after", "general ppl change",
                  "routing moved (TV distance)", "top-4 experts kept (overlap)", "stored"], rows, "lrrlrrrr")


def adapters_scale() -> str:
    """The scale check: training memory and step time of each set-up on the 108M preset."""
    runs = result("lora_vs_full")["scale"]
    full = next(r for r in runs if r["config"] == "full")
    rows = []
    for r in runs:
        m, f = r["accounted_memory"], full["accounted_memory"]
        rel = "" if r is full else f" ({100 * (m['total_mb'] / f['total_mb'] - 1):+.0f}%)"
        rel_s = "" if r is full else f" ({100 * (r['step_s_median'] / full['step_s_median'] - 1):+.0f}%)"
        rows.append([r["config"], f"{r['trainable_parameters']:,}", f"{r['trainable_pct']:.2f}%",
                     *(_mb(m[k]) for k in ("weights_mb", "grads_mb", "optimizer_mb", "activations_mb")),
                     f"{m['total_mb']:,.0f} MB{rel}", f"{r['step_s_median']:.2f}{rel_s}"])
    return table(["run", "trainable", "% of model", "weights", "grads", "optimizer", "saved activations", "total",
                  "s/step"], rows, "lrrrrrrrr")


SOURCES = ("speeches", "medical", "finance", "legal", "science")


def _moefy_points() -> tuple[dict, list[dict]]:
    points = result(MOEFY)["points"]
    dense = next(p for p in points if p["method"] == "dense")
    return dense, points


def _ffn_share(p: dict) -> str:
    return "100%" if p["method"] == "dense" else f"{100 * p['k'] / 16:.0f}%"


def moefy_curve() -> str:
    """Every method at every share: perplexity and bits per byte, overall and per source, and compute."""
    dense, points = _moefy_points()
    rows = []
    for p in points:
        k = "-" if p["k"] is None else f"{p['k']:g}"
        if p["realised_k"] is not None:
            k += f" ({p['realised_k']:.2f})"
        rows.append([p["method"], k, _ffn_share(p), f"{p['active_params'] / 1e6:.1f}M",
                     f"{p['flops_per_token'] / 1e6:.0f}", f"{p['ppl']:.2f}",
                     f"{100 * (p['ppl'] / dense['ppl'] - 1):+.0f}%",
                     f"{p['bpb']:.3f}", *(f"{p['sources'][s]['ppl']:.1f}" for s in SOURCES)])
    return table(["method", "k of 16 (realised)", "FFN active", "active params", "MFLOPs/token", "ppl", "vs dense",
                  "bits/byte", *SOURCES], rows, "llrrrrrr" + "r" * len(SOURCES))


def _point(points: list[dict], method: str, k: float) -> dict | None:
    return next((p for p in points if p["method"] == method and p["k"] == k), None)


def moefy_targets() -> str:
    """The issue's targets against the measured points."""
    dense, points = _moefy_points()
    rows = []
    for k in sorted({p["k"] for p in points if p["method"] == "topk"}):
        dyn, top = _point(points, "dynamic", k), _point(points, "topk", k)
        if dyn and top:
            rows.append([f"dynamic beats static top-k at k = {k:g}", f"{dyn['ppl']:.2f} vs {top['ppl']:.2f}",
                         "yes" if dyn["ppl"] < top["ppl"] else "**no**"])
    for k in sorted({p["k"] for p in points if p["method"] == "random"}):
        dyn, rnd = _point(points, "dynamic", k), _point(points, "random", k)
        if dyn and rnd:
            rows.append([f"co-activation split beats a random split at k = {k:g}",
                         f"{dyn['ppl']:.2f} vs {rnd['ppl']:.2f}", "yes" if dyn["ppl"] < rnd["ppl"] else "**no**"])
    half, teal = _point(points, "dynamic", 8.0), _point(points, "teal", 8.0)
    if half:
        rows.append(["training-free, 50% of the FFN: within +10% of dense",
                     f"{half['ppl']:.2f} vs {dense['ppl']:.2f} ({100 * (half['ppl'] / dense['ppl'] - 1):+.0f}%)",
                     "yes" if half["ppl"] <= 1.1 * dense["ppl"] else "**no**"])
    if half and teal:
        rows.append(["training-free, 50% of the FFN: lower than TEAL-style thresholding",
                     f"{half['ppl']:.2f} vs {teal['ppl']:.2f}", "yes" if half["ppl"] < teal["ppl"] else "**no**"])
    for h in (p for p in points if p["method"] == "healed"):
        rows.append([f"healed, {_ffn_share(h)} of the FFN ({h['heal']['tokens']:,} tokens, "
                     f"{h['heal']['wall_s'] / 60:.0f} min): within +15% of dense",
                     f"{h['ppl']:.2f} vs {dense['ppl']:.2f} ({100 * (h['ppl'] / dense['ppl'] - 1):+.0f}%)",
                     "yes" if h["ppl"] <= 1.15 * dense["ppl"] else "**no**"])
    return table(["target", "measured (held-out perplexity)", "met?"], rows, "lll")


def moefy_layers() -> str:
    """The conversion, layer by layer (k = 8): router recall, FFN error, oracle mass; held-out k and MaxVio."""
    _, points = _moefy_points()
    p = _point(points, "dynamic", 8.0)
    rows = [[str(c["layer"]), f"{c['router_recall']:.3f}", f"{c['rel_error']:.3f}", f"{c['oracle_mass']:.3f}",
             f"{h['avg_k']:.2f}", f"{h['max_vio']:.2f}"] for c, h in zip(p["convert"], p["layers"])]
    return table(["layer", "router recall", "FFN output error", "top-8 experts' share of output", "k held out",
                  "MaxVio held out"], rows, "rrrrrr")


def moefy_granularity() -> str:
    """Oracle-routed FFN error by granularity and shared expert, against neuron-level sparsity."""
    summary = result("moefy_granularity")["summary"]
    shares = sorted({x["share"] for x in summary})
    err = {(x["method"], x["share"]): x["mean_rel_error"] for x in summary}
    methods = sorted({x["method"] for x in summary}, key=lambda m: err.get((m, shares[-1]), 1.0))
    rows = [[m, *(f"{err[(m, sh)]:.3f}" if (m, sh) in err else "-" for sh in shares)] for m in methods]
    return table(["cut (oracle routing)", *(f"error at {100 * sh:.0f}% of the FFN" for sh in shares)], rows,
                 "l" + "r" * len(shares))


def moefy_kinds() -> str:
    """Per kind of text: perplexity, experts per token, tokens; and the specialisation score."""
    d = result("moefy_routing")
    rows = [[name, f"{k['ppl']:.1f}", f"{k['avg_k']:.2f}", f"{k['tokens']:,}"] for name, k in d["kinds"].items()]
    spec = d["specialisation"]
    return (table(["kind of text", "perplexity", "experts per token", "tokens"], rows, "lrrr")
            + f"\nSpecialisation score {spec['score']:.3f} (per layer {min(spec['per_layer']):.3f} to "
              f"{max(spec['per_layer']):.3f}; 0 = every kind uses the experts alike, 1 = each has its own).\n")


def moefy_healed_tasks() -> str:
    """Multiple-choice accuracy of the healed MoE against the dense model, the same items."""
    dense, healed = result("real_model_tasks")["tasks"], result("real_model_tasks_ckpt-healed")["tasks"]
    rows = []
    for task, h in healed.items():
        d = dense[task]
        diff = 100 * (h["acc"] - d["acc"])
        rows.append([task, str(h["items"]), f"{d['acc']:.3f}", f"{h['acc']:.3f} ± {h['acc_ci95']:.3f}",
                     f"{diff:+.1f}", "yes" if diff >= -2 else "**no**",
                     f"{d['acc_norm']:.3f}", f"{h['acc_norm']:.3f}"])
    return table(["task", "items", "dense acc", "healed acc", "points", "within 2 points?", "dense acc_norm",
                  "healed acc_norm"], rows, "lrrrrlrr")


def moefy_speed() -> str:
    d = result("moefy_speed")
    rows = [[r["model"], r["precision"], f"{r['prefill_tok_s']:.0f}", f"{r['decode_b1_tok_s']:.1f}",
             f"{r['decode_b16_tok_s']:.1f}", f"{r['avg_k']:.2f}" if "avg_k" in r else "-", f"{r['peak_mib']:.0f}"]
            for r in d["rows"]]
    rows += [["MoE / dense", p, _x(r["prefill_tok_s"]), _x(r["decode_b1_tok_s"]), _x(r["decode_b16_tok_s"]), "", ""]
             for p, r in d["ratios"].items()]
    return table(["model", "precision", "prefill tok/s", "decode b1 tok/s", "decode 16 rows tok/s", "k",
                  "peak MiB"], rows, "llrrrrr")


def moefy_profile() -> str:
    d = result("moefy_speed")
    out = []
    for name, ops in d["profiles"].items():
        total = ops[0]["self_ms"] / ops[0]["share"]
        out.append(f"**{name}**, one 64-token greedy decode ({total:,.0f} ms of CPU time under the profiler):\n\n")
        out.append(table(["operator", "calls", "self ms", "share"],
                         [[f"`{o['op']}`", f"{o['calls']:,}", f"{o['self_ms']:.0f}", f"{100 * o['share']:.0f}%"]
                          for o in ops], "lrrr"))
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


# document -> {table name: renderer}
def _distill_domains(m: dict) -> float:
    """Mean retention over the domain sources (medical, finance, legal, science)."""
    r = m["retention"]["ppl"]
    return sum(r[k] for k in ("medical", "finance", "legal", "science")) / 4


def distill_real_candidates() -> str:
    c = result("distill_real")["choice"]
    rows = [["teacher (SmolLM2-135M-Instruct)", "30", "1536", f"{c['teacher_params'] / 1e6:.1f}M (100%)",
             f"{c['teacher_calib_ppl']:.1f}", ""]]
    for r in c["candidates"]:
        rows.append([f"`{r['layers']}`, FFN {r['ffn_share']:.1%}", str(len(r["kept"])), str(r["ffn_width"]),
                     f"{r['params'] / 1e6:.1f}M ({r['params_share']:.1%})", f"{r['calib_ppl']:,.1f}",
                     "**chosen**" if r == c["chosen"] else ""])
    return table(["student cut", "blocks", "FFN width", "parameters", "calibration perplexity", ""], rows, "lrrrrl")


def distill_real() -> str:
    d = result("distill_real")
    models, c = d["models"], d["choice"]
    sources = list(models["teacher"]["ppl"]["sources"])
    tasks = [k for k in models["teacher"]["tasks"] if k != "wall_s"]
    rows = []
    for label, m in models.items():
        n = c["teacher_params"] if label == "teacher" else c["chosen"]["params"]
        t = m.get("train")
        rows.append([label, f"{n / 1e6:.1f}M", f"{m['ppl']['ppl']:,.2f}"]
                    + [f"{m['ppl']['sources'][s]:,.2f}" for s in sources]
                    + [f"{m['tasks'][k]['acc_norm']:.3f}" if "tasks" in m else "-" for k in tasks]
                    + [f"{t['settings']['steps']} x {t['tokens'] // t['settings']['steps']:,} tokens, "
                       f"{t['step_s_median']:.1f} s/step, {t['wall_s'] / 60:.0f} min" if t else "-"])
    return table(["model", "params", "held-out ppl", *sources, *(f"{k} acc_norm" for k in tasks), "training"], rows,
                 "lrr" + "r" * (len(sources) + len(tasks)) + "l")


def distill_real_targets() -> str:
    d = result("distill_real")
    models, c = d["models"], d["choice"]
    kd, data = models["distilled"], models["data only"]
    share = c["chosen"]["params_share"]
    r = kd["retention"]
    rows = [["student at <= 50% of the teacher's active parameters", f"{share:.1%}", _yes(share <= 0.5)],
            ["retention >= 0.92, multiple choice (student / teacher acc_norm, mean of 3 tasks)",
             f"{r['tasks']['mean']:.3f} (above chance: {r['tasks_above_chance']['mean']:.3f})",
             _yes(r["tasks"]["mean"] >= 0.92)],
            ["retention >= 0.92, domain perplexity (2 - student / teacher, mean of medical, finance, legal, science)",
             f"{_distill_domains(kd):.3f} (all held-out text: {r['ppl']['all']:.3f})", _yes(_distill_domains(kd) >= 0.92)],
            ["within one hour of CPU per run (training)", f"{kd['train']['wall_s'] / 60:.0f} min",
             _yes(kd["train"]["wall_s"] <= 3600)],
            ["distillation beats the data alone: held-out perplexity", f"{kd['ppl']['ppl']:.2f} vs {data['ppl']['ppl']:.2f}",
             _yes(kd["ppl"]["ppl"] < data["ppl"]["ppl"])],
            ["distillation beats the data alone: multiple choice (mean acc_norm)",
             f"{_mean_acc(kd):.3f} vs {_mean_acc(data):.3f}", _yes(_mean_acc(kd) > _mean_acc(data))]]
    return table(["target", "measured", "met?"], rows, "lll")


STAGES = ("route", "expert", "judge", "score")  # the DataDistiller's rejection stages, in order


def distiller_real() -> str:
    """Acceptance per input source: where the classifier sent its questions and at which stage
    they were rejected; each stage's pass rate is of the answers that reached it."""
    by_source = result("distiller_real")["distiller"]["by_source_and_domain"]  # source -> domain -> outcome -> n

    def row(label: str, domains: dict[str, dict[str, int]]) -> list[str]:
        counts = {k: sum(v.get(k, 0) for v in domains.values()) for k in ("kept", *STAGES)}
        inputs = sum(sum(v.values()) for v in domains.values())
        routed = sorted(((dom, sum(v.values())) for dom, v in domains.items()), key=lambda x: -x[1])
        reached, cells = inputs, []
        for stage in STAGES:
            cells.append(f"{counts[stage]} ({1 - counts[stage] / reached:.0%} pass)" if reached else "-")
            reached -= counts[stage]
        return [label, str(inputs), ", ".join(f"{dom} {n}" for dom, n in routed), *cells,
                f"{counts['kept']} ({counts['kept'] / inputs:.0%})"]

    merged: dict[str, Counter] = {}
    for domains in by_source.values():
        for dom, outcomes in domains.items():
            merged.setdefault(dom, Counter()).update(outcomes)
    rows = [row(source, domains) for source, domains in by_source.items()] + [row("**all**", merged)]
    return table(["questions from", "inputs", "routed to", "rejected: no expert", "length / repetition filter",
                  "judge (base says no)", "likelihood score", "kept"], rows, "lrlrrrrr")


def distiller_real_domains() -> str:
    d = result("distiller_real")["distiller"]
    rows = [[dom, str(v["kept"] + v["rejected"]), str(v["kept"]), f"{v['kept'] / (v['kept'] + v['rejected']):.0%}"]
            for dom, v in sorted(d["by_domain"].items())]
    q = d["logprob_quartiles"]
    return (table(["domain (classified)", "inputs", "kept", "acceptance"], rows, "lrrr")
            + "\nMean log-probability per token of the answers the base scored (min / quartiles / max): "
            + " / ".join(f"{x:.2f}" for x in q) + ".\n")


def _useful_ppl(d: dict) -> str:
    runs = d.get("usefulness", {}).get("runs", {})
    if not all(k in runs for k in ("base", "original", "distilled")):
        return "usefulness not measured in this run"
    return " / ".join(f"{runs[k]['domain_ppl']:.2f}" for k in ("base", "original", "distilled"))


def distiller_real_useful() -> str:
    u = result("distiller_real").get("usefulness",
                                     {"skipped": "the result file was written before its last phase finished"})
    if "skipped" in u:
        return f"Not measured: {u['skipped']}.\n"
    label = {"base": "none (the base model)", "original": f"{u['trained_on']} original MedQuAD answers",
             "distilled": f"the DataDistiller's {u['trained_on']} accepted answers to the same questions"}
    rows = []
    for k in ("base", "original", "distilled"):
        if k not in u["runs"]:
            continue
        m = u["runs"][k]["task"]
        rows.append([label[k], f"{u['runs'][k]['domain_ppl']:.2f}",
                     f"{m['acc_norm']:.3f}" + (f" ± {m['acc_norm_ci95']:.3f}" if "acc_norm_ci95" in m else ""),
                     f"{m['acc']:.3f} ± {m['acc_ci95']:.3f}"])
    return (table(["adapter trained on", "held-out MedQuAD answers: perplexity",
                   f"MedQuAD multiple choice ({u['task_items']} items): acc_norm ± 95% CI", "acc ± 95% CI"], rows,
                  "lrrr")
            + f"\nBoth adapters: {u['steps']} steps (one epoch) of 8 conversations, the same settings and seed.\n")


def distiller_agreement() -> str:
    d = result("distiller_agreement")["sources"]
    names = {"kept": "kept", "expert": "length / repetition filter", "judge": "judge said no",
             "score": "likelihood below the floor"}
    rows = []
    for source, v in d.items():
        for outcome, o in v["outcomes"].items():
            rows.append([source, names.get(outcome, outcome), str(o["n"]), f"{o['f1']:.3f}",
                         f"{o['f1_other_questions']:.3f}"])
        rho = v["score_vs_f1_spearman"]
        rows.append([source, f"score vs F1, {v['scored']} scored answers (Spearman)", "",
                     "-" if rho is None else f"{rho:+.2f}", ""])
    return table(["questions from", "outcome", "answers", "token F1 with its reference answer",
                  "with other questions' answers"], rows, "llrrr")


def _mean_acc(m: dict) -> float:
    accs = [v["acc_norm"] for k, v in m["tasks"].items() if k != "wall_s"]
    return sum(accs) / len(accs)


TABLES: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"readme": readme_results},
    "docs/results/real_model.md": {"real_model_systems": real_model_systems, "real_model_tasks": real_model_tasks,
                                   "sliced_linear_products": sliced_linear_products,
                                   "sliced_linear_decode": sliced_linear_decode},
    "docs/results/pipeline.md": {"pipeline": pipeline, "pipeline_removed": pipeline_removed},
    "docs/results/specialisation.md": {"specialisation_report": specialisation_report},
    "docs/results/domains.md": {"domains_results": domains_results, "domains_by_source": domains_by_source,
                                "domains_styles": domains_styles, "domains_zero_shot": domains_zero_shot},
    "docs/results/quant.md": {"quant": quant_results, "quant_real": quant_real,
                              "quant_real_targets": quant_real_targets, "quant_ramp": quant_ramp},
    "docs/results/routing.md": {"routing_en": routing_table("en"), "routing_zh": routing_table("zh"),
                                "routing_targets": routing_targets},
    "docs/results/core.md": {"quickstart": quickstart, "train_throughput": train_throughput},
    "docs/results/adapters.md": {"adapters_main": adapters_main, "adapters_scale": adapters_scale,
                                 "adapters_real": adapters_real, "adapters_moe": adapters_moe,
                                 "adapters_memory": adapters_memory, "adapters_lr": adapters_lr},
    "docs/results/moefy.md": {"moefy_curve": moefy_curve, "moefy_targets": moefy_targets,
                              "moefy_granularity": moefy_granularity, "moefy_layers": moefy_layers,
                              "moefy_kinds": moefy_kinds, "moefy_healed_tasks": moefy_healed_tasks,
                              "moefy_speed": moefy_speed, "moefy_profile": moefy_profile},
    "docs/results/moe_layer.md": {"moe_layer_summary": moe_layer_summary, "moe_layer_configs": moe_layer_configs},
    "docs/results/serving.md": {"serve_load": serve_load, "serve_targets": serve_targets,
                                "serve_real": serve_real, "serve_real_targets": serve_real_targets,
                                "serve_real_sliced": lambda: serve_real(SERVE_REAL_SLICED),
                                "serve_real_w8a8": lambda: serve_real(SERVE_REAL_W8A8),
                                "serve_real_w8a8_targets": lambda: serve_real_targets(SERVE_REAL_W8A8),
                                "serve_real_one_row": lambda: serve_real(SERVE_REAL_ONE_ROW),
                                "serve_real_one_row_targets": lambda: serve_real_targets(SERVE_REAL_ONE_ROW),
                                "serve_real_latest": lambda: serve_real(SERVE_REAL_LATEST),
                                "serve_real_latest_targets": lambda: serve_real_targets(SERVE_REAL_LATEST),
                                "serve_ceiling": serve_ceiling, "decode_floor": decode_floor,
                                "grammar_libs": grammar_libs, "structured": structured,
                                "prefix_cache": prefix_cache, "eval_harness": eval_harness},
    "docs/results/platform.md": {"platform_overhead": platform_overhead},
    "docs/results/labelhub.md": {"label_load": label_load},
    "docs/results/distill.md": {"distill_real_candidates": distill_real_candidates, "distill_real": distill_real,
                                "distiller_real": distiller_real, "distiller_real_domains": distiller_real_domains,
                                "distiller_agreement": distiller_agreement,
                                "distiller_real_useful": distiller_real_useful,
                                "distill_real_targets": distill_real_targets},
    "docs/results/safety.md": {"safety_stages": safety_stages, "safety_other": safety_other,
                               "safety_sources": safety_sources, "safety_linear_variants": safety_linear_variants},
}


def render(doc: str, text: str, renderers: dict[str, Callable[[], str]]) -> str:
    """``text`` with every registered table re-rendered; a registered table without its markers,
    or markers that no renderer owns, is a ReportError."""
    found = {m["name"] for m in MARKER.finditer(text)}
    missing, unknown = sorted(set(renderers) - found), sorted(found - set(renderers))
    if missing or unknown:
        raise ReportError(f"{doc}: " + "; ".join(
            ([f"no markers for table(s) {', '.join(missing)}"] if missing else [])
            + ([f"markers of unknown table(s) {', '.join(unknown)}"] if unknown else [])))
    return MARKER.sub(lambda m: m[1] + renderers[m["name"]]() + m[4], text)


def check(write: bool = False) -> list[str]:
    """Problems (diffs, missing files or markers) of every document; rewrites them when ``write``."""
    problems = []
    for doc, renderers in TABLES.items():
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        try:
            new = render(doc, text, renderers)
        except ReportError as e:
            problems.append(str(e))
            continue
        if new != text:
            if write:
                path.write_text(new, encoding="utf-8")
            else:
                problems.append("".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                             f"{doc} (as committed)", f"{doc} (from the JSON)")))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = ap.parse_args()
    try:
        problems = check(write=not args.check)
    except ReportError as e:
        problems = [str(e)]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print("every results table matches its JSON" if args.check else f"rendered {len(TABLES)} documents")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
