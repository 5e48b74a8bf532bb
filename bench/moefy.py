"""Dense to dynamic MoE on a real model: quality against active compute, every method side by side.

SmolLM2-135M-Instruct (`lightseek fetch smollm2-135m-instruct`) is converted by `lightseek
moefy` and measured on held-out English text (five sources that no step of the conversion
reads: State of the Union addresses, MedQuAD answers, FiQA answers, CUAD contracts and PubMedQA
abstracts; --eval-tokens in all, 200k by default) in windows of 512 tokens. Calibration text is
a different mix (Gutenberg books, Alpaca instructions, the standard library's documentation).

Methods, at each number of routed experts per token k of 16 (k/16 of the FFN's weights active;
--ks, default 3 5 8 10, i.e. 19% to 62.5%; the top-k and random-split ablations at --ablation-ks,
default 5 8):

- dense: the original model (once);
- dynamic: co-activation split, fitted routers, dynamic routing calibrated to an average of k;
- topk: the same experts and routers, a fixed k per token;
- random: a random split, routers fitted the same way, dynamic routing at k;
- teal: the dense model with TEAL-style thresholds zeroing a share 1 - k/16 of each FFN's
  input and intermediate activations (training-free; quality only: no sparse kernels here);
- healed: the dynamic model at --heal-k (default 5, 31% of the FFN) after `distill train` with
  the dense original as teacher (KL only), everything but the FFNs (experts and routers)
  frozen, --heal-steps of 4 x 256 tokens of the calibration sources (never the held-out ones),
  then re-targeted to --heal-k.

Each split is converted once (at k = 8) and re-calibrated to every other k (`retarget`: the
thresholds only). For every point: perplexity and bits per byte per source and overall,
realised k and MaxVio per layer, active parameters and forward FLOPs per token of the whole
model (attention at the window length and the output head included).

Evaluations take minutes each on 2 CPU cores, so every point is cached under
runs/moefy_bench/points/ with the settings it was measured under; a rerun measures only the
points missing (or measured under other settings), and --only METHOD... limits a run to some
methods. The result JSON holds every cached point of the current settings.

    python bench/moefy.py [--eval-tokens 200000] [--ks 3 5 8 10] [--ablation-ks 5 8]
                          [--heal-k 5] [--heal-steps 150] [--only dense dynamic ...] [--result NAME]

Writes bench/results/moefy.json (or a probe's own name) and docs/results/moefy.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

NAME = "smollm2-135m-instruct"
SHARED = ROOT.parent / "shared" / "data"
RUNS = ROOT / "runs" / "moefy_bench"
EXPERTS, CONVERT_K, SEQ_LEN, BATCH = 16, 8.0, 512, 4
METHODS = ("dense", "dynamic", "topk", "random", "teal", "healed")
HEAL_BATCH, HEAL_SEQ = 4, 256


# --- text ----------------------------------------------------------------------------------------
def _jsonl(path: Path) -> Iterator[dict]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)


def eval_sources() -> dict[str, list[str]]:
    """Held-out English text, by source: documents in a fixed order."""
    pubmed = json.loads((SHARED / "medical_pubmedqa_en" / "ori_pqal.json").read_text(encoding="utf-8"))
    return {
        "speeches": [f.read_text(encoding="utf-8") for f in
                     sorted((SHARED / "en_us_presidential_speeches" / "state_union").glob("*.txt"))],
        "medical": [f"{r['question']}\n{r['answer']}" for f in sorted((SHARED / "medical_medquad_en").glob("*.jsonl"))
                    for r in _jsonl(f) if r.get("answer")],
        "finance": [f"{r['question']}\n{r['answer']}" for r in _jsonl(SHARED / "finance_fiqa_en" / "fiqa_648.jsonl")],
        "legal": [f.read_text(encoding="utf-8") for f in
                  sorted((SHARED / "legal_cuad_en" / "full_contract_txt_sample").glob("*.txt"))],
        "science": [" ".join(r["CONTEXTS"]) + "\n" + r["LONG_ANSWER"] for _, r in sorted(pubmed.items())],
    }


def calib_files() -> list[str]:
    """Calibration text for `lightseek moefy --calib`: books and instructions (the standard
    library's documentation is added by `calibration_mix`)."""
    books = sorted((SHARED / "en_gutenberg").glob("*.txt"))
    return [str(p) for p in books] + [str(SHARED / "instruct_alpaca_en" / "alpaca_data_en_part01.json")]


def _spread(docs: list[str], n: int) -> list[str]:
    """Documents spread evenly over the corpus (a different order than the files')."""
    step = max(1, len(docs) // max(1, n))
    return docs[::step]


def eval_windows(tokenizer, tokens_per_source: int) -> dict[str, dict]:
    """Per source: (n, SEQ_LEN + 1) token windows cut from its documents, their target bytes, and
    the documents read (which a training run that evaluates on these windows must leave out)."""
    import torch

    out = {}
    for name, docs in eval_sources().items():
        ids: list[int] = []
        used: list[str] = []
        for doc in _spread(docs, 400):
            ids += tokenizer.encode(doc) + [tokenizer.eot_id]
            used.append(doc)
            if len(ids) >= tokens_per_source + SEQ_LEN + 1:
                break
        n = min(len(ids) // (SEQ_LEN + 1), math.ceil(tokens_per_source / SEQ_LEN))
        if n == 0:
            raise SystemExit(f"{name}: too little text for one window")
        windows = torch.tensor(ids[: n * (SEQ_LEN + 1)]).view(n, SEQ_LEN + 1)
        n_bytes = sum(len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in windows)
        out[name] = {"windows": windows, "bytes": n_bytes, "documents": used}
    return out


def calibration_mix(tokenizer, max_len: int):
    """The calibration windows the conversions use: 64 windows of 256 tokens, a third from the
    standard library's documentation, the rest from books and instructions."""
    from lightseek.data.calib import CalibConfig, calibration_windows
    from lightseek.moefy.run import default_calibration

    files = calibration_windows(tokenizer, CalibConfig(files=calib_files(), samples=43, seq_len=256), max_len)
    docs = calibration_windows(tokenizer, CalibConfig(samples=21, seq_len=256), max_len,
                               default_documents=default_calibration)
    return files + docs


# --- measuring -------------------------------------------------------------------------------------
def evaluate(model, data: dict[str, dict]) -> dict:
    """Perplexity and bits per byte per source and overall; routing statistics per layer."""
    import torch
    import torch.nn.functional as F

    model.eval()
    model.reset_routing_stats()
    per, nll_all, tok_all, bytes_all = {}, 0.0, 0, 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for name, d in data.items():
            nll, toks = 0.0, 0
            for batch in d["windows"].split(BATCH):
                logits = model(batch[:, :-1]).logits
                nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                             reduction="sum"))
                toks += batch[:, 1:].numel()
            per[name] = {"ppl": math.exp(nll / toks), "bpb": nll / math.log(2) / d["bytes"], "tokens": toks}
            nll_all, tok_all, bytes_all = nll_all + nll, tok_all + toks, bytes_all + d["bytes"]
    report = model.routing_report()
    return {"ppl": math.exp(nll_all / tok_all), "bpb": nll_all / math.log(2) / bytes_all, "tokens": tok_all,
            "sources": per, "eval_s": time.perf_counter() - t0,
            "layers": [{k: r[k] for k in ("layer", "avg_k", "max_vio", "threshold") if k in r} for r in report]}


def compute(model, k: float | None, ffn_share: float | None = None) -> dict:
    """Active parameters and forward FLOPs per token (at the window length), whole model."""
    cfg = model.cfg
    flops = model.flops_per_token(seq_len=SEQ_LEN, k=k)  # k: the realised mean (None for a dense model)
    params = model.num_params(k)
    active_params = params["active"]
    if ffn_share is not None:  # a thresholded dense model: a share of each FFN's weights used
        ffn = 3 * cfg.dim * cfg.dense_inter_dim * cfg.n_layers
        active_params = params["total"] - ffn * (1 - ffn_share)
        flops = {**flops, "active": flops["active"] - 2 * ffn * (1 - ffn_share)}
    return {"active_params": int(active_params), "total_params": int(params["total"]),
            "flops_per_token": float(flops["active"])}


# --- points, cached ---------------------------------------------------------------------------------
def settings_key(ckpt: Path, args) -> dict:
    from lightseek.fileio import file_sha256

    return {"model_sha256": file_sha256(ckpt / "model.safetensors"), "eval_tokens": args.eval_tokens,
            "seq_len": SEQ_LEN, "experts": EXPERTS, "convert_k": CONVERT_K, "router_steps": args.router_steps,
            "calib": "books+alpaca01+stdlib-docs 64x256"}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def point_path(method: str, k: float | None, key: dict) -> Path:
    """Points of different settings live in different folders: a probe never replaces the main run's."""
    return RUNS / "points" / key_hash(key) / (f"{method}.json" if k is None else f"{method}_k{k:g}.json")


def cached(method: str, k: float | None, key: dict) -> dict | None:
    path = point_path(method, k, key)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") == key:
            return data
    return None


def save_point(point: dict) -> None:
    from lightseek.fileio import write_json_atomic

    path = point_path(point["method"], point["k"], point["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, point)


def conversion_stamp(key: dict) -> str:
    return key_hash({k: v for k, v in key.items() if k != "eval_tokens"})  # conversion ignores the eval set


def conversion_dir(split: str, key: dict) -> Path:
    """Where the conversion with ``split`` under the settings ``key`` is cached."""
    return RUNS / f"moe_{split}_E{EXPERTS}_{conversion_stamp(key)}"


def latest_conversion(split: str = "coactivation") -> Path:
    """The newest cached conversion, for the benchmarks that measure it further."""
    found = sorted(RUNS.glob(f"moe_{split}_E{EXPERTS}_*/config.json"), key=lambda f: f.stat().st_mtime)
    if not found:
        raise SystemExit("no converted checkpoint under runs/moefy_bench: run `python bench/moefy.py` first")
    return found[-1].parent


def converted(split: str, dense, dense_dir: Path, calib, args, key: dict):
    """The dense model converted with ``split`` at k = 8 (cached as a checkpoint)."""
    from lightseek.model.checkpoint import TOKENIZER, load_model, save_checkpoint
    from lightseek.moefy.config import MoefyConfig
    from lightseek.moefy.convert import moefy_model

    stamp = conversion_stamp(key)
    out = conversion_dir(split, key)
    meta = out / "config.json"
    if meta.is_file() and json.loads(meta.read_text()).get("bench_key") == stamp:
        return load_model(out), json.loads(meta.read_text())["moefy_layers"]
    cfg = MoefyConfig(experts=EXPERTS, split=split, target_k=CONVERT_K, router_steps=args.router_steps)
    t0 = time.perf_counter()
    model, layers = moefy_model(dense, calib, cfg)
    seconds = time.perf_counter() - t0
    print(f"  converted ({split}) in {seconds:.0f} s: router recall "
          f"{sum(r['router_recall'] for r in layers) / len(layers):.3f}, FFN error "
          f"{sum(r['rel_error'] for r in layers) / len(layers):.3f}", flush=True)
    for r in layers:
        r["convert_s"] = seconds / len(layers)
    save_checkpoint(out, model, tokenizer_file=dense_dir / TOKENIZER,
                    extra={"bench_key": stamp, "moefy_layers": layers})
    return model, layers


def conversion_k_first(ks: list[float]) -> list[float]:
    """``ks`` with the conversion's own k first (it needs no re-targeting)."""
    return sorted(ks, key=lambda k: (k != CONVERT_K, k))


def heal_corpus(path: Path) -> Path:
    """The healing text as JSONL documents: the calibration sources (books in ~4,000-character
    passages, Alpaca instructions with their answers, the standard library's documentation),
    never the held-out ones."""
    from lightseek.fileio import atomic_write_text
    from lightseek.moefy.run import default_calibration

    if path.is_file():
        return path
    texts = []
    for book in sorted((SHARED / "en_gutenberg").glob("*.txt")):
        text = book.read_text(encoding="utf-8")
        texts += [text[i:i + 4000] for i in range(0, len(text), 4000)]
    alpaca = json.loads((SHARED / "instruct_alpaca_en" / "alpaca_data_en_part01.json").read_text(encoding="utf-8"))
    texts += ["\n".join(x for x in (r["instruction"], r.get("input", ""), r["output"]) if x) for r in alpaca]
    texts += [doc.text for doc in default_calibration()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts if t.strip()))
    return path


def healed(moe_dir: Path, dense_dir: Path, calib, args, key: dict):
    """The converted model at --heal-k, healed by distillation from the dense original, then
    re-targeted to --heal-k (cached as a run folder); the model and the run's summary."""
    import torch

    from lightseek.distill.train import distill_train, load_distill_config
    from lightseek.model.checkpoint import TOKENIZER, load_model, save_checkpoint
    from lightseek.moefy.convert import retarget

    stamp = key_hash({conversion_stamp(key): 1, "heal_k": args.heal_k, "heal_steps": args.heal_steps,
                      "heal_lr": args.heal_lr})
    run = RUNS / f"heal_k{args.heal_k:g}_{stamp}"
    summary_file = run / "heal_summary.json"
    if not summary_file.is_file():
        student = RUNS / f"heal_k{args.heal_k:g}_{stamp}_student"
        if not (student / "config.json").is_file():
            model = load_model(moe_dir).eval()
            with torch.inference_mode():
                retarget(model, calib, args.heal_k)
            save_checkpoint(student, model, tokenizer_file=dense_dir / TOKENIZER)
        cfg = load_distill_config(None, [
            f"--student={student}", f"--teachers.general={dense_dir}",
            f"--data.sources=[general={heal_corpus(RUNS / 'heal_corpus.jsonl')}]", "--kd.ce_weight=0",
            "--freeze=[embed,norm,'*.attn.*','*_norm.*']", f"--out_dir={run}", f"--train.steps={args.heal_steps}",
            f"--train.batch_size={HEAL_BATCH}", f"--train.seq_len={HEAL_SEQ}", f"--train.lr={args.heal_lr}",
            f"--train.warmup_steps={max(1, args.heal_steps // 20)}", f"--train.eval_every={args.heal_steps}",
            "--train.eval_batches=4", f"--train.ckpt_every={args.heal_steps}", "--train.plots=false",
            "--train.weight_decay=0", "--eval_windows=8"])
        t0 = time.perf_counter()
        summary = distill_train(cfg, show_progress=True)
        summary["heal_wall_s"] = time.perf_counter() - t0
        summary_file.write_text(json.dumps(summary, indent=1, default=str))
    summary = json.loads(summary_file.read_text())
    final = run / "healed"  # the healed model re-targeted: what the task scores and speed runs load
    if (final / "config.json").is_file():
        return load_model(final).eval(), summary
    model = load_model(run / "checkpoint").eval()
    with torch.inference_mode():
        retarget(model, calib, args.heal_k)
    save_checkpoint(final, model, tokenizer_file=dense_dir / TOKENIZER, extra={"heal_k": args.heal_k})
    return model, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-tokens", type=int, default=200_000, help="held-out tokens in all (5 sources)")
    ap.add_argument("--ks", type=float, nargs="+", default=[3, 5, 8, 10], help="routed experts per token, of 16")
    ap.add_argument("--ablation-ks", type=float, nargs="+", default=[5, 8], help="the same, for topk and random")
    ap.add_argument("--heal-k", type=float, default=5.0, help="average k of the healed model")
    ap.add_argument("--heal-steps", type=int, default=150, help="healing steps of 4 x 256 tokens")
    ap.add_argument("--heal-lr", type=float, default=3e-4)
    ap.add_argument("--only", nargs="+", choices=METHODS, help="measure only these methods (cached ones are kept)")
    ap.add_argument("--router-steps", type=int, default=300)
    ap.add_argument("--result", help="write bench/results/RESULT.json")
    args = ap.parse_args()
    stem = result_name("moefy", args, {"eval_tokens": 200_000, "ks": [3, 5, 8, 10], "ablation_ks": [5, 8],
                                       "heal_k": 5.0, "heal_steps": 150, "heal_lr": 3e-4, "router_steps": 300})

    import torch

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.moefy.convert import retarget, set_routing
    from lightseek.moefy.teal import threshold_ffns

    try:
        ckpt = resolve_checkpoint(NAME)
    except Exception as e:  # noqa: BLE001  (the message says what to run)
        raise SystemExit(f"{e}") from None
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the held-out and calibration text come from there")
    torch.manual_seed(0)
    tok = Tokenizer.load(ckpt)
    dense = load_model(ckpt).eval()
    key = settings_key(ckpt, args)
    data = eval_windows(tok, args.eval_tokens // len(eval_sources()))
    calib = calibration_mix(tok, dense.cfg.max_seq_len)
    print(f"held-out: {sum(d['windows'][:, 1:].numel() for d in data.values()):,} tokens; calibration: "
          f"{sum(w.numel() for w in calib):,} tokens", flush=True)
    methods = args.only or METHODS
    method_ks = {"dynamic": conversion_k_first(args.ks), "teal": conversion_k_first(args.ks),
                 "topk": conversion_k_first(args.ablation_ks), "random": conversion_k_first(args.ablation_ks),
                 "healed": [args.heal_k], "dense": [None]}

    heal_key = {**key, "heal_steps": args.heal_steps, "heal_lr": args.heal_lr}  # a healed point's own settings

    def point_key(method: str) -> dict:
        return heal_key if method == "healed" else key

    def measure(method: str, k: float | None, model, ffn_share: float | None = None, extra: dict | None = None):
        key = point_key(method)
        if cached(method, k, key):
            return
        print(f"  {method}{'' if k is None else f' k={k:g}'} ...", end=" ", flush=True)
        r = evaluate(model, data)
        realised = sum(x["avg_k"] for x in r["layers"]) / len(r["layers"]) if r["layers"] else None
        comp = compute(model, realised, ffn_share)
        save_point({"method": method, "k": k, "realised_k": realised, "key": key, **comp, **r, **(extra or {})})
        print(f"ppl {r['ppl']:.3f}, bpb {r['bpb']:.4f} ({r['eval_s']:.0f} s)", flush=True)

    if "dense" in methods:
        measure("dense", None, dense)
    for method, split in (("dynamic", "coactivation"), ("topk", "coactivation"), ("random", "random")):
        ks = method_ks[method]
        if method not in methods or all(cached(method, k, key) for k in ks):
            continue
        model, layers = converted(split, dense, ckpt, calib, args, key)
        for k in ks:
            if cached(method, k, key):
                continue
            if method == "topk":
                set_routing(model, router_mode="topk", top_k=int(k))
            else:
                retarget(model, calib, k)
            model.reset_routing_stats()
            measure(method, k, model, extra={"convert": layers})
    if "teal" in methods:
        for k in method_ks["teal"]:
            if cached("teal", k, key):
                continue
            model = load_model(ckpt).eval()
            thresholds = threshold_ffns(model, calib, 1 - k / EXPERTS)
            measure("teal", k, model, ffn_share=k / EXPERTS, extra={"thresholds": thresholds})

    if "healed" in methods and not cached("healed", args.heal_k, heal_key):
        moe_dir = conversion_dir("coactivation", key)
        if not (moe_dir / "config.json").is_file():
            converted("coactivation", dense, ckpt, calib, args, key)
        model, summary = healed(moe_dir, ckpt, calib, args, key)
        measure("healed", args.heal_k, model, extra={"heal": {
            "steps": args.heal_steps, "tokens": args.heal_steps * HEAL_BATCH * HEAL_SEQ, "lr": args.heal_lr,
            "wall_s": summary["heal_wall_s"], "trained": "experts and routers (FFNs)", "teacher": NAME,
            "loss": "KL(teacher || student)", "corpus": "books + alpaca01 + stdlib docs"}})

    points = [p for m in METHODS for k in method_ks[m] if (p := cached(m, k, point_key(m)))]
    for p in points:
        p.pop("key")
    out = write_result(stem, {**provenance(torch.get_num_threads()), "model": NAME, "settings": key,
                              "ks": method_ks, "points": points})
    print(f"wrote {out} ({len(points)} points)")
    plot(points, ROOT / "docs" / "results" / f"{stem}.png")


def plot(points: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, style in (("dynamic", "o-"), ("topk", "s--"), ("random", "x:"), ("teal", "d-."), ("healed", "*")):
        pts = sorted((p["flops_per_token"] / 1e6, p["ppl"]) for p in points if p["method"] == method)
        if pts:
            ax.plot(*zip(*pts), style, label=method)
    for p in points:
        if p["method"] == "dense":
            ax.axhline(p["ppl"], color="grey", lw=1, label=f"dense ({p['flops_per_token'] / 1e6:.0f} MFLOPs)")
    ax.set_xlabel("forward MFLOPs per token (whole model, 512-token context)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("SmolLM2-135M-Instruct as a 16-expert MoE: quality against active compute")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
