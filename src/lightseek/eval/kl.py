"""KL divergence of a model's next-token distributions from a reference model's (per token).

``KL(ref || model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v))`` at every scored position:
how much the model (e.g. a quantized one) changes what the reference (its full-precision
source) predicts. Reported as the mean and the 99th percentile over tokens, with both models'
perplexity on the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from lightseek.model.transformer import Transformer


def kl_per_token(logq: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of each row of two log-probability tensors (..., V)."""
    return (logq.exp() * (logq - logp)).sum(-1)


@torch.no_grad()
def kl_divergence(model: Transformer, ref: Transformer, batches: Iterable[torch.Tensor]) -> dict:
    """Per-token KL(ref || model) over ``batches`` of (b, T + 1) windows: mean, p99, max, and
    both models' loss and perplexity on the same targets."""
    model.eval()
    ref.eval()
    kls, loss_sum, ref_loss_sum, n = [], 0.0, 0.0, 0
    for batch in batches:
        x, y = batch[:, :-1], batch[:, 1:]
        logp = F.log_softmax(model(x).logits.float(), -1)                  # (b, T, V)
        logq = F.log_softmax(ref(x).logits.float(), -1)
        kls.append(kl_per_token(logq, logp).reshape(-1).clamp_min(0.0))  # (b*T,)
        loss_sum += -logp.gather(-1, y[..., None]).sum().item()
        ref_loss_sum += -logq.gather(-1, y[..., None]).sum().item()
        n += y.numel()
    model.reset_routing_stats()
    ref.reset_routing_stats()
    if n == 0:
        raise ValueError("no evaluation tokens")
    kl = torch.cat(kls).double()
    loss, ref_loss = loss_sum / n, ref_loss_sum / n
    p99 = kl.sort().values[round(0.99 * (kl.numel() - 1))].item()  # nearest rank
    return {"kl_mean": kl.mean().item(), "kl_p99": p99, "kl_max": kl.max().item(),
            "kl_tokens": n, "loss": loss, "ppl": math.exp(min(loss, 50.0)), "ref_loss": ref_loss,
            "ref_ppl": math.exp(min(ref_loss, 50.0)), "ppl_change": math.exp(min(loss, 50.0)) / math.exp(min(ref_loss, 50.0)) - 1}


def format_kl(r: dict) -> str:
    return (f"KL(ref || model) per token: mean {r['kl_mean']:.5f}  p99 {r['kl_p99']:.5f}  max {r['kl_max']:.4f}  "
            f"over {r['kl_tokens']:,} tokens; perplexity {r['ppl']:.3f} vs reference {r['ref_ppl']:.3f} "
            f"({100 * r['ppl_change']:+.2f}%)")


def kl_against(model: Transformer, tokenizer, ref_checkpoint: str, batches) -> dict:
    """`kl_divergence` against the checkpoint ``ref_checkpoint``, which must share the model's
    tokenizer (the same token ids must mean the same text)."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.errors import CheckpointError
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    ref_dir = resolve_checkpoint(ref_checkpoint)
    if Tokenizer.load(ref_dir).sha256 != tokenizer.sha256:
        raise CheckpointError(f"--kl-ref {ref_checkpoint}: its tokenizer differs from the evaluated checkpoint's; "
                              f"KL needs the same vocabulary")
    return kl_divergence(model, load_model(ref_dir), batches)
