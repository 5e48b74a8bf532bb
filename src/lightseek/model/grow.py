"""Depth expansion: a deeper model that starts out computing exactly what the original computes.

After each of the original layers from ``after`` on, ``copies`` new blocks are inserted. Each one
is a copy of the layer before it (attention, norms, router state, experts) with its two residual
outputs zeroed: the attention output projection and the FFN down projections (routed experts and
shared expert). A block whose residual branches add zero is the identity, so the deeper model's
logits equal the original's; training then moves the new blocks off zero while the original
layers carry on where they were (block expansion, as in LLaMA Pro). lightseek uses it to build
teachers larger than the base model for distillation into the base (bench/distill.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lightseek.errors import ConfigError
from lightseek.model.moe import MoE, SwiGLU
from lightseek.model.transformer import Block, Transformer


def expand_depth(model: Transformer, copies: int, after: int | None = None) -> Transformer:
    """A new model with ``copies`` identity blocks after every layer from ``after`` on (default:
    the first MoE layer, so the dense layers at the bottom stay as they are)."""
    cfg = model.cfg
    after = cfg.n_dense_layers if after is None else after
    if copies < 1:
        raise ConfigError(f"copies must be >= 1, got {copies}")
    if not 0 <= after < cfg.n_layers:
        raise ConfigError(f"after must be a layer index in [0, {cfg.n_layers}), got {after}")
    if any(type(p) is not nn.Parameter for p in model.parameters()) or any(
            type(b.ffn) not in (MoE, SwiGLU) for b in model.layers):
        raise ConfigError("depth expansion needs a plain floating-point model (no adapters, not quantized)")
    blocks: list[Block] = []
    for i, block in enumerate(model.layers):
        blocks.append(copy.deepcopy(block))
        if i >= after:
            blocks += [_identity_copy(block) for _ in range(copies)]
    # dense layers stay at the bottom: copies of dense layers sit among them
    n_dense = cfg.n_dense_layers + copies * max(0, cfg.n_dense_layers - after)
    grown = Transformer(cfg.replace(n_layers=len(blocks), n_dense_layers=n_dense))
    with torch.no_grad():
        grown.embed.weight.copy_(model.embed.weight)
        grown.norm.weight.copy_(model.norm.weight)
        if not cfg.tie_embeddings:
            grown.head.weight.copy_(model.head.weight)
    grown.layers = nn.ModuleList(blocks)
    for i, block in enumerate(grown.layers):
        block.attn.layer_id = i  # the KV cache is indexed by layer
    return grown.to(next(model.parameters()).device)


def _identity_copy(block: Block) -> Block:
    new = copy.deepcopy(block)
    with torch.no_grad():
        new.attn.wo.weight.zero_()
        if isinstance(new.ffn, MoE):
            new.ffn.w2_EHD.zero_()
            if new.ffn.shared is not None:
                new.ffn.shared.w2.weight.zero_()
        else:
            new.ffn.w2.weight.zero_()
    return new
