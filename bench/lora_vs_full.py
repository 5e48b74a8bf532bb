"""LoRA adapters against full fine-tuning, on the shared base checkpoint and domain instruction data.

For each domain (medical: MedQuAD question-answer pairs; finance: FiQA), the same data and
token budget (steps x batch of conversations) go to:

  full          every weight trains (`lightseek sft`, recipes/sft.yaml)
  lora          rank-3 adapters on attention, shared experts and dense FFNs, rank 1 on the tied
                embedding: 0.91% of the model (recipes/lora.yaml)
  lora+experts  the same plus a rank-1 adapter on every routed expert (per-expert factors)

All runs replay the base model's training text in 30% of each batch (--replay), where they
learn the base model's own next-token distribution (a KL tie, --replay-kl 1.0; full
fine-tuning keeps a frozen copy of the base for it, an adapter turns itself off), and use the
learning rates chosen on the finance domain (--lr-full 1e-3, --lr-lora 1e-2).

Reported per run: trainable parameters, optimizer state, the training process's peak memory
(peak RSS over its resident size just before training), median time per step, domain
validation perplexity (assistant tokens of held-out conversations, split by the same hash rule
that held them out of pretraining) and general validation perplexity (text the base model never
saw: two Gutenberg books, the inaugural addresses, CMRC 2018 trial passages), before and after.
Each run is its own process, so peak memory is its own.

    python bench/lora_vs_full.py [--domains medical finance] [--steps-medical 200] [--steps-finance 100]
                                 [--lr-full 1e-3] [--lr-lora 1e-2] [--replay 0.3] [--replay-kl 1.0]
                                 [--scale-preset small] [--result NAME]

After the domain runs, a scale check measures memory by kind and time per step of the three
set-ups on a randomly initialised model of a larger preset (`small`: 108M parameters).

The base checkpoint is runs/base (built with recipes/base.yaml when missing: ~30 min on 2 cores).
Prints a markdown table and writes bench/results/lora_vs_full.json, with the run's provenance
(command, revision, date, machine, versions). Only the default run writes that file: a probe
(other --base, --domains, --configs, step counts, learning rates, replay, --extra overrides,
scale check, batch or sequence length) writes lora_vs_full_<the arguments that differ>.json, for
example lora_vs_full_domains-finance_configs-full_extra-freeze-layers-norm_scale-preset-none.json
for `--domains finance --configs full --scale-preset '' --extra=--freeze=[layers,norm]`, and
--result NAME writes bench/results/NAME.json. It prints which file it wrote.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DOMAINS = {
    "medical": [SHARED / "medical_medquad_en"],
    "finance": [SHARED / "finance_fiqa_en"],
}
GENERAL = [SHARED / "en_gutenberg" / "whitman-leaves.txt", SHARED / "en_gutenberg" / "chesterton-thursday.txt",
           SHARED / "en_us_presidential_speeches" / "inaugural", SHARED / "zh_cmrc2018_wiki" / "cmrc2018_trial.json"]
STEPS = {"medical": 200, "finance": 100}  # each domain's step budget (the same for every configuration)
GENERAL_TOKENS = 160_000  # general validation budget (tokens), first tokens of each source in turn
CONFIGS = {
    "full": {"mode": "full", "overrides": []},
    "lora": {"mode": "lora", "overrides": ["--lora.rank=3", "--lora.alpha=6", "--lora.embed_rank=1",
                                           "--lora.targets=[attn,shared,dense,embed]"]},
    "lora+experts": {"mode": "lora", "overrides": ["--lora.rank=3", "--lora.alpha=6", "--lora.embed_rank=1",
                                                   "--lora.expert_rank=1",
                                                   "--lora.targets=[attn,experts,shared,dense,embed]"]},
}


def ensure_base(base: Path) -> None:
    """Build the shared base checkpoint with recipes/base.yaml unless it is there and finished."""
    from lightseek.model.checkpoint import CONFIG

    run = base.parent if base.name == "checkpoint" else base
    ckpt = run / "checkpoint"
    if (ckpt / CONFIG).exists():
        meta = json.loads((ckpt / CONFIG).read_text())
        if meta.get("step") == meta.get("run", {}).get("train", {}).get("steps"):
            return
    print(f"building the base checkpoint in {run} (recipes/base.yaml) ...", flush=True)
    cmd = [sys.executable, "-m", "lightseek", "train", "--config", str(ROOT / "recipes" / "base.yaml"),
           f"--out_dir={run}", "--quiet"] + (["--resume"] if ckpt.exists() else [])
    subprocess.run(cmd, check=True, cwd=ROOT)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def general_tokens(tokenizer, total: int):
    """The held-out general text as one token stream: the first ``total / len(GENERAL)`` tokens
    of each source in turn, documents ended by end-of-text."""
    import numpy as np

    from lightseek.data.corpus import iter_documents

    per_source = total // len(GENERAL)
    ids: list[int] = []
    for src in GENERAL:
        got: list[int] = []
        for doc in iter_documents([src], text_field="text,context_text"):
            got += tokenizer.encode(doc.text) + [tokenizer.eot_id]
            if len(got) >= per_source:
                break
        ids += got[:per_source]
    return np.asarray(ids, dtype=np.int64)


def general_batches(tokenizer, seq_len: int, batch_size: int):
    from lightseek.eval.run import token_windows

    tokens = general_tokens(tokenizer, GENERAL_TOKENS)
    return lambda: token_windows(tokens, batch_size, seq_len)


def accounted_memory(model, x, y, pad_id: int) -> dict:
    """Training memory by kind, in MB: weights, gradients and AdamW state of the trainable
    parameters, and the activations autograd saves for backward in one micro-batch (unique
    storages that are not parameters), counted with saved-tensor hooks."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, y, token_mask_BT=x != pad_id)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mb = 2**20
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / mb
    acts = sum(seen.values()) / mb
    return {"weights_mb": weights, "grads_mb": 4 * trainable / mb, "optimizer_mb": 8 * trainable / mb,
            "activations_mb": acts, "total_mb": weights + 12 * trainable / mb + acts}


def one_run(spec: dict) -> dict:
    """Child process: fine-tune one configuration and measure it."""
    import torch

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    from lightseek.adapters import finetune as ft
    from lightseek.adapters.evaluate import instruction_batches
    from lightseek.adapters.lora import use_adapters
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.perplexity import evaluate
    from lightseek.model.checkpoint import TOKENIZER, load_model, resolve_checkpoint
    from lightseek.train.metrics import read_metrics

    base = resolve_checkpoint(spec["base"])
    tok = Tokenizer.load(base / TOKENIZER)
    seq_len, bs = spec["seq_len"], spec["batch_size"]
    domain_val, n_val = instruction_batches(spec["files"], tok, seq_len, bs, 0.1, 0, "val")
    general = general_batches(tok, seq_len, bs)
    result = {"config": spec["config"], "domain": spec["domain"], "val_conversations": n_val}
    if spec.get("measure_base"):
        model = load_model(base)
        result["base_domain_ppl"] = evaluate(model, domain_val(), pad_id=tok.pad_id)["ppl"]
        result["base_general_ppl"] = evaluate(model, general())["ppl"]
        del model

    cfg = ft.load_finetune_config(None, [
        f"--base={base}", f"--name={spec['domain']}", f"--out_dir={spec['out']}",
        f"--data.files={json.dumps([str(f) for f in spec['files']])}", f"--data.domain={spec['domain']}",
        f"--train.steps={spec['steps']}", f"--train.batch_size={bs}", f"--train.seq_len={seq_len}",
        f"--train.eval_every={spec['steps']}", f"--train.ckpt_every={spec['steps']}", "--train.log_every=1",
        "--train.warmup_steps=10", "--train.plots=false", "--train.eval_batches=0", *spec["overrides"]])
    rss_before = rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    summary = ft.finetune(cfg, spec["mode"], show_progress=False)
    wall = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = [r for r in read_metrics(Path(spec["out"]) / "metrics.jsonl") if r["kind"] == "train"]
    step_s = [r["step_s"] for r in steps[5:]]  # after the first few (allocator warm-up)

    # evaluate the result the way a user would load it
    if spec["mode"] == "lora":
        from lightseek.adapters.store import base_fingerprint, load_adapter

        model = load_model(base)
        info = load_adapter(model, spec["out"], base_fingerprint(base)["sha256"])
        ctx = use_adapters(model, info.name)
    else:
        import contextlib

        model = load_model(Path(spec["out"]) / "checkpoint")
        ctx = contextlib.nullcontext()
    with ctx:
        domain_after = evaluate(model, domain_val(), pad_id=tok.pad_id)
        general_after = evaluate(model, general())
        # memory by kind for one micro-batch of the run's own shape (full-width rows)
        if spec["mode"] == "lora":
            for n, p in model.named_parameters():
                p.requires_grad = ".lora_" in n
        else:
            for p in model.parameters():
                p.requires_grad = True
        probe = torch.randint(0, model.cfg.vocab_size, (bs, seq_len), generator=torch.Generator().manual_seed(0))
        memory = accounted_memory(model, probe, probe, tok.pad_id)
    trainable = summary["trainable_parameters"]
    result.update({
        "trainable_parameters": trainable, "model_parameters": summary["model_parameters"],
        "trainable_pct": 100 * trainable / summary["model_parameters"],
        # AdamW keeps two fp32 moments per trainable parameter
        "optimizer_state_mb": 2 * 4 * trainable / 2**20,
        "train_state_mb": (4 * summary["model_parameters"] + 3 * 4 * trainable) / 2**20,
        "rss_before_train_mb": rss_before,
        "peak_rss_mb": max(peak, peak_before),
        "peak_over_start_mb": max(peak, peak_before) - rss_before,
        "accounted_memory": memory,
        "step_s_median": statistics.median(step_s), "wall_s": wall, "steps": len(steps),
        "tokens_learned": summary["tokens_seen"],
        "domain_ppl": domain_after["ppl"], "general_ppl": general_after["ppl"],
        "avg_k": domain_after.get("avg_k"), "max_vio": domain_after.get("max_vio"),
    })
    return result


def scale_check(preset_name: str, batch: int, seq_len: int, steps: int = 3) -> list[dict]:
    """Memory by kind and time per step of full fine-tuning and the two adapter set-ups on a
    randomly initialised model of a larger preset (the costs do not depend on the weights)."""
    import torch

    from lightseek.adapters.lora import LoraConfig, apply_lora
    from lightseek.model.config import preset
    from lightseek.model.transformer import Transformer
    from lightseek.train.config import TrainConfig
    from lightseek.train.optim import build_optimizer

    lora_cfgs = {"lora": LoraConfig(rank=4, alpha=8, targets=["attn", "shared", "dense"]),
                 "lora+experts": LoraConfig(rank=4, alpha=8, expert_rank=1, targets=["attn", "experts", "shared", "dense"])}
    rows = []
    for name in ("full", *lora_cfgs):
        torch.manual_seed(0)
        model = Transformer(preset(preset_name))
        total = sum(p.numel() for p in model.parameters())
        if name != "full":
            apply_lora(model, lora_cfgs[name], "a")
        x = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        from lightseek.adapters.lora import use_adapters

        with use_adapters(model, None if name == "full" else "a"):
            memory = accounted_memory(model, x, x, -1)
            opt = build_optimizer(model, TrainConfig(lr=1e-4))
            times = []
            for _ in range(steps + 1):
                t0 = time.perf_counter()
                model(x, x).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"preset": preset_name, "config": name, "model_parameters": total, "trainable_parameters": trainable,
                     "trainable_pct": 100 * trainable / total, "accounted_memory": memory,
                     "step_s_median": statistics.median(times[1:]), "batch": batch, "seq_len": seq_len})
        print(f"[{preset_name} / {name}] trainable {trainable:,} ({100 * trainable / total:.2f}%), memory "
              f"{memory['total_mb']:.0f} MB (weights {memory['weights_mb']:.0f}, grads {memory['grads_mb']:.0f}, "
              f"optimizer {memory['optimizer_mb']:.0f}, activations {memory['activations_mb']:.0f}), "
              f"{statistics.median(times[1:]):.2f} s/step", flush=True)
        del model, opt
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--steps-medical", type=int, default=STEPS["medical"])
    ap.add_argument("--steps-finance", type=int, default=STEPS["finance"])
    ap.add_argument("--lr-full", type=float, default=1e-3, help="peak learning rate of full fine-tuning")
    ap.add_argument("--lr-lora", type=float, default=1e-2, help="peak learning rate of the adapters")
    ap.add_argument("--replay", type=float, default=0.3, help="share of each batch replaying the base's training text")
    ap.add_argument("--replay-kl", type=float, default=1.0,
                    help="weight of the KL tie to the base on replayed rows (0 = next-token loss only)")
    ap.add_argument("--extra", action="append", default=[],
                    help="an override for every run, repeatable (e.g. --extra=--data.replay_fraction=0.3)")
    ap.add_argument("--scale-preset", default="small", help="larger preset for the memory/time check ('' = skip)")
    ap.add_argument("--scale-batch", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_lora"))
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: lora_vs_full for the default "
                                     "settings, else named after the arguments that differ)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: a JSON run spec
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(json.loads(args.one))), flush=True)
        return
    missing = [str(p) for d in args.domains for p in DOMAINS[d]] + [str(p) for p in GENERAL]
    missing = [p for p in missing if not Path(p).exists()]
    if missing:
        sys.exit(f"skipped: the shared data is not here ({', '.join(missing)})")
    measured = ("base", "domains", "configs", "steps_medical", "steps_finance", "lr_full", "lr_lora", "replay",
                "replay_kl", "extra", "scale_preset", "scale_batch", "batch_size", "seq_len")
    stem = result_name("lora_vs_full", args, {k: ap.get_default(k) for k in measured})
    ensure_base(Path(args.base))

    import shutil

    results = []
    for domain in args.domains:
        for i, name in enumerate(args.configs):
            out = Path(args.out) / domain / name
            shutil.rmtree(out, ignore_errors=True)
            spec = {"base": args.base, "domain": domain, "config": name, "files": [str(p) for p in DOMAINS[domain]],
                    "steps": getattr(args, f"steps_{domain}"), "batch_size": args.batch_size, "seq_len": args.seq_len,
                    "out": str(out), "measure_base": i == 0, "mode": CONFIGS[name]["mode"],
                    "overrides": [*CONFIGS[name]["overrides"], f"--data.replay_fraction={args.replay}",
                                  f"--data.replay_kl={args.replay_kl}", *args.extra,
                                  f"--train.lr={args.lr_full if name == 'full' else args.lr_lora}"]}
            print(f"[{domain} / {name}] {spec['steps']} steps ...", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, check=False,
                                  text=True, cwd=ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"run {domain}/{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            r = json.loads(line[0][7:])
            if i == 0:
                base_ppl = (r["base_domain_ppl"], r["base_general_ppl"])
            r["base_domain_ppl"], r["base_general_ppl"] = base_ppl
            results.append(r)
            print(f"    domain ppl {r['base_domain_ppl']:.2f} -> {r['domain_ppl']:.2f}, general ppl "
                  f"{r['base_general_ppl']:.2f} -> {r['general_ppl']:.2f}, {r['step_s_median']:.3f} s/step", flush=True)

    summarize(results)
    scale = scale_check(args.scale_preset, args.scale_batch, args.seq_len) if args.scale_preset else []
    out = write_result(stem, {**provenance(_threads()), "results": results, "scale": scale, "args": vars(args),
                              "torch_threads": _threads()})
    print(f"\nwritten {out}")


def _state(r: dict) -> float:
    m = r["accounted_memory"]
    return m["weights_mb"] + m["grads_mb"] + m["optimizer_mb"]


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def summarize(results: list[dict]) -> None:
    full = {r["domain"]: r for r in results if r["config"] == "full"}
    print("\n| domain | run | trainable | % of model | optimizer state | training memory (params+grads+optimizer / "
          "activations) | peak RSS over start | s/step | domain ppl before -> after | gain recovered "
          "| general ppl before -> after | general change |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
    for r in results:
        f = full.get(r["domain"])
        gain = r["base_domain_ppl"] - r["domain_ppl"]
        rec = (gain / (f["base_domain_ppl"] - f["domain_ppl"])) if f and f is not r else None
        r["gain_recovered"] = rec
        r["general_change_pct"] = 100 * (r["general_ppl"] / r["base_general_ppl"] - 1)
        if f and f is not r:
            r["cost_vs_full"] = {
                "trainable": r["trainable_parameters"] / f["trainable_parameters"],
                "param_state": _state(r) / _state(f),
                "accounted_total": r["accounted_memory"]["total_mb"] / f["accounted_memory"]["total_mb"],
                "optimizer_state": r["optimizer_state_mb"] / f["optimizer_state_mb"],
                "peak_over_start": r["peak_over_start_mb"] / f["peak_over_start_mb"],
                "step_s": r["step_s_median"] / f["step_s_median"]}
        m = r["accounted_memory"]
        state = m["weights_mb"] + m["grads_mb"] + m["optimizer_mb"]
        print(f"| {r['domain']} | {r['config']} | {r['trainable_parameters']:,} | {r['trainable_pct']:.2f}% | "
              f"{r['optimizer_state_mb']:.2f} MB | {state:.1f} / {m['activations_mb']:.0f} MB | "
              f"{r['peak_over_start_mb']:.0f} MB | {r['step_s_median']:.3f} | "
              f"{r['base_domain_ppl']:.2f} -> {r['domain_ppl']:.2f} | "
              f"{'-' if rec is None else f'{100 * rec:.0f}%'} | {r['base_general_ppl']:.2f} -> {r['general_ppl']:.2f} | "
              f"{r['general_change_pct']:+.2f}% |")
    for r in results:
        if "cost_vs_full" in r:
            c = r["cost_vs_full"]
            print(f"{r['domain']}/{r['config']} vs full: trainable {100 * c['trainable']:.2f}%, optimizer state "
                  f"{100 * c['optimizer_state']:.2f}%, params+grads+optimizer {100 * c['param_state']:.0f}%, "
                  f"accounted training memory {100 * c['accounted_total']:.0f}%, "
                  f"peak RSS over start {100 * c['peak_over_start']:.0f}%, "
                  f"time per step {100 * c['step_s']:.0f}%")


if __name__ == "__main__":
    main()
