"""The lightseek decoder: pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU or MoE FFN."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightseek.kernels.linear import Linear
from lightseek.model.config import ModelConfig
from lightseek.model.kv_cache import KVCache
from lightseek.model.moe import MoE, SwiGLU, recomputing, routing_stats


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies (fp64, (head_dim/2,)) after the configured scaling, and the
    factor cos/sin are multiplied by (YaRN's attention scale; 1 otherwise)."""
    hd = cfg.rope_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    factor = cfg.rope_factor
    if cfg.rope_scaling == "linear":
        return inv_freq / factor, 1.0
    if cfg.rope_scaling == "llama3":
        # wavelengths longer than the pretraining context / low are slowed by `factor`, shorter
        # than context / high are kept, and the band between is interpolated smoothly
        wavelen = 2 * math.pi / inv_freq
        orig = cfg.rope_original_max_len
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        scaled = torch.where(wavelen > orig / low, inv_freq / factor, inv_freq)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= orig / high) & (wavelen <= orig / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if cfg.rope_scaling == "yarn":
        def correction_dim(rotations: float) -> float:
            return hd * math.log(cfg.rope_original_max_len / (rotations * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))

        lo = max(math.floor(correction_dim(cfg.rope_beta_fast)), 0)
        hi = min(math.ceil(correction_dim(cfg.rope_beta_slow)), hd - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(hd // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
        extrapolate = 1 - ramp  # 1: keep the original frequency, 0: interpolate fully
        inv_freq = inv_freq / factor * (1 - extrapolate) + inv_freq * extrapolate
        if cfg.rope_attn_factor:
            attn = cfg.rope_attn_factor
        elif cfg.rope_mscale and cfg.rope_mscale_all_dim:  # DeepSeek's form
            attn = yarn_mscale(factor, cfg.rope_mscale) / yarn_mscale(factor, cfg.rope_mscale_all_dim)
        else:
            attn = yarn_mscale(factor)
        return inv_freq, attn
    return inv_freq, 1.0


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, (max_seq_len, head_dim/2) fp32, for the model's RoPE variant."""
    inv_freq, attn_factor = rope_inv_freq(cfg)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), inv_freq)  # (L, hd/2)
    return (angles.cos() * attn_factor).float(), (angles.sin() * attn_factor).float()


def apply_rope(x_BHTd: torch.Tensor, cos_Td: torch.Tensor, sin_Td: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHTd.float().chunk(2, dim=-1)  # rotate-half convention
    out = torch.cat([x1 * cos_Td - x2 * sin_Td, x1 * sin_Td + x2 * cos_Td], dim=-1)
    return out.to(x_BHTd.dtype)


class Attention(nn.Module):
    """Grouped-query attention (multi-head when n_kv_heads = n_heads)."""

    PROJECTIONS = ("wq", "wk", "wv", "wo")  # the linear layers adapters and quantization act on

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.attn_scale or None  # None: SDPA's 1 / sqrt(head_dim)
        self.window = cfg.sliding_window
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.wq = Linear(cfg.dim, q_dim, bias=cfg.qkv_bias)
        self.wk = Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
        self.wv = Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
        self.wo = Linear(q_dim, cfg.dim, bias=cfg.o_bias)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm != "none":
            q_norm_dim, k_norm_dim = (cfg.head_dim, cfg.head_dim) if cfg.qk_norm == "head" else (q_dim, kv_dim)
            self.q_norm = nn.RMSNorm(q_norm_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(k_norm_dim, eps=cfg.norm_eps)

    def forward(self, x_BTD, cos, sin, cache: KVCache | None, start_pos: int) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q, k, v = self._qkv(x_BTD, cos, sin)                                            # (B, H*, T, d)
        if cache is not None:
            k, v = cache.update(self.layer_id, k, v, start_pos)                           # (B, Hkv, S, d)
        mask, causal = self._mask(T, k.shape[2], cache, x_BTD.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale,
                                           enable_gqa=self.n_heads != self.n_kv_heads)
        return self._out(y)                                                               # (B, T, D)

    def _qkv(self, x_BTD, cos, sin):
        """Roped queries (B, H, T, d) and keys, and values (B, Hkv, T, d)."""
        B, T, _ = x_BTD.shape
        q, k, v = self.wq(x_BTD), self.wk(x_BTD), self.wv(x_BTD)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim)                                    # (B, T, H, d)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)                                 # (B, T, Hkv, d)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)                                      # (B, H, T, d)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _out(self, y_BHTd: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = y_BHTd.shape
        return self.wo(y_BHTd.transpose(1, 2).reshape(B, T, -1))

    def _mask(self, T: int, S: int, cache, device) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for T new queries over S keys, the last T of which are theirs."""
        slot_mask = getattr(cache, "attn_mask", None)
        if slot_mask is not None:  # per-row lengths (continuous batching): (B, 1, T, S)
            if self.window and S > self.window:
                keys = torch.arange(S, device=device)
                slot_mask = slot_mask & (keys > cache.positions[:, None, :, None] - self.window)
            return slot_mask, False
        if self.window and S > self.window:  # query i (at S - T + i) sees keys (q - window, q]
            q_pos = torch.arange(S - T, S, device=device)[:, None]
            keys = torch.arange(S, device=device)[None, :]
            return (keys <= q_pos) & (keys > q_pos - self.window), False
        if T == S:
            return None, True
        if T == 1:
            return None, False
        # a chunk after cached tokens: query i sees keys 0 .. start_pos + i
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T), False


class LatentAttention(Attention):
    """Multi-head latent attention (DeepSeek-V2/V3): queries, keys and values come from low-rank
    compressed projections; only part of each query/key head is rotary. The cache keeps full
    keys and values (values zero-padded to the key width), so it is shared with `Attention`."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        nn.Module.__init__(self)
        self.layer_id = layer_id
        H, self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_heads, cfg.n_heads, cfg.head_dim
        self.nope, self.rope, self.v_dim, self.kv_rank = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                                                          cfg.v_head_dim, cfg.kv_lora_rank)
        qk = self.nope + self.rope
        scale = cfg.attn_scale or qk ** -0.5
        if cfg.rope_scaling == "yarn" and cfg.rope_mscale_all_dim:
            scale *= yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim) ** 2
        self.scale, self.window, self.interleave = scale, cfg.sliding_window, cfg.rope_interleave
        if cfg.q_lora_rank:
            self.wq_a = Linear(cfg.dim, cfg.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_norm = nn.RMSNorm(cfg.q_lora_rank, eps=cfg.norm_eps)
            self.wq_b = Linear(cfg.q_lora_rank, H * qk, bias=False)
        else:
            self.wq = Linear(cfg.dim, H * qk, bias=False)
        self.wkv_a = Linear(cfg.dim, self.kv_rank + self.rope, bias=cfg.qkv_bias)
        self.kv_a_norm = nn.RMSNorm(self.kv_rank, eps=cfg.norm_eps)
        self.wkv_b = Linear(self.kv_rank, H * (self.nope + self.v_dim), bias=False)
        self.wo = Linear(H * self.v_dim, cfg.dim, bias=cfg.o_bias)
        self.PROJECTIONS = (("wq_a", "wq_b") if cfg.q_lora_rank else ("wq",)) + ("wkv_a", "wkv_b", "wo")

    def _qkv(self, x_BTD, cos, sin):
        B, T, _ = x_BTD.shape
        H, d = self.n_heads, self.head_dim
        q = self.wq_b(self.q_a_norm(self.wq_a(x_BTD))) if hasattr(self, "wq_b") else self.wq(x_BTD)
        q_pass, q_rot = q.view(B, T, H, -1).transpose(1, 2).split([self.nope, self.rope], -1)   # (B, H, T, *)
        kv_c, k_rot = self.wkv_a(x_BTD).split([self.kv_rank, self.rope], -1)
        kv = self.wkv_b(self.kv_a_norm(kv_c)).view(B, T, H, -1).transpose(1, 2)
        k_pass, v = kv.split([self.nope, self.v_dim], -1)                                        # (B, H, T, *)
        k_rot = k_rot.view(B, 1, T, self.rope)                                                   # shared by heads
        if self.interleave:  # pairs (x0, x1), (x2, x3) ... -> halves, on queries and keys alike
            q_rot, k_rot = _deinterleave(q_rot), _deinterleave(k_rot)
        q_rot, k_rot = apply_rope(q_rot, cos, sin), apply_rope(k_rot, cos, sin)
        q = torch.cat([q_pass, q_rot], -1)
        k = torch.cat([k_pass, k_rot.expand(B, H, T, self.rope)], -1)
        pad = d - q.shape[-1]
        if pad:  # values wider than keys: zero-padded keys and queries leave the scores unchanged
            q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        return q, k, F.pad(v, (0, d - self.v_dim))

    def _out(self, y_BHTd: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = y_BHTd.shape
        return self.wo(y_BHTd[..., :self.v_dim].transpose(1, 2).reshape(B, T, -1))


def _deinterleave(x: torch.Tensor) -> torch.Tensor:
    *lead, d = x.shape
    return x.view(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = (LatentAttention if cfg.attention == "mla" else Attention)(cfg, layer_id)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = MoE(cfg) if cfg.is_moe_layer(layer_id) else SwiGLU(cfg.dim, cfg.dense_inter_dim)
        self.residual_scale = cfg.residual_scale

    def forward(self, x, cos, sin, cache, start_pos):
        if self.residual_scale != 1.0:
            x = x + self.attn(self.attn_norm(x), cos, sin, cache, start_pos) * self.residual_scale
            return x + self.ffn(self.ffn_norm(x)) * self.residual_scale
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, start_pos)
        return x + self.ffn(self.ffn_norm(x))


@dataclass
class ModelOutput:
    logits: torch.Tensor | None        # (B, T, V) fp32; None when the loss was asked for alone
    loss: torch.Tensor | None = None   # next-token cross-entropy (mean over targets != -100)
    aux_loss: torch.Tensor | None = None  # router losses summed over layers, when enabled
    hidden: torch.Tensor | None = None    # (B, T, D) final normed hidden states, when asked for


LOSS_CHUNK = 256  # tokens a chunk of `chunked_lm_loss`: 48 MB of SmolLM2 logits, still a full-speed head GEMM


def chunked_lm_loss(logits_of, hidden_ND: torch.Tensor, targets_N: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
    """The next-token cross-entropy (mean over targets != -100) of ``logits_of(hidden)``, made
    ``chunk`` tokens (default `LOSS_CHUNK`) at a time: each chunk's logits are computed, scored
    and dropped, and with autograd on they are recomputed in backward (activation checkpointing
    per chunk), so only the hidden states are kept. The materialised logits of a SmolLM2 fine-tuning batch of 8 x 256
    tokens are 403 MB in fp32, and the loss's backward keeps as much again; this keeps one
    chunk's at a time. The same value as ``F.cross_entropy`` over all the logits up to float
    rounding, except where no target is scored: 0 (still connected to every parameter, so a
    micro-batch with nothing to learn can join a distributed backward), where that gives NaN."""
    remat = torch.is_grad_enabled() and hidden_ND.requires_grad
    chunk = chunk or LOSS_CHUNK

    def part(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(h), y, ignore_index=-100, reduction="sum")

    total = None
    for i in range(0, hidden_ND.shape[0], chunk):
        h, y = hidden_ND[i:i + chunk], targets_N[i:i + chunk]
        if not bool((y != -100).any()):
            continue
        term = checkpoint(part, h, y, use_reentrant=False) if remat else part(h, y)
        total = term if total is None else total + term
    if total is None:
        return logits_of(hidden_ND[:1]).sum() * 0.0
    return total / (targets_N != -100).sum()


def _recompute_context():
    """Checkpointing's contexts: none for the forward; during the recomputation in backward the
    routers do not count their statistics a second time."""
    return contextlib.nullcontext(), recomputing()


class VocabHead(Linear):
    """The output projection onto the vocabulary (bias-free; tied to the embedding or not): a
    `Linear` in 8 slices, the count measured best for SmolLM2's 49,152 x 576 head on 2 cores
    (11.4 ms for one row through ``F.linear``, 6.2 ms in 8 slices; bench/head_product.py)."""

    SLICES = 8


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # On the meta device the model is a shell to load a checkpoint into: nothing is initialised
        # and the RoPE tables are left to the loader (random fills and aranges there import torch's
        # compiler, ~2.5 s of every command's start).
        shell = torch.get_default_device().type == "meta"
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim,
                                  _weight=torch.empty(cfg.vocab_size, cfg.dim) if shell else None)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = VocabHead(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # gradient checkpointing (train.grad_checkpoint): activations inside each block are
        # recomputed in backward instead of stored, for models whose activations do not fit
        self.grad_checkpoint = False
        if shell:
            cos = sin = torch.empty(cfg.max_seq_len, cfg.rope_dim // 2)
        else:
            cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.embed.weight.is_meta:  # a shell (see __init__)
            return
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)  # residual-branch outputs
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:  # norms
                p.fill_(1.0)
            elif name.endswith(("wo.weight", "w2.weight", "w2_EHD")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.layers if isinstance(b.ffn, MoE)]

    def forward(self, idx_BT: torch.Tensor, targets_BT: torch.Tensor | None = None,
                cache: KVCache | None = None, start_pos: int | None = None, last_only: bool = False,
                token_mask_BT: torch.Tensor | None = None, return_hidden: bool = False,
                keep_logits: bool = True) -> ModelOutput:
        """Logits (and losses when ``targets_BT`` is given; targets of -100 are not scored).
        ``token_mask_BT`` marks real tokens: padding (False) is left out of routing statistics.
        ``keep_logits=False`` (with targets): the loss alone, computed `LOSS_CHUNK` tokens at a
        time and recomputed in backward (`chunked_lm_loss`), so that no (B, T, V) logits are
        made or kept for backward; ``logits`` is then None."""
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
        if x.dtype != self.norm.weight.dtype:  # an embedding held in bf16 under adapters (`store_frozen`)
            x = x.to(self.norm.weight.dtype)
        if self.cfg.embed_scale != 1.0:
            x = x * self.cfg.embed_scale
        routers = [m.router for m in self.moe_layers()] if token_mask_BT is not None else []
        for r in routers:
            r.token_mask_T = token_mask_BT.reshape(-1)
        remat = self.grad_checkpoint and self.training and torch.is_grad_enabled() and cache is None
        try:
            for block in self.layers:
                if remat:  # keep only block inputs; backward runs each block again
                    x = checkpoint(block, x, cos, sin, cache, start_pos, use_reentrant=False,
                                   context_fn=_recompute_context)
                else:
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
        loss = aux = logits = None
        if targets_BT is not None and not keep_logits:
            loss = chunked_lm_loss(self._logits, x.reshape(-1, x.shape[-1]), targets_BT.reshape(-1))
        else:
            logits = self._logits(x)                                          # (B, T, V)
        if targets_BT is not None:
            if loss is None:
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets_BT.reshape(-1),
                                       ignore_index=-100)
            aux_terms = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
            aux = torch.stack(aux_terms).sum() if aux_terms else None
        return ModelOutput(logits, loss, aux, hidden)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits of final normed hidden states."""
        logits = self.head(x).float()
        return logits * self.cfg.logits_scale if self.cfg.logits_scale != 1.0 else logits

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

    def update_routing(self, sums=None, step_scale: float = 1.0) -> None:
        """Once per optimizer step: balance biases and dynamic thresholds from the step's sums
        (their steps times ``step_scale``)."""
        sums = sums or self.routing_sums()
        if sums is None:
            return
        load_LE, stat_L3 = sums
        for i, m in enumerate(self.moe_layers()):
            n_tokens = float(stat_L3[i, 0])
            if n_tokens > 0:
                m.router.update(load_LE[i].float(), float(stat_L3[i, 1]) / n_tokens, step_scale)

    def set_dispatch(self, name: str) -> None:
        for m in self.moe_layers():
            m.set_dispatch(name)

    # --- size and compute ----------------------------------------------------------------
    def num_params(self, k: float | None = None) -> dict:
        """Total parameters and parameters active per token (routed experts at the mean k, or ``k``)."""
        cfg = self.cfg
        # a quantized model keeps most weights as buffers; it records its parameter count
        total = getattr(self, "quant_params", None) or sum(p.numel() for p in self.parameters())
        routed = sum(m.w1_EDH.numel() + m.w3_EDH.numel() + m.w2_EHD.numel() for m in self.moe_layers())
        per_expert = 3 * cfg.dim * cfg.moe_inter_dim
        k = self.mean_k() if k is None else k
        active = total - routed + len(self.moe_layers()) * per_expert * k
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
        if cfg.attention == "mla":
            qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            q_params = (d * cfg.q_lora_rank + cfg.q_lora_rank * cfg.n_heads * qk) if cfg.q_lora_rank \
                else d * cfg.n_heads * qk
            attn_params = (q_params + d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
                           + cfg.kv_lora_rank * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim)
                           + cfg.n_heads * cfg.v_head_dim * d)
        else:
            attn_params = 2 * d * cfg.n_heads * hd + 2 * d * cfg.n_kv_heads * hd
        attn = 2 * attn_params + 2 * seq_len * cfg.n_heads * hd
        expert = 2 * 3 * d * cfg.moe_inter_dim
        dense_ffn = 2 * 3 * d * cfg.dense_inter_dim
        head = 2 * d * cfg.vocab_size
        active = total = head + cfg.n_layers * attn
        for i in range(cfg.n_layers):
            if cfg.is_moe_layer(i):
                common = 2 * 3 * d * cfg.shared_dim + 2 * d * cfg.n_experts  # shared + router
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
    moe_active = n_moe * (3 * cfg.dim * (cfg.moe_inter_dim * k + cfg.shared_dim) + cfg.dim * cfg.n_experts)
    dense_active = cfg.n_dense_layers * 3 * cfg.dim * cfg.dense_inter_dim
    width = int(round((moe_active + dense_active) / (3 * cfg.dim * cfg.n_layers)))
    return cfg.replace(router_mode="dense", dense_inter_dim=width)
