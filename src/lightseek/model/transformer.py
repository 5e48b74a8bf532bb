"""The lightseek decoder: pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU or MoE FFN."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.model.config import ModelConfig
from lightseek.model.kv_cache import KVCache
from lightseek.model.moe import MoE, SwiGLU, routing_stats


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, hd/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x_BHTd: torch.Tensor, cos_Td: torch.Tensor, sin_Td: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHTd.float().chunk(2, dim=-1)  # rotate-half convention
    out = torch.cat([x1 * cos_Td - x2 * sin_Td, x1 * sin_Td + x2 * cos_Td], dim=-1)
    return out.to(x_BHTd.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x_BTD, cos, sin, cache: KVCache | None, start_pos: int) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q = self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, d)
        k = self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, d)
        v = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_id, k, v, start_pos)                           # (B, Hkv, S, d)
        S = k.shape[2]
        if getattr(cache, "attn_mask", None) is not None:  # per-row lengths (continuous batching)
            mask, causal = cache.attn_mask, False
        elif T == S:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False
        else:  # a chunk after cached tokens: query i sees keys 0 .. start_pos + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x_BTD.device).tril(diagonal=S - T)
            causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_heads != self.n_kv_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer_id)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = MoE(cfg) if cfg.is_moe_layer(layer_id) else SwiGLU(cfg.dim, cfg.dense_inter_dim)

    def forward(self, x, cos, sin, cache, start_pos):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, start_pos)
        return x + self.ffn(self.ffn_norm(x))


@dataclass
class ModelOutput:
    logits: torch.Tensor               # (B, T, V) fp32
    loss: torch.Tensor | None = None   # next-token cross-entropy (mean over targets != -100)
    aux_loss: torch.Tensor | None = None  # router losses summed over layers, when enabled
    hidden: torch.Tensor | None = None    # (B, T, D) final normed hidden states, when asked for


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)  # residual-branch outputs
        for name, p in self.named_parameters():
            if p.dim() == 1:  # norms
                p.fill_(1.0)
            elif name.endswith(("wo.weight", "w2.weight", "w2_EHD")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.layers if isinstance(b.ffn, MoE)]

    def forward(self, idx_BT: torch.Tensor, targets_BT: torch.Tensor | None = None,
                cache: KVCache | None = None, start_pos: int | None = None, last_only: bool = False,
                token_mask_BT: torch.Tensor | None = None, return_hidden: bool = False) -> ModelOutput:
        """Logits (and losses when ``targets_BT`` is given; targets of -100 are not scored).
        ``token_mask_BT`` marks real tokens: padding (False) is left out of routing statistics."""
        B, T = idx_BT.shape
        if getattr(self, "lora_selection", None) is not None:
            self.lora_selection.check(B)
        if getattr(cache, "positions", None) is not None:  # a SlotCache: every row at its own position
            pos_BT = cache.positions
            if int(pos_BT.max()) >= self.cfg.max_seq_len:
                raise ValueError(f"position {int(pos_BT.max())} exceeds max_seq_len {self.cfg.max_seq_len}")
            cos, sin = self.rope_cos[pos_BT][:, None], self.rope_sin[pos_BT][:, None]     # (B, 1, T, d/2)
            start_pos = 0
        else:
            if start_pos is None:
                start_pos = cache.length if cache is not None else 0
            if start_pos + T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start_pos + T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
            cos = self.rope_cos[start_pos:start_pos + T]
            sin = self.rope_sin[start_pos:start_pos + T]
        x = self.embed(idx_BT)                                                # (B, T, D)
        routers = [m.router for m in self.moe_layers()] if token_mask_BT is not None else []
        for r in routers:
            r.token_mask_T = token_mask_BT.reshape(-1)
        try:
            for block in self.layers:
                x = block(x, cos, sin, cache, start_pos)
        finally:
            for r in routers:
                r.token_mask_T = None
        if cache is not None:
            cache.advance(T)
        x = self.norm(x)
        hidden = x if return_hidden else None
        if last_only:
            x = x[:, -1:]
        logits = self.head(x).float()                                         # (B, T, V)
        loss = aux = None
        if targets_BT is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets_BT.reshape(-1),
                                   ignore_index=-100)
            aux_terms = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
            aux = torch.stack(aux_terms).sum() if aux_terms else None
        return ModelOutput(logits, loss, aux, hidden)

    # --- routing state -------------------------------------------------------------------
    def reset_routing_stats(self) -> None:
        for m in self.moe_layers():
            m.router.reset_stats()

    def routing_sums(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Raw per-layer sums (load (L, E), [tokens, k, entropy] (L, 3)) for all-reduce."""
        layers = self.moe_layers()
        if not layers:
            return None
        return (torch.stack([m.router.load_E for m in layers]),
                torch.stack([m.router.stat_sums for m in layers]))

    def routing_report(self, sums=None) -> list[dict]:
        """Per MoE layer: tokens per expert, avg k, MaxVio, dead experts, entropy, threshold."""
        sums = sums or self.routing_sums()
        if sums is None:
            return []
        report = []
        for i, m in enumerate(self.moe_layers()):
            r = routing_stats(sums[0][i], sums[1][i])
            r["layer"] = self.cfg.n_dense_layers + i
            if self.cfg.router_mode == "dynamic":
                r["threshold"] = float(m.router.threshold)
            report.append(r)
        return report

    def update_routing(self, sums=None) -> None:
        """Once per optimizer step: balance biases and dynamic thresholds from the step's sums."""
        sums = sums or self.routing_sums()
        if sums is None:
            return
        load_LE, stat_L3 = sums
        for i, m in enumerate(self.moe_layers()):
            n_tokens = float(stat_L3[i, 0])
            if n_tokens > 0:
                m.router.update(load_LE[i].float(), float(stat_L3[i, 1]) / n_tokens)

    def set_dispatch(self, name: str) -> None:
        for m in self.moe_layers():
            m.set_dispatch(name)

    # --- size and compute ----------------------------------------------------------------
    def num_params(self) -> dict:
        """Total parameters and parameters active per token (routed experts at the mean k)."""
        cfg = self.cfg
        # a quantized model keeps most weights as buffers; it records its parameter count
        total = getattr(self, "quant_params", None) or sum(p.numel() for p in self.parameters())
        routed = sum(m.w1_EDH.numel() + m.w3_EDH.numel() + m.w2_EHD.numel() for m in self.moe_layers())
        per_expert = 3 * cfg.dim * cfg.moe_inter_dim
        active = total - routed + len(self.moe_layers()) * per_expert * self.mean_k()
        return {"total": total, "active": int(round(active)), "embedding": self.embed.weight.numel()}

    def mean_k(self) -> float:
        return {"dense": 0.0, "topk": float(self.cfg.top_k), "dynamic": self.cfg.target_k}[self.cfg.router_mode]

    def flops_per_token(self, seq_len: int | None = None, k: float | None = None) -> dict:
        """Forward FLOPs per token (a training step is about 3x): active (routed experts at mean
        k, or ``k``) and total (every routed expert). Attention over a causal context of
        ``seq_len`` counts 2 * seq_len * dim per layer (QK^T and AV, halved by the mask)."""
        cfg = self.cfg
        seq_len = seq_len or cfg.max_seq_len
        k = self.mean_k() if k is None else k
        d, hd = cfg.dim, cfg.head_dim
        attn_params = 2 * d * cfg.n_heads * hd + 2 * d * cfg.n_kv_heads * hd
        attn = 2 * attn_params + 2 * seq_len * cfg.n_heads * hd
        expert = 2 * 3 * d * cfg.moe_inter_dim
        dense_ffn = 2 * 3 * d * cfg.dense_inter_dim
        head = 2 * d * cfg.vocab_size
        active = total = head + cfg.n_layers * attn
        for i in range(cfg.n_layers):
            if cfg.is_moe_layer(i):
                common = expert * cfg.n_shared_experts + 2 * d * cfg.n_experts  # shared + router
                active += common + expert * k
                total += common + expert * cfg.n_experts
            else:
                active += dense_ffn
                total += dense_ffn
        return {"active": float(active), "total": float(total), "seq_len": seq_len, "k": k}


def dense_equivalent(cfg: ModelConfig, k: float | None = None) -> ModelConfig:
    """A dense config with the same active parameters per token as ``cfg`` (routed experts at
    mean k, shared experts, routers), for comparisons at equal compute. All its layers get one
    FFN width, chosen so that the FFN parameters summed over layers match."""
    if not cfg.is_moe:
        return cfg
    k = k if k is not None else {"topk": cfg.top_k, "dynamic": cfg.target_k}[cfg.router_mode]
    n_moe = cfg.n_layers - cfg.n_dense_layers
    moe_active = n_moe * (3 * cfg.dim * cfg.moe_inter_dim * (cfg.n_shared_experts + k)
                          + cfg.dim * cfg.n_experts)
    dense_active = cfg.n_dense_layers * 3 * cfg.dim * cfg.dense_inter_dim
    width = int(round((moe_active + dense_active) / (3 * cfg.dim * cfg.n_layers)))
    return cfg.replace(router_mode="dense", dense_inter_dim=width)
