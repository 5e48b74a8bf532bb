"""`lightseek info`: parameters, FLOPs per token and routing configuration of a model."""

from __future__ import annotations

import torch

from lightseek.model.config import ModelConfig
from lightseek.model.transformer import Transformer, dense_equivalent


def describe_model(checkpoint: str | None, cfg: ModelConfig, seq_len: int) -> str:
    if checkpoint:
        from lightseek.model.checkpoint import load_model

        model = load_model(checkpoint)
        cfg = model.cfg
    else:
        with torch.device("meta"):
            model = Transformer(cfg)
    params = model.num_params()
    flops = model.flops_per_token(seq_len=min(seq_len, cfg.max_seq_len))
    lines = [
        f"model            {cfg.n_layers} layers ({cfg.n_dense_layers if cfg.is_moe else cfg.n_layers} dense), "
        f"dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads} kv, vocab {cfg.vocab_size}, context {cfg.max_seq_len}",
        f"parameters       {params['total']:,} total, {params['active']:,} active per token "
        f"({params['active'] / params['total']:.1%}), embedding {params['embedding']:,}",
        f"forward FLOPs    {flops['active'] / 1e6:,.2f} M active per token, {flops['total'] / 1e6:,.2f} M "
        f"if every expert ran (context {flops['seq_len']}); a training step is ~3x",
    ]
    if cfg.is_moe:
        routing = {"topk": f"top-{cfg.top_k}",
                   "dynamic": f"dynamic, target k {cfg.target_k} in [{cfg.min_k}, {cfg.max_k}]"}[cfg.router_mode]
        balance = "bias (aux-loss-free)" if cfg.balance_bias else "off"
        if cfg.aux_loss_coef:
            balance += f" + sequence aux loss {cfg.aux_loss_coef}"
        lines += [
            f"experts          {cfg.n_experts} routed x {cfg.moe_inter_dim} wide + {cfg.n_shared_experts} shared, "
            f"in {cfg.n_moe_layers} MoE layers",
            f"routing          {routing}, {cfg.score_fn} scores, balancing {balance}"
            + (f", z-loss {cfg.z_loss_coef}" if cfg.z_loss_coef else ""),
            f"dense twin       FFN width {dense_equivalent(cfg).dense_inter_dim} has the same active parameters",
        ]
    return "\n".join(lines)
