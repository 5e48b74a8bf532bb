"""Training memory of full fine-tuning and adapters on SmolLM2-135M-Instruct, by what training holds.

For full fine-tuning and LoRA at ranks 8, 16 and 64 (attention and feed-forward projections,
alpha = 2 x rank: `bench/lora_vs_full.py --real`'s set-ups), one micro-batch of --batch rows of
--seq-len tokens with gradient checkpointing, as that bench trains: the memory training holds,
by kind (weights; gradients and AdamW state of the trainable parameters; the activations
autograd saves for backward, counted with saved-tensor hooks: `lora_vs_full.accounted_memory`),
and the median time of a training step (forward, backward, optimizer step). Each set-up twice:
the loss from the whole (B, T, V) logits, as training computed it before, and the loss alone
(`Transformer.forward(..., keep_logits=False)`, `chunked_lm_loss`), as training computes it now;
then the adapters once more with the loss alone and the frozen base held in bf16
(`lora train --frozen_dtype bf16`, `store_frozen`). Memory does not depend on the weights'
values; the real model is used for its shapes.

    python bench/train_memory.py [--batch 8] [--seq-len 256] [--steps 2] [--threads 2]

Prints a table and writes bench/results/train_memory.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import accounted_memory  # noqa: E402
from provenance import provenance, result_name, write_result  # noqa: E402
from real_model import timed  # noqa: E402

NAME = "smollm2-135m-instruct"
CONFIGS = {"full": None, **{f"lora-r{r}": r for r in (8, 16, 64)}}


def measure(config: str, keep_logits: bool, batch: int, seq_len: int, steps: int, frozen: str = "fp32") -> dict:
    import torch

    from lightseek.adapters.lora import LoraConfig, apply_lora, store_frozen, use_adapters
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.train.config import TrainConfig
    from lightseek.train.optim import build_optimizer

    model = load_model(resolve_checkpoint(NAME))
    rank = CONFIGS[config]
    if rank:
        apply_lora(model, LoraConfig(rank=rank, alpha=2 * rank, targets=["attn", "dense"]), "a")
        if frozen == "bf16":
            store_frozen(model, torch.bfloat16)
    model.grad_checkpoint = True
    x = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    with use_adapters(model, "a" if rank else None):
        memory = accounted_memory(model, x, x, -1, keep_logits=keep_logits)
        opt = build_optimizer(model, TrainConfig(lr=1e-5))

        def step() -> None:
            model(x, x, keep_logits=keep_logits).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step_s = timed(step, steps)  # after a first step that warms the allocator and the optimizer state
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"config": config, "whole_logits": keep_logits, "frozen_dtype": frozen, "trainable_parameters": trainable,
            "trainable_pct": 100 * trainable / total, "accounted_memory": memory,
            "step_s_median": step_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    runs = [(c, keep, "fp32") for keep in (True, False) for c in CONFIGS]
    runs += [(c, False, "bf16") for c in CONFIGS if CONFIGS[c]]
    for config, keep, frozen in runs:
        rows.append(measure(config, keep, args.batch, args.seq_len, args.steps, frozen))
        m = rows[-1]["accounted_memory"]
        print(f"{config} ({'whole logits' if keep else 'loss alone'}, {frozen} base): {m['total_mb']:.0f} MB "
              f"(weights {m['weights_mb']:.0f}, gradients {m['grads_mb']:.0f}, optimizer {m['optimizer_mb']:.0f}, "
              f"activations {m['activations_mb']:.0f}), {rows[-1]['step_s_median']:.1f} s/step",
              file=sys.stderr, flush=True)
    full = {r["whole_logits"]: r["accounted_memory"]["total_mb"] for r in rows if r["config"] == "full"}
    print("\n| run | loss from | frozen base | trainable | weights MB | gradients + optimizer MB | activations MB | "
          "total MB | vs full (same loss) | s/step |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["accounted_memory"]
        print(f"| {r['config']} | {'whole logits' if r['whole_logits'] else 'loss alone'} | {r['frozen_dtype']} | "
              f"{r['trainable_parameters']:,} ({r['trainable_pct']:.2f}%) | {m['weights_mb']:.0f} | "
              f"{m['grads_mb'] + m['optimizer_mb']:.0f} | {m['activations_mb']:.0f} | {m['total_mb']:.0f} | "
              f"{100 * m['total_mb'] / full[r['whole_logits']]:.0f}% | {r['step_s_median']:.1f} |")
    stem = result_name("train_memory", args, {"batch": 8, "seq_len": 256, "steps": 2, "threads": 2})
    out = write_result(stem, {**provenance(args.threads), "model": NAME,
                              "settings": {"batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
                                           "grad_checkpoint": True}, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
