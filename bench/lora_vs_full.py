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

With --real the base is the fetched instruct model (SmolLM2-135M-Instruct, `lightseek fetch
smollm2-135m-instruct`) and the runs are full fine-tuning against LoRA of rank 8, 16 and 64 on
its attention and feed-forward projections (alpha = 2 x rank), medical domain, 30 steps of 8
conversations (one epoch of the first 240 training conversations; about 20 s a step on 2 cores),
peak learning rates 5e-5 (full) and 5e-4 (LoRA), no replay, gradient checkpointing; scored on 96
held-out conversations, 32,000 tokens of the general text, and the domain's multiple-choice task
of bench/real_model_tasks.py (its first 200 items, less those whose question the runs trained on).
It also reports each run's stored size (adapter folder against fine-tuned checkpoint) and plots
the gain against the cost in docs/results/lora_vs_full_real.png; the result is
bench/results/lora_vs_full_real.json.

    python bench/lora_vs_full.py --real [--configs full lora-r8 ...] [--steps-medical 40] ...

The MoE form: with --real --base CONVERTED (SmolLM2 after `lightseek moefy`) and --configs
moe-attn moe-experts moe-both, the adapters go on attention (rank 16), on the routed experts
(rank 2 per expert, 16 experts per layer) or on both, and each run also reports the domain's
routing before and after: tokens per expert per layer on the held-out conversations, the total
variation distance between the two load shares, and the overlap of each layer's four most used
experts (`routing_shift`).

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
import itertools
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
TASKS = {"medical": "medquad", "finance": "fiqa"}  # each domain's multiple-choice task (bench/real_model_tasks.py)
CONFIGS = {
    "full": {"mode": "full", "overrides": []},
    "lora": {"mode": "lora", "overrides": ["--lora.rank=3", "--lora.alpha=6", "--lora.embed_rank=1",
                                           "--lora.targets=[attn,shared,dense,embed]"]},
    "lora+experts": {"mode": "lora", "overrides": ["--lora.rank=3", "--lora.alpha=6", "--lora.embed_rank=1",
                                                   "--lora.expert_rank=1",
                                                   "--lora.targets=[attn,experts,shared,dense,embed]"]},
    # a pretrained dense base (--real): attention and feed-forward projections, alpha = 2 x rank
    **{f"lora-r{r}": {"mode": "lora", "overrides": [f"--lora.rank={r}", f"--lora.alpha={2 * r}",
                                                   "--lora.targets=[attn,dense]"]} for r in (8, 16, 64)},
    # the same adapter trained over the frozen base held in bf16 (`lora train --frozen_dtype bf16`)
    "lora-r8-bf16": {"mode": "lora", "overrides": ["--lora.rank=8", "--lora.alpha=16", "--lora.targets=[attn,dense]",
                                                   "--frozen_dtype=bf16"]},
    # the MoE form of the pretrained base (--real --base CONVERTED): attention alone, the routed experts
    # alone (rank 2 per expert: 16 experts per layer), or both
    "moe-attn": {"mode": "lora", "overrides": ["--lora.rank=16", "--lora.alpha=32", "--lora.targets=[attn]"]},
    "moe-experts": {"mode": "lora", "overrides": ["--lora.rank=16", "--lora.alpha=32", "--lora.expert_rank=2",
                                                  "--lora.targets=[experts]"]},
    "moe-both": {"mode": "lora", "overrides": ["--lora.rank=16", "--lora.alpha=32", "--lora.expert_rank=2",
                                               "--lora.targets=[attn,experts]"]},
}
# The default run is on the project's own small base; --real runs on the fetched instruct model
# with these settings instead (each can still be given): one epoch of 240 conversations, so the
# multiple-choice items whose question was trained on are known and left out.
DEFAULTS = {"base": str(ROOT / "runs" / "base"), "domains": list(DOMAINS), "configs": ["full", "lora", "lora+experts"],
            "steps_medical": STEPS["medical"], "steps_finance": STEPS["finance"], "lr_full": 1e-3, "lr_lora": 1e-2,
            "replay": 0.3, "replay_kl": 1.0, "extra": [], "scale_preset": "small", "scale_batch": 2,
            "batch_size": 16, "seq_len": 256, "val_conversations": 0, "general_tokens": GENERAL_TOKENS, "tasks": 0}
REAL = {**DEFAULTS, "base": "smollm2-135m-instruct", "domains": ["medical"],
        "configs": ["full", "lora-r8", "lora-r16", "lora-r64"], "steps_medical": 30, "steps_finance": 30,
        "lr_full": 5e-5, "lr_lora": 5e-4, "replay": 0.0, "replay_kl": 0.0, "scale_preset": "", "batch_size": 8,
        "val_conversations": 96, "general_tokens": 32_000, "tasks": 200}


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


def general_batches(tokenizer, seq_len: int, batch_size: int, total: int = GENERAL_TOKENS):
    from lightseek.eval.run import token_windows

    tokens = general_tokens(tokenizer, total)
    return lambda: token_windows(tokens, batch_size, seq_len)


def accounted_memory(model, x, y, pad_id: int, keep_logits: bool = False) -> dict:
    """Training memory by kind, in MB: weights, gradients and AdamW state of the trainable
    parameters, and the activations autograd saves for backward in one micro-batch (unique
    storages that are not parameters), counted with saved-tensor hooks. ``keep_logits``: the
    forward keeps the whole logits for the loss, as training did before it asked for the loss
    alone (bench/results/lora_vs_full*.json from before git revision 47f3d8d were measured so)."""
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
        out = model(x, y, token_mask_BT=x != pad_id, keep_logits=keep_logits)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mb = 2**20
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / mb
    acts = sum(seen.values()) / mb
    return {"weights_mb": weights, "grads_mb": 4 * trainable / mb, "optimizer_mb": 8 * trainable / mb,
            "activations_mb": acts, "total_mb": weights + 12 * trainable / mb + acts}


def task_items(spec: dict) -> list[dict]:
    """The domain's multiple-choice items (of the first ``spec["tasks"]``) whose question is not one
    of the conversations the run trains on (the first ``max_examples`` of the training split)."""
    if not spec.get("tasks"):
        return []
    from lightseek.adapters.finetune import split_examples
    from lightseek.data.instruct import load_instructions
    from lightseek.eval.tasks import load_tasks

    path = ROOT / "runs" / "tasks" / f"{TASKS[spec['domain']]}.jsonl"
    if not path.is_file() or len(load_tasks(path)) < spec["tasks"]:  # absent, or left by a smaller probe
        from real_model_tasks import build

        build(max(200, spec["tasks"]))  # the same items as bench/real_model_tasks.py scores
    train, _ = split_examples(load_instructions(spec["files"]).examples, 0.1, 0)
    seen = {" ".join(m["content"].split()) for ex in train[:spec["max_examples"]] for m in ex.messages
            if m["role"] == "user"}
    return [i for i in load_tasks(path)[:spec["tasks"]] if " ".join(i["question"].split()) not in seen]


def stored_mb(out: Path, mode: str) -> float:
    """What a user keeps per domain: the adapter folder, or the fine-tuned checkpoint (weights,
    config, tokenizer), without the optimizer state kept for resuming."""
    folder = out / ("adapter" if mode == "lora" else "checkpoint")
    kept = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith("train_state")]
    return sum(f.stat().st_size for f in kept) / 2**20


def one_run(spec: dict) -> dict:
    """Child process: fine-tune one configuration and measure it."""
    import torch

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    from lightseek.adapters import finetune as ft
    from lightseek.adapters.evaluate import instruction_batches
    from lightseek.adapters.lora import use_adapters
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.perplexity import evaluate
    from lightseek.eval.tasks import score_tasks
    from lightseek.model.checkpoint import TOKENIZER, load_model, resolve_checkpoint
    from lightseek.train.metrics import read_metrics

    base = resolve_checkpoint(spec["base"])
    tok = Tokenizer.load(base / TOKENIZER)
    seq_len, bs = spec["seq_len"], spec["batch_size"]
    all_val, n_val = instruction_batches(spec["files"], tok, seq_len, bs, 0.1, 0, "val")
    cap = spec.get("val_conversations") or n_val  # the first conversations of the held-out split

    def domain_val():
        return itertools.islice(all_val(), -(-min(cap, n_val) // bs))

    general = general_batches(tok, seq_len, bs, spec.get("general_tokens", GENERAL_TOKENS))
    items = task_items(spec)
    result = {"config": spec["config"], "domain": spec["domain"], "val_conversations": min(cap, n_val)}
    if spec.get("measure_base"):
        model = load_model(base)
        base_domain = evaluate(model, domain_val(), pad_id=tok.pad_id)
        result["base_domain_ppl"] = base_domain["ppl"]
        result["base_routing"] = [r["tokens_per_expert"] for r in base_domain["routing"]]  # [] for a dense base
        result["base_general_ppl"] = evaluate(model, general())["ppl"]
        if items:
            result["base_task"] = score_tasks(model, tok, items)
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
    step_s = [r["step_s"] for r in steps[5:] or steps]  # after the first few (allocator warm-up)

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
        task_after = score_tasks(model, tok, items) if items else None
        # memory by kind for one micro-batch of the run's own shape (full-width rows)
        if spec["mode"] == "lora":
            for n, p in model.named_parameters():
                p.requires_grad = ".lora_" in n
            if "--frozen_dtype=bf16" in spec["overrides"]:  # the base as the run held it
                from lightseek.adapters.lora import store_frozen

                store_frozen(model, torch.bfloat16)
        else:
            for p in model.parameters():
                p.requires_grad = True
        probe = torch.randint(0, model.cfg.vocab_size, (bs, seq_len), generator=torch.Generator().manual_seed(0))
        model.grad_checkpoint = "--train.grad_checkpoint=true" in spec["overrides"]  # as the run trained
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
        "domain_ppl": domain_after["ppl"], "general_ppl": general_after["ppl"], "task": task_after,
        "stored_mb": stored_mb(Path(spec["out"]), spec["mode"]),
        "avg_k": domain_after.get("avg_k"), "max_vio": domain_after.get("max_vio"),
        "routing": [r["tokens_per_expert"] for r in domain_after["routing"]],
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
    ap.add_argument("--real", action="store_true",
                    help="on the fetched instruct model, with the settings of REAL (each can still be given)")
    ap.add_argument("--base", help="base checkpoint or fetched model (default runs/base; --real: smollm2-135m-instruct)")
    ap.add_argument("--domains", nargs="+", choices=list(DOMAINS))
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS))
    ap.add_argument("--steps-medical", type=int)
    ap.add_argument("--steps-finance", type=int)
    ap.add_argument("--lr-full", type=float, help="peak learning rate of full fine-tuning")
    ap.add_argument("--lr-lora", type=float, help="peak learning rate of the adapters")
    ap.add_argument("--replay", type=float, help="share of each batch replaying the base's training text")
    ap.add_argument("--replay-kl", type=float,
                    help="weight of the KL tie to the base on replayed rows (0 = next-token loss only)")
    ap.add_argument("--extra", action="append",
                    help="an override for every run, repeatable (e.g. --extra=--data.replay_fraction=0.3)")
    ap.add_argument("--scale-preset", help="larger preset for the memory/time check ('' = skip)")
    ap.add_argument("--scale-batch", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--val-conversations", type=int, help="held-out conversations scored (0 = all)")
    ap.add_argument("--general-tokens", type=int, help="tokens of held-out general text scored")
    ap.add_argument("--tasks", type=int, help="multiple-choice items of the domain's task scored (0 = none)")
    ap.add_argument("--out", help="where the runs go (default runs/bench_lora, or runs/bench_lora_real with --real)")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: lora_vs_full, or lora_vs_full_real "
                                     "with --real, for the default settings, else named after the arguments "
                                     "that differ)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse each run whose result (same settings) is already in --out; each result keeps the "
                         "revision it was measured at")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: a JSON run spec
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        result = {**one_run(spec), "git_revision": provenance()["git_revision"]}
        # kept beside the run, with the spec it answers, so an interrupted benchmark can --resume
        (Path(spec["out"]) / "result.json").write_text(json.dumps({"spec": spec, "result": result}), encoding="utf-8")
        print("RESULT " + json.dumps(result), flush=True)
        return
    defaults = REAL if args.real else DEFAULTS
    args.out = args.out or str(ROOT / "runs" / ("bench_lora_real" if args.real else "bench_lora"))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    missing = [str(p) for d in args.domains for p in DOMAINS[d]] + [str(p) for p in GENERAL]
    missing = [p for p in missing if not Path(p).exists()]
    if missing:
        sys.exit(f"skipped: the shared data is not here ({', '.join(missing)})")
    stem = result_name("lora_vs_full_real" if args.real else "lora_vs_full", args, defaults)
    if Path(args.base) == Path(DEFAULTS["base"]):
        ensure_base(Path(args.base))
    else:
        from lightseek.model.checkpoint import resolve_checkpoint

        resolve_checkpoint(args.base)  # a clear error now, not in the first child

    import shutil

    results = []
    for domain in args.domains:
        steps = getattr(args, f"steps_{domain}")
        for i, name in enumerate(args.configs):
            out = Path(args.out) / domain / name
            spec = {"base": args.base, "domain": domain, "config": name, "files": [str(p) for p in DOMAINS[domain]],
                    "steps": steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
                    "out": str(out), "measure_base": i == 0, "mode": CONFIGS[name]["mode"],
                    "val_conversations": args.val_conversations, "general_tokens": args.general_tokens,
                    "tasks": args.tasks, "max_examples": steps * args.batch_size if args.real else 0,
                    "overrides": [*CONFIGS[name]["overrides"], f"--data.replay_fraction={args.replay}",
                                  f"--data.replay_kl={args.replay_kl}",
                                  *(["--data.split_seed=0", f"--data.max_examples={steps * args.batch_size}",
                                     "--train.grad_checkpoint=true"] if args.real else []),
                                  *args.extra, f"--train.lr={args.lr_full if name == 'full' else args.lr_lora}"]}
            kept = out / "result.json"
            if args.resume and kept.is_file() and json.loads(kept.read_text(encoding="utf-8"))["spec"] == spec:
                r = json.loads(kept.read_text(encoding="utf-8"))["result"]
                print(f"[{domain} / {name}] reused from {kept}", flush=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
                print(f"[{domain} / {name}] {spec['steps']} steps ...", flush=True)
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                                      check=False, text=True, cwd=ROOT)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not line:
                    sys.exit(f"run {domain}/{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
                r = json.loads(line[0][7:])
            if i == 0:
                base_scores = {k: r.get(k) for k in ("base_domain_ppl", "base_general_ppl", "base_task",
                                                     "base_routing")}
            r.update(base_scores)
            if r.get("base_routing"):
                r["routing_shift"] = routing_shift(r["base_routing"], r["routing"])
            results.append(r)
            print(f"    domain ppl {r['base_domain_ppl']:.2f} -> {r['domain_ppl']:.2f}, general ppl "
                  f"{r['base_general_ppl']:.2f} -> {r['general_ppl']:.2f}, {r['step_s_median']:.3f} s/step"
                  + (f", {TASKS[domain]} acc {r['base_task']['acc']:.3f} -> {r['task']['acc']:.3f} "
                     f"({r['task']['items']} items)" if r.get("task") else ""), flush=True)

    summarize(results)
    if args.real and any(r["config"] == "full" for r in results):  # the plot is the gain against full fine-tuning's
        plot(results, ROOT / "docs" / "results" / f"{stem}.png")
    scale = scale_check(args.scale_preset, args.scale_batch, args.seq_len) if args.scale_preset else []
    out = write_result(stem, {**provenance(_threads()), "results": results, "scale": scale, "args": vars(args),
                              "torch_threads": _threads()})
    print(f"\nwritten {out}")


def routing_shift(before: list[list[int]], after: list[list[int]], top: int = 4) -> dict:
    """How the domain's routing moved, from tokens per expert per layer on its held-out
    conversations: the mean over layers of the total variation distance between the two load
    shares (0 = the same, 1 = disjoint), and the mean overlap (Jaccard) of each layer's ``top``
    most used experts."""
    tv, overlap = [], []
    for b, a in zip(before, after):
        sb, sa = sum(b) or 1, sum(a) or 1
        tv.append(0.5 * sum(abs(x / sb - y / sa) for x, y in zip(b, a)))
        tb = {e for e in sorted(range(len(b)), key=lambda e: -b[e])[:top] if b[e]}  # unused experts are no one's top
        ta = {e for e in sorted(range(len(a)), key=lambda e: -a[e])[:top] if a[e]}
        overlap.append(len(tb & ta) / len(tb | ta) if tb | ta else 1.0)
    return {"tv_distance": statistics.mean(tv), f"top{top}_overlap": statistics.mean(overlap),
            "tv_by_layer": tv}


def plot(results: list[dict], path: Path) -> None:
    """Domain gain recovered (share of full fine-tuning's perplexity gain) against two costs:
    trainable parameters and training memory (weights, gradients, optimizer state, activations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (label, cost) in zip(axes, [("trainable parameters (% of the model)", lambda r: r["trainable_pct"]),
                                         ("training memory (MB)", lambda r: r["accounted_memory"]["total_mb"])]):
        for r in results:
            gain = 1.0 if r["config"] == "full" else r.get("gain_recovered")
            if gain is None:
                continue
            ax.scatter(cost(r), 100 * gain, s=40)
            ax.annotate(f"{r['domain']}/{r['config']}", (cost(r), 100 * gain), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.axhline(90, ls="--", lw=0.8, color="grey")
    axes[0].set_ylabel("domain perplexity gain recovered (% of full)")
    fig.suptitle("LoRA against full fine-tuning: gain against cost (same data and tokens)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path.relative_to(ROOT)}")


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
          "| general ppl before -> after | general change | stored | task acc before -> after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---|")
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
                "step_s": r["step_s_median"] / f["step_s_median"],
                **({"stored": r["stored_mb"] / f["stored_mb"]} if r.get("stored_mb") and f.get("stored_mb") else {})}
        m = r["accounted_memory"]
        state = m["weights_mb"] + m["grads_mb"] + m["optimizer_mb"]
        print(f"| {r['domain']} | {r['config']} | {r['trainable_parameters']:,} | {r['trainable_pct']:.2f}% | "
              f"{r['optimizer_state_mb']:.2f} MB | {state:.1f} / {m['activations_mb']:.0f} MB | "
              f"{r['peak_over_start_mb']:.0f} MB | {r['step_s_median']:.3f} | "
              f"{r['base_domain_ppl']:.2f} -> {r['domain_ppl']:.2f} | "
              f"{'-' if rec is None else f'{100 * rec:.0f}%'} | {r['base_general_ppl']:.2f} -> {r['general_ppl']:.2f} | "
              f"{r['general_change_pct']:+.2f}% | "
              + (f"{r['stored_mb']:.1f} MB | " if r.get("stored_mb") else "- | ")
              + (f"{r['base_task']['acc']:.3f} -> {r['task']['acc']:.3f} (n {r['task']['items']}) |"
                 if r.get("task") else "- |"))
    for r in results:
        if "routing_shift" in r:
            sh = r["routing_shift"]
            print(f"{r['domain']}/{r['config']} routing on the domain: TV distance {sh['tv_distance']:.3f}, "
                  f"top-4 experts overlap {sh['top4_overlap']:.2f} (before -> after)")
    for r in results:
        if "cost_vs_full" in r:
            c = r["cost_vs_full"]
            print(f"{r['domain']}/{r['config']} vs full: trainable {100 * c['trainable']:.2f}%, optimizer state "
                  f"{100 * c['optimizer_state']:.2f}%, params+grads+optimizer {100 * c['param_state']:.0f}%, "
                  f"accounted training memory {100 * c['accounted_total']:.0f}%, "
                  f"peak RSS over start {100 * c['peak_over_start']:.0f}%, "
                  f"time per step {100 * c['step_s']:.0f}%"
                  + (f", stored {100 * c['stored']:.1f}%" if "stored" in c else ""))


if __name__ == "__main__":
    main()
