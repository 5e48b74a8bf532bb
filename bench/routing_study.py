"""Routing study: what dynamic routing buys, at an equal token budget for every variant.

Variants (the `tiny` shape: dim 128, 4 layers of which 3 MoE, 16 routed experts of width 96
plus 1 shared expert):
  dense (equal active)      dense FFN with the active parameters of the dynamic MoE at k=2.5
  dense (equal total)       dense FFN with all the parameters of the MoE
  topk k=2, topk k=3        fixed k, bias balancing
  dynamic k~2.5             mass threshold with the k controller, bias balancing
  dynamic, no balancing     the same without the balance bias
  topk k=2 + aux loss       fixed k, sequence-level auxiliary loss instead of the bias

Corpora from ../shared/data: English `en_gutenberg`; Chinese `zh_cmrc2018_wiki` plus
`zh_drcd_wiki_traditional`, both cut into ~4 KB documents so the 5% validation split samples
every source. Same settings on both corpora.

    python bench/routing_study.py                       # both corpora, ~30 min on 2 cores
    python bench/routing_study.py --corpora en --steps 100   # a quick look

Writes runs/routing_study/ (runs), bench/results/routing_study.json with the run's provenance
(command, revision, date, machine, versions), and the plots docs/results/routing_*_<corpus>.png
that docs/results/routing.md shows. A run with other --corpora, --steps, --batch-size, --seq-len,
--lr, --seed or --vocab-size than the defaults (`--corpora en --steps 100`) writes
routing_study_<the arguments that differ>.json (routing_study_corpora-en_steps-100.json) and plots
with the same suffix (routing_loss_vs_flops_en_corpora-en_steps-100.png), so that it never
overwrites the main result. --variants re-runs only those variants and replaces their
rows, in the corpora it runs, in the file the same settings (--corpora aside) name, when that
exists (the re-run's command, revision and date are added to its "reruns"): `--corpora en
--variants "dense (equal active)"` updates routing_study.json.

--sweep-bias-rate RATE ... writes bench/results/routing_bias_sweep_<first corpus>.json; with
other rates than the main sweep's (0.01 0.05 0.2) or other settings than the defaults above,
routing_bias_sweep_<corpus>_<those>.json. --result NAME writes bench/results/NAME.json (and its
plots with the suffix _NAME).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from lightseek.data.corpus import Document, iter_documents
from lightseek.data.prepare import prepare_dataset
from lightseek.data.shards import TokenShards
from lightseek.eval.perplexity import evaluate, evaluate_training_windows
from lightseek.model.checkpoint import load_model
from lightseek.model.config import ModelConfig, preset
from lightseek.model.transformer import dense_equivalent
from lightseek.train.config import load_run_config
from lightseek.train.metrics import read_metrics
from lightseek.train.pretrain import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import RESULTS, ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DOCS = ROOT / "docs" / "results"


def chunked(source: str, text: str, size: int = 4000) -> list[Document]:
    """Split text at paragraph boundaries into documents of about ``size`` characters."""
    docs, buf = [], []
    length = 0
    for para in text.split("\n\n"):
        buf.append(para)
        length += len(para)
        if length >= size:
            docs.append(Document(source, len(docs), "\n\n".join(buf)))
            buf, length = [], 0
    if buf and "".join(buf).strip():
        docs.append(Document(source, len(docs), "\n\n".join(buf)))
    return docs


def english() -> list[Document]:
    folder = SHARED / "en_gutenberg"
    return [d for doc in iter_documents([folder]) if doc.source.endswith(".txt")
            for d in chunked(doc.source, doc.text)]


def chinese() -> list[Document]:
    docs = []
    for f in sorted((SHARED / "zh_cmrc2018_wiki").glob("*.json")):
        text = "\n\n".join(r["context_text"] for r in json.loads(f.read_text(encoding="utf-8")))
        docs += chunked(str(f), text, size=1500)  # ~4 KB of UTF-8
    for f in sorted((SHARED / "zh_drcd_wiki_traditional").glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))["data"]
        text = "\n\n".join(p["context"] for art in data for p in art["paragraphs"])
        docs += chunked(str(f), text, size=1500)
    return docs


SWEEP_RATES = [0.01, 0.05, 0.2]  # the main balance-bias sweep's rates (--sweep-bias-rate 0.01 0.05 0.2)
CORPORA = {"en": ("English: en_gutenberg", english, "en_gutenberg"),
           "zh": ("Chinese: zh_cmrc2018_wiki + zh_drcd_wiki_traditional", chinese, "zh_cmrc2018_wiki")}


def variants(base: ModelConfig) -> dict[str, ModelConfig]:
    # Dense with the MoE's total parameters: one FFN width holding every expert's weights.
    n_moe = base.n_layers - base.n_dense_layers
    moe_ffn = n_moe * (3 * base.dim * base.moe_inter_dim * (base.n_experts + base.n_shared_experts)
                       + base.dim * base.n_experts)
    total_width = round((moe_ffn + base.n_dense_layers * 3 * base.dim * base.dense_inter_dim)
                        / (3 * base.dim * base.n_layers))
    return {
        "dense (equal active)": dense_equivalent(base, k=base.target_k),
        "dense (equal total)": base.replace(router_mode="dense", dense_inter_dim=total_width),
        "topk k=2": base.replace(router_mode="topk", top_k=2),
        "topk k=3": base.replace(router_mode="topk", top_k=3),
        "dynamic k~2.5": base,
        "dynamic, no balancing": base.replace(balance_bias=False),
        "topk k=2 + aux loss": base.replace(router_mode="topk", top_k=2, balance_bias=False, aux_loss_coef=0.01),
    }


def run_variant(name: str, model_cfg: ModelConfig, data_dir: Path, out: Path, args) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cfg = load_run_config(None, [
        f"--data.prepared={data_dir}", f"--out_dir={out}", f"--train.steps={args.steps}",
        f"--train.batch_size={args.batch_size}", f"--train.seq_len={args.seq_len}", f"--train.lr={args.lr}",
        f"--train.warmup_steps={max(1, args.steps // 10)}", f"--train.eval_every={max(1, args.steps // 4)}",
        "--train.eval_batches=10", f"--train.ckpt_every={args.steps}", "--train.plots=false",
        f"--train.balance_settle_steps={args.settle_steps}",
        f"--train.seed={args.seed}"])
    cfg.model = model_cfg
    t0 = time.time()
    summary = pretrain(cfg, show_progress=False)
    wall = time.time() - t0
    model = load_model(out / "checkpoint")  # final evaluation on the whole validation split
    val = evaluate(model, TokenShards(data_dir, "val").iter_sequential(args.batch_size, args.seq_len))
    # the balance on as many tokens of training text (windows training never drew): what the bias balances
    on_train = evaluate_training_windows(model, TokenShards(data_dir, "train"), args.batch_size, args.seq_len,
                                         max(1, val["tokens"] // (args.batch_size * args.seq_len)), args.seed + 1)
    metrics = read_metrics(out / "metrics.jsonl")
    train = [m for m in metrics if m["kind"] == "train"]
    k = val.get("avg_k", 0.0)
    flops = model.flops_per_token(args.seq_len, k=k if model_cfg.router_mode == "dynamic" else None)
    tokens_per_step = args.batch_size * args.seq_len
    curve = [(m["step"] * tokens_per_step * 3 * flops["active"], m["val_loss"]) for m in metrics
             if m["kind"] == "eval"]
    params = model.num_params()
    return {
        "variant": name, "router_mode": model_cfg.router_mode, "val_loss": val["loss"], "val_ppl": val["ppl"],
        "val_tokens": val["tokens"], "active_mflops": flops["active"] / 1e6, "total_params": params["total"],
        "active_params": params["active"], "avg_k": k, "max_vio": val.get("max_vio"),
        "max_vio_worst_layer": val.get("max_vio_worst_layer"), "dead_experts": val.get("dead_experts"),
        "max_vio_train": on_train.get("max_vio"), "max_vio_train_worst_layer": on_train.get("max_vio_worst_layer"),
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in train[len(train) // 10:]),
        "wall_s": wall, "train_wall_s": summary["wall_s"], "curve": curve,
        "load_share": [[v / max(1, sum(r["tokens_per_expert"])) for v in r["tokens_per_expert"]]
                       for r in val.get("routing", [])],
    }


def table(rows: list[dict]) -> str:
    head = ("| variant | val loss | val ppl | active MFLOPs/token | avg k | MaxVio, held-out (mean / worst layer) "
            "| MaxVio, training text (mean / worst layer) | dead experts | train tok/s | wall s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        moe = r["router_mode"] != "dense"
        lines.append(
            f"| {r['variant']} | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | {r['active_mflops']:.2f} | "
            + (f"{r['avg_k']:.2f} | {r['max_vio']:.3f} / {r['max_vio_worst_layer']:.3f} | "
               f"{r['max_vio_train']:.3f} / {r['max_vio_train_worst_layer']:.3f} | {r['dead_experts']} | "
               if moe else "- | - | - | - | ")
            + f"{r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def plots(rows: list[dict], corpus: str, suffix: str = "") -> list[str]:
    """Validation loss against training FLOPs, and sorted expert load, one colour per variant;
    ``suffix`` ends the file names (a probe's plots do not replace the main run's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(parents=True, exist_ok=True)
    colour = {name: f"C{i}" for i, name in enumerate(variants(preset("tiny")))}

    def save(fig, ax, xlabel: str, ylabel: str, title: str, name: str) -> str:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"routing study ({corpus}): {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(DOCS / name, dpi=110)
        plt.close(fig)
        return name

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="o", ms=3, label=r["variant"], color=colour.get(r["variant"]),
                ls="--" if r["router_mode"] == "dense" else "-")
    ax.set_xscale("log")
    loss_png = save(fig, ax, "training FLOPs (3 x active forward FLOPs x tokens)", "validation loss",
                    "validation loss against training compute", f"routing_loss_vs_flops_{corpus}{suffix}.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["load_share"]:
            n = len(r["load_share"][0])
            mean = [sum(layer[e] for layer in r["load_share"]) / len(r["load_share"]) for e in range(n)]
            ax.plot(range(n), sorted(mean, reverse=True), "o-", ms=3, label=r["variant"],
                    color=colour.get(r["variant"]))
            ax.axhline(1 / n, color="gray", lw=0.8)
    load_png = save(fig, ax, "experts, most loaded first", "share of routed token slots (mean over layers)",
                    "expert load on validation text (gray: equal)", f"routing_expert_load_{corpus}{suffix}.png")
    return [loss_png, load_png]


def corpus_data(corpus: str, args) -> Path:
    """The prepared folder of a corpus (built on first use)."""
    _, build, _ = CORPORA[corpus]
    data_dir = Path(args.out) / corpus / "data"
    if not (data_dir / "manifest.json").exists():
        docs = build()
        prepare_dataset(lambda: iter(docs), data_dir, vocab_size=args.vocab_size, val_fraction=0.05, seed=args.seed)
    return data_dir


def sweep_bias_rate(args, base: ModelConfig, defaults: dict) -> None:
    """Balance/quality trade-off of the bias step: the dynamic variant at several rates."""
    corpus = args.corpora[0]
    stem = result_name(f"routing_bias_sweep_{corpus}", args, {"sweep_bias_rate": SWEEP_RATES, **defaults})
    data_dir = corpus_data(corpus, args)
    vocab = json.loads((data_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    rows = []
    for rate in args.sweep_bias_rate:
        name = f"dynamic, bias rate {rate:g}"
        cfg = base.replace(vocab_size=vocab, bias_update_rate=rate)
        rows.append(run_variant(name, cfg, data_dir, Path(args.out) / corpus / f"bias_rate_{rate:g}", args))
    print(f"\n### {CORPORA[corpus][0]}: balance-bias rate sweep\n\n{table(rows)}\n")
    out = write_result(stem, {**provenance(torch.get_num_threads()), "args": vars(args), "rows": rows})
    print(f"written {out}")


def merge(old: dict, new: dict, suffix: str = "") -> dict:
    """Rows of ``new`` replace the rows of the same variant in ``old``; tables and plots are
    redrawn from the merged rows. ``old`` keeps its provenance (the run that made the file); the
    re-run's command, revision and date are added to its "reruns"."""
    for corpus, part in new["corpora"].items():
        if corpus not in old["corpora"]:
            old["corpora"][corpus] = part
            continue
        fresh = {r["variant"]: r for r in part["rows"]}
        rows = [fresh.pop(r["variant"], r) for r in old["corpora"][corpus]["rows"]] + list(fresh.values())
        old["corpora"][corpus]["rows"] = rows
        old["corpora"][corpus]["plots"] = plots(rows, corpus, suffix)
        print(f"\n### {old['corpora'][corpus]['title']} (merged)\n\n{table(rows)}\n")
    old.setdefault("reruns", []).append({"variants": new["args"]["variants"], "wall_s": new["wall_s"],
                                         **{k: new[k] for k in ("command", "git_revision", "date")}})
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", nargs="+", default=["en", "zh"], choices=list(CORPORA))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--settle-steps", type=int, default=100,
                    help="train.balance_settle_steps: forward passes after training that settle the balance bias")
    ap.add_argument("--out", default=str(ROOT / "runs" / "routing_study"))
    ap.add_argument("--variants", nargs="*", help="run only these variants (names as in the table)")
    ap.add_argument("--sweep-bias-rate", nargs="*", type=float, metavar="RATE",
                    help="instead of the study: the dynamic variant at each balance-bias rate, first corpus only")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: named after the arguments that "
                                     "differ from the defaults)")
    args = ap.parse_args()
    base = preset("tiny")
    defaults = {k: ap.get_default(k) for k in ("steps", "batch_size", "seq_len", "lr", "seed", "vocab_size",
                                                "settle_steps")}
    if args.sweep_bias_rate:
        return sweep_bias_rate(args, base, defaults)
    # a --variants re-run replaces rows corpus by corpus, so it names the file without --corpora
    corpora = {} if args.variants else {"corpora": ap.get_default("corpora")}
    stem = result_name("routing_study", args, {**corpora, **defaults})
    suffix = "" if stem == "routing_study" else "_" + stem.removeprefix("routing_study_")  # the plots' names
    report = {**provenance(torch.get_num_threads()), "args": vars(args), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "corpora": {}}
    t_start = time.time()
    for corpus in args.corpora:
        title, _, probe = CORPORA[corpus]
        if not (SHARED / probe).exists():
            print(f"skipping {corpus}: {SHARED / probe} is not here", file=sys.stderr)
            continue
        data_dir = corpus_data(corpus, args)
        manifest = json.loads((data_dir / "manifest.json").read_text())
        rows = []
        for name, model_cfg in variants(base).items():
            if args.variants and name not in args.variants:
                continue
            model_cfg = model_cfg.replace(vocab_size=manifest["tokenizer"]["vocab_size"])
            row = run_variant(name, model_cfg, data_dir, Path(args.out) / corpus / name.replace(" ", "_"), args)
            rows.append(row)
            print(f"[{corpus}] {name}: val loss {row['val_loss']:.4f}, k {row['avg_k']:.2f}, "
                  f"MaxVio {row['max_vio'] or 0:.3f}, {row['wall_s']:.0f} s", flush=True)
        report["corpora"][corpus] = {
            "title": title, "train_tokens": manifest["splits"]["train"]["tokens"],
            "val_tokens": manifest["splits"]["val"]["tokens"], "rows": rows, "plots": plots(rows, corpus, suffix)}
        print(f"\n### {title}\n\n{table(rows)}\n", flush=True)
    report["wall_s"] = time.time() - t_start
    path = RESULTS / f"{stem}.json"
    if args.variants and path.exists():  # a partial re-run replaces those rows of the last full run
        report = merge(json.loads(path.read_text()), report, suffix)
    out = write_result(stem, report)
    print(f"written {out}")
    print(f"total wall time {report['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
