"""ModelConfig: the shape of a lightseek transformer and how its MoE layers route.

Presets: ``debug`` (tests, runs in seconds), ``tiny`` (the quickstart, minutes on 2 CPU cores),
``small`` (~100M total parameters, for a GPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lightseek.config import field, from_dict, to_dict
from lightseek.errors import ConfigError

RouterMode = Literal["dense", "topk", "dynamic"]
RopeScaling = Literal["none", "linear", "llama3", "yarn"]
QKNorm = Literal["none", "head", "full"]
AttentionKind = Literal["gqa", "mla"]


@dataclass
class ModelConfig:
    vocab_size: int = field(4096, help="Vocabulary size (set from the tokenizer when training).")
    dim: int = field(128, help="Model (residual stream) width.")
    n_layers: int = field(4, help="Number of transformer blocks.")
    n_heads: int = field(4, help="Attention query heads.")
    n_kv_heads: int = field(2, help="Key/value heads (grouped-query attention); divides n_heads.")
    head_dim_override: int = field(
        0, help="Width of one attention head; 0 means dim / n_heads (imported models may differ).")
    max_seq_len: int = field(512, help="Longest sequence the RoPE tables and KV cache cover.")
    rope_theta: float = field(10000.0, help="RoPE base frequency.")
    rope_scaling: RopeScaling = field(
        "none", help="RoPE frequency scaling: 'none', 'linear' (position interpolation), 'llama3' "
                     "(Llama 3.1's per-band scaling) or 'yarn'.")
    rope_factor: float = field(1.0, help="RoPE scaling factor (context extension ratio).")
    rope_original_max_len: int = field(
        0, help="'llama3' / 'yarn': the context length the model was pretrained at.")
    rope_low_freq_factor: float = field(1.0, help="'llama3': wavelengths above original/low are scaled fully.")
    rope_high_freq_factor: float = field(4.0, help="'llama3': wavelengths below original/high are kept.")
    rope_beta_fast: float = field(32.0, help="'yarn': rotations at which interpolation stops (fast end).")
    rope_beta_slow: float = field(1.0, help="'yarn': rotations at which interpolation is full (slow end).")
    rope_attn_factor: float = field(
        0.0, help="'yarn': attention scale applied to cos/sin; 0 means 0.1 ln(factor) + 1.")
    attention: AttentionKind = field(
        "gqa", help="'gqa' (grouped-query attention) or 'mla' (multi-head latent attention: keys and "
                    "values from a low-rank compressed projection, DeepSeek-V3).")
    q_lora_rank: int = field(0, help="'mla': rank of the compressed query projection (0 = a full projection).")
    kv_lora_rank: int = field(0, help="'mla': rank of the compressed key/value projection.")
    qk_rope_head_dim: int = field(0, help="'mla': width of the rotary part of each query/key head.")
    qk_nope_head_dim: int = field(0, help="'mla': width of the non-rotary part of each query/key head.")
    v_head_dim: int = field(0, help="'mla': width of each value head.")
    rope_interleave: bool = field(
        False, help="RoPE rotates interleaved pairs (x0, x1), (x2, x3) ... instead of halves (DeepSeek-V3).")
    rope_mscale: float = field(0.0, help="'yarn' (DeepSeek): mscale of the attention factor (0 = off).")
    rope_mscale_all_dim: float = field(0.0, help="'yarn' (DeepSeek): mscale_all_dim (0 = off).")
    qkv_bias: bool = field(False, help="Biases on the query, key and value projections (Qwen2).")
    o_bias: bool = field(False, help="Bias on the attention output projection.")
    qk_norm: QKNorm = field(
        "none", help="RMSNorm on queries and keys: 'none', 'head' (per head, Qwen3) or 'full' "
                     "(over all heads before the split, OLMoE).")
    attn_scale: float = field(0.0, help="Attention logit scale; 0 means 1 / sqrt(head_dim).")
    sliding_window: int = field(0, help="Each query sees at most this many latest keys (0 = no window).")
    embed_scale: float = field(1.0, help="Multiplier on the token embeddings (Granite).")
    residual_scale: float = field(1.0, help="Multiplier on each block's attention and FFN outputs (Granite).")
    logits_scale: float = field(1.0, help="Multiplier on the output logits (Granite divides by logits_scaling).")
    norm_eps: float = field(1e-6, help="RMSNorm epsilon.")
    tie_embeddings: bool = field(True, help="Share the input embedding with the output head.")
    init_std: float = field(0.02, help="Std of the normal initialisation of linear weights.")

    n_dense_layers: int = field(1, help="The first n layers use a dense SwiGLU FFN, not MoE.")
    dense_inter_dim: int = field(
        384, help="Hidden width of dense FFNs (dense layers, and every layer in 'dense' mode).")
    n_experts: int = field(16, help="Routed experts per MoE layer.")
    n_shared_experts: int = field(1, help="Always-on shared experts per MoE layer.")
    moe_inter_dim: int = field(96, help="Hidden width of each (routed or shared) expert.")
    shared_inter_dim: int = field(
        0, help="Hidden width of the shared experts together; 0 means n_shared_experts * moe_inter_dim.")
    shared_gate: bool = field(
        False, help="Scale the shared experts' output by a learned per-token sigmoid gate (Qwen2-MoE).")

    router_mode: RouterMode = field(
        "dynamic", help="'dense' (no MoE), 'topk' (fixed k) or 'dynamic' (k per token).")
    score_fn: Literal["softmax", "sigmoid"] = field(
        "softmax", help="Router scores: softmax over experts, or independent sigmoids.")
    top_k: int = field(2, help="Experts per token in 'topk' mode.")
    target_k: float = field(2.5, help="'dynamic': average experts per token the controller holds.")
    min_k: int = field(1, help="'dynamic': fewest experts a token may use.")
    max_k: int = field(4, help="'dynamic': most experts a token may use (padded width of routing).")
    threshold_init: float = field(
        0.5, help="'dynamic': initial routing-mass threshold (the controller adapts it).")
    threshold_lr: float = field(
        0.02, help="'dynamic': controller step: threshold += lr * (target_k - measured_k).")
    threshold_ramp: float = field(
        0.0, help="'dynamic': routing mass over which an expert's weight fades out below the threshold (0: a "
                  "hard cut). An expert whose preceding mass lies within this of the threshold is weighted "
                  "(threshold - mass) / ramp, so that a small change of the scores (rounding, say) moves the "
                  "output a little instead of adding or dropping a whole expert. The same experts run.")
    norm_topk_prob: bool = field(True, help="Renormalise the chosen experts' weights to sum to 1.")
    expert_weights: Literal["router", "unit"] = field(
        "router", help="How chosen experts' outputs combine: weighted by their router scores, or summed "
                       "with weight 1 ('unit': experts cut from one dense FFN, whose sum is that FFN).")
    routed_scaling: float = field(1.0, help="Scale applied to the routed experts' output.")
    router_groups: int = field(
        1, help="Group-limited routing (DeepSeek-V3): experts form this many groups, and a token chooses "
                "only among the router_topk_groups groups whose two best experts score highest.")
    router_topk_groups: int = field(1, help="Groups a token may choose experts from (see router_groups).")

    balance_bias: bool = field(
        True, help="Auxiliary-loss-free balancing: per-expert selection bias nudged toward equal load.")
    bias_update_rate: float = field(
        0.05, help="Balancing bias step per training step, times the relative load error (logit units).")
    aux_loss_coef: float = field(0.0, help="Sequence-level balance loss weight (0 = off).")
    z_loss_coef: float = field(0.0, help="Router z-loss weight (0 = off).")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len",
                     "dense_inter_dim", "moe_inter_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("head_dim_override", "shared_inter_dim", "sliding_window", "rope_original_max_len"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.attention == "mla":
            for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, name) <= 0:
                    raise ConfigError(f"model.attention 'mla' needs model.{name} > 0")
            if self.n_kv_heads != self.n_heads:
                raise ConfigError("model.attention 'mla' has one key/value head per query head: n_kv_heads = n_heads")
        if self.router_groups < 1 or self.n_experts % self.router_groups \
                or not 1 <= self.router_topk_groups <= self.router_groups:
            raise ConfigError(f"model.router_groups ({self.router_groups}) must divide n_experts ({self.n_experts}) "
                              f"and 1 <= router_topk_groups ({self.router_topk_groups}) <= router_groups")
        if not self.head_dim_override and self.attention == "gqa" and self.dim % self.n_heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads})")
        if self.rope_dim % 2:
            raise ConfigError(f"model RoPE width ({self.rope_dim}) must be even")
        if self.rope_scaling != "none" and self.rope_factor <= 0:
            raise ConfigError(f"model.rope_factor must be positive, got {self.rope_factor}")
        if self.rope_scaling in ("llama3", "yarn") and not self.rope_original_max_len:
            raise ConfigError(f"model.rope_scaling '{self.rope_scaling}' needs model.rope_original_max_len")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise ConfigError(f"model.n_dense_layers must be in [0, n_layers], got {self.n_dense_layers}")
        if self.router_mode != "dense":
            if self.n_experts < 2:
                raise ConfigError(f"model.n_experts must be >= 2 for MoE, got {self.n_experts}")
            if self.n_shared_experts < 0:
                raise ConfigError("model.n_shared_experts must be >= 0")
        if self.router_mode == "topk" and not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(f"model.top_k must be in [1, n_experts], got {self.top_k}")
        if self.router_mode == "dynamic":
            if not 1 <= self.min_k <= self.max_k <= self.n_experts:
                raise ConfigError(
                    f"model needs 1 <= min_k <= max_k <= n_experts, got {self.min_k}, {self.max_k}, "
                    f"{self.n_experts}")
            if not self.min_k <= self.target_k <= self.max_k:
                raise ConfigError(
                    f"model.target_k ({self.target_k}) must lie in [min_k, max_k] = "
                    f"[{self.min_k}, {self.max_k}]")
            if not 0.0 <= self.threshold_ramp <= 1.0:
                raise ConfigError(f"model.threshold_ramp must be in [0, 1], got {self.threshold_ramp}")
            if not 0.0 < self.threshold_init <= 1.0:
                raise ConfigError(f"model.threshold_init must be in (0, 1], got {self.threshold_init}")

    @property
    def head_dim(self) -> int:
        """Width of one cached key/value head (MLA: the wider of query/key and value heads)."""
        if self.attention == "mla":
            return max(self.qk_nope_head_dim + self.qk_rope_head_dim, self.v_head_dim)
        return self.head_dim_override or self.dim // self.n_heads

    @property
    def rope_dim(self) -> int:
        """Width of the rotary part of a query/key head."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def shared_dim(self) -> int:
        """Hidden width of the shared experts together (0: none)."""
        if not self.n_shared_experts:
            return 0
        return self.shared_inter_dim or self.n_shared_experts * self.moe_inter_dim

    @property
    def is_moe(self) -> bool:
        return self.router_mode != "dense"

    @property
    def k_max(self) -> int:
        """Padded width of the routing output."""
        return self.top_k if self.router_mode == "topk" else self.max_k

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers if self.is_moe else 0

    def is_moe_layer(self, layer_id: int) -> bool:
        return self.is_moe and layer_id >= self.n_dense_layers

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return from_dict(cls, data, prefix="model.")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict] = {
    # Tests: 2 layers (1 dense, 1 MoE), dim 64, 8 experts. Seconds on CPU.
    "debug": dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                  n_dense_layers=1, dense_inter_dim=128, n_experts=8, n_shared_experts=1,
                  moe_inter_dim=32, max_k=4, target_k=2.5),
    # The quickstart: trains in a few minutes on 2 CPU cores.
    "tiny": dict(vocab_size=4096, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256,
                 n_dense_layers=1, dense_inter_dim=384, n_experts=16, n_shared_experts=1,
                 moe_inter_dim=96, max_k=4, target_k=2.5),
    # ~108M total parameters (~28M active per token): for a GPU.
    "small": dict(vocab_size=16384, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=1024,
                  n_dense_layers=1, dense_inter_dim=1536, n_experts=32, n_shared_experts=1,
                  moe_inter_dim=256, max_k=6, target_k=2.5),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}' (known: {', '.join(PRESETS)})")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
