"""Probe for the adapter benchmark: fine-tune only the embedding rows (and, tied to them, the
output head's rows) of the N tokens most frequent among a domain's training targets.

At N = 256 this trains 32,768 parameters, 1.0% of the shared base model: the adapters' budget
spent where full fine-tuning gains most at this model size (its embedding and head). Everything
else is bench/lora_vs_full.py's full fine-tuning run (same data, steps, replay and KL tie), with
every other weight frozen and the other rows' gradients zeroed (AdamW without weight decay, as
fine-tuning runs it, leaves a row with zero gradients unchanged).

    python bench/lora_probe_rows.py [--tokens 256] [--lr 5e-3] [--domain finance] [--result NAME]

Prints the domain and general perplexity after training, against the base model's, and writes
them with the run's measurements and provenance (command, revision, date, machine, versions) to
bench/results/lora_probe_rows.json; with other --base, --domain, --tokens, --lr or --steps than
the defaults, to lora_probe_rows_<the arguments that differ>.json (`--lr 1e-3`:
lora_probe_rows_lr-0.001.json), and with --result NAME to bench/results/NAME.json. It never
writes bench/lora_vs_full.py's file.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lora_vs_full as bench  # noqa: E402
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--domain", default="finance", choices=list(bench.DOMAINS))
    ap.add_argument("--tokens", type=int, default=256, help="how many of the most frequent target tokens train")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--steps", type=int, default=0, help="0 = the benchmark's steps for the domain")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_lora_rows"))
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: lora_probe_rows, plus the "
                                     "arguments that differ from the defaults)")
    args = ap.parse_args()
    steps = {"steps": args.steps or bench.STEPS[args.domain]}  # 0 and the domain's own count are one run
    defaults = {k: ap.get_default(k) for k in ("base", "domain", "tokens", "lr")}
    stem = result_name("lora_probe_rows", {**vars(args), **steps}, {**defaults, "steps": bench.STEPS[args.domain]})
    files = [str(p) for p in bench.DOMAINS[args.domain]]
    if not all(Path(f).exists() for f in files):
        sys.exit(f"skipped: the shared data is not here ({', '.join(files)})")
    bench.ensure_base(Path(args.base))

    import torch

    from lightseek.adapters import finetune as ft
    from lightseek.adapters.evaluate import instruction_batches
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import TOKENIZER, resolve_checkpoint

    tok = Tokenizer.load(resolve_checkpoint(args.base) / TOKENIZER)
    train, _ = instruction_batches(files, tok, 256, 16, 0.1, 0, "train")  # the split fine-tuning uses
    counts = collections.Counter()
    for _, targets in train():
        counts.update(targets[targets != -100].tolist())
    top = counts.most_common(args.tokens)
    top_share = sum(c for _, c in top) / sum(counts.values())
    print(f"the {args.tokens} most frequent tokens are {top_share:.1%} "
          f"of {sum(counts.values()):,} training targets", flush=True)
    keep = torch.zeros(tok.vocab_size, 1)
    keep[[t for t, _ in top]] = 1.0

    load_model, loaded = ft.load_model, []

    def load_with_row_mask(path, *a, **kw):
        model = load_model(path, *a, **kw)
        if not loaded:  # the model being trained is loaded first; the KL tie's frozen base after it
            model.embed.weight.register_hook(lambda g: g * keep.to(g))
        loaded.append(model)
        return model

    ft.load_model = load_with_row_mask
    out = Path(args.out) / args.domain
    shutil.rmtree(out, ignore_errors=True)
    spec = {"base": args.base, "domain": args.domain, "config": "full", "files": files, "mode": "full",
            "steps": args.steps or bench.STEPS[args.domain], "batch_size": 16, "seq_len": 256,
            "out": str(out), "measure_base": True,
            "overrides": ["--data.replay_fraction=0.3", "--data.replay_kl=1.0", "--freeze=[layers,norm]",
                          f"--train.lr={args.lr}"]}
    r = bench.one_run(spec)
    trained = args.tokens * r["trainable_parameters"] // tok.vocab_size  # the optimizer holds the whole V x D matrix
    print(f"{args.domain}, {args.tokens} rows ({trained:,} parameters, {100 * trained / r['model_parameters']:.2f}% "
          f"of the model), lr {args.lr:g}: domain ppl {r['base_domain_ppl']:.2f} -> {r['domain_ppl']:.2f}, "
          f"general ppl {r['base_general_ppl']:.2f} -> {r['general_ppl']:.2f} "
          f"({r['general_ppl'] / r['base_general_ppl'] - 1:+.1%})")
    out = write_result(stem, {**provenance(torch.get_num_threads()), "domain": args.domain, "tokens": args.tokens,
                              "lr": args.lr, "trained_parameters": trained,
                              "trained_pct": 100 * trained / r["model_parameters"],
                              "top_tokens_share_of_targets": top_share, "training_targets": sum(counts.values()),
                              "run": r, "args": vars(args)})
    print(f"written {out}")


if __name__ == "__main__":
    main()
