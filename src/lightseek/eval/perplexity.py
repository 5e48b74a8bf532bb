"""Validation loss, perplexity and routing statistics of a model over token windows."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch

from lightseek.model.transformer import Transformer


@torch.no_grad()
def evaluate(model: Transformer, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu",
             autocast: torch.dtype | None = None, reduce=None, pad_id: int | None = None) -> dict:
    """Token-weighted mean loss over ``batches`` ((b, T+1) windows, or (inputs, targets) pairs
    whose targets of -100 are not scored), perplexity, and the routing report of the same
    tokens. ``reduce`` (a sum all-reduce) combines ranks when distributed; ``pad_id`` marks
    padding, which the routing statistics leave out."""
    was_training = model.training
    model.eval()
    model.reset_routing_stats()
    device = torch.device(device)
    loss_sum = torch.zeros((), dtype=torch.float64)
    n_tokens = torch.zeros((), dtype=torch.float64)
    ctx = (torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext())
    for batch in batches:
        x, y = (batch[:, :-1], batch[:, 1:]) if isinstance(batch, torch.Tensor) else batch
        x, y = x.to(device), y.to(device)
        with ctx:
            out = model(x, y, token_mask_BT=(x != pad_id) if pad_id is not None else None)
        n = int((y != -100).sum())
        if n == 0:
            continue
        loss_sum += out.loss.double().cpu() * n
        n_tokens += n
    sums = model.routing_sums()
    if reduce is not None:
        loss_sum, n_tokens = reduce(loss_sum), reduce(n_tokens)
        sums = tuple(reduce(s) for s in sums) if sums is not None else None
    model.train(was_training)
    if n_tokens.item() == 0:
        raise ValueError("no evaluation tokens")
    loss = (loss_sum / n_tokens).item()
    routing = model.routing_report(sums)
    model.reset_routing_stats()
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": int(n_tokens.item()),
            "routing": routing, **summarize_routing(routing)}


def evaluate_training_windows(model: Transformer, shards, batch_size: int, seq_len: int, batches: int,
                              seed: int) -> dict:
    """`evaluate` on ``batches`` random windows of a training split (``shards``), drawn with
    ``seed`` (use another seed than training's): the routing balance on the text the router was
    balanced on, beside the held-out figures, which also reflect how other documents differ."""
    return evaluate(model, (shards.sample_batch(batch_size, seq_len, seed, i) for i in range(batches)))


def summarize_routing(routing: list[dict]) -> dict:
    """Whole-model figures: mean k and MaxVio over layers, dead experts summed."""
    if not routing:
        return {}
    return {
        "avg_k": sum(r["avg_k"] for r in routing) / len(routing),
        "max_vio": sum(r["max_vio"] for r in routing) / len(routing),
        "max_vio_worst_layer": max(r["max_vio"] for r in routing),
        "dead_experts": sum(r["dead_experts"] for r in routing),
        "entropy": sum(r["entropy"] for r in routing) / len(routing),
    }
