"""Hugging Face layouts: a model's ``config.json`` and its tensor names, read into lightseek's
``ModelConfig`` and state-dict names.

One table per concern: `config_from_hf` turns each supported ``model_type`` into configuration
fields of the one lightseek model (never a fork of it), and `convert_state` renames and stacks
tensors. Anything the model cannot express is an `ImportError_` that names the field at fault,
raised before a single tensor is read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from lightseek.errors import CheckpointError
from lightseek.model.config import ModelConfig

DENSE_ARCHS = ("llama", "mistral", "qwen2", "qwen3")
MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "deepseek_v3")
SUPPORTED_ARCHS = DENSE_ARCHS + MOE_ARCHS


class UnsupportedModel(CheckpointError):
    """An architecture, option or tensor lightseek's model cannot represent."""


def _rope_fields(hf: Mapping, origin: str) -> dict:
    """RoPE theta and scaling, from transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` / ``rope_scaling`` pair."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = {**legacy, **{k: v for k, v in params.items() if k != "rope_theta"}}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    out = {"rope_theta": float(theta)}
    if kind in (None, "default"):
        return out
    if kind not in ("linear", "llama3", "yarn"):
        raise UnsupportedModel(f"{origin}: RoPE scaling {kind!r} is not supported (linear, llama3, yarn are)")
    out.update(rope_scaling=kind, rope_factor=float(scaling.get("factor", 1.0)))
    if kind == "llama3":
        out.update(rope_original_max_len=int(scaling["original_max_position_embeddings"]),
                   rope_low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
                   rope_high_freq_factor=float(scaling.get("high_freq_factor", 4.0)))
    elif kind == "yarn":
        original = scaling.get("original_max_position_embeddings") or \
            int(hf["max_position_embeddings"] / out["rope_factor"])
        if scaling.get("truncate") is False:
            raise UnsupportedModel(f"{origin}: YaRN with truncate=false is not supported")
        out.update(rope_original_max_len=int(original),
                   rope_mscale=float(scaling.get("mscale") or 0.0),
                   rope_mscale_all_dim=float(scaling.get("mscale_all_dim") or 0.0),
                   rope_beta_fast=float(scaling.get("beta_fast") or 32.0),
                   rope_beta_slow=float(scaling.get("beta_slow") or 1.0),
                   rope_attn_factor=float(scaling.get("attention_factor") or 0.0))
    return out


def _sliding_window(hf: Mapping, origin: str) -> int:
    window = hf.get("sliding_window") or 0
    if "use_sliding_window" in hf and not hf["use_sliding_window"]:
        window = 0
    types = set(hf.get("layer_types") or [])
    if "sliding_attention" in types and "full_attention" in types:
        raise UnsupportedModel(f"{origin}: a mix of sliding-window and full-attention layers is not supported")
    if types == {"full_attention"}:
        window = 0
    return int(window)


def _dense_layers(hf: Mapping, origin: str) -> int:
    """How many leading layers are dense in an MoE model (lightseek puts dense layers first)."""
    if hf.get("decoder_sparse_step", 1) != 1:
        raise UnsupportedModel(f"{origin}: decoder_sparse_step {hf['decoder_sparse_step']} (MoE every "
                               "n-th layer) is not supported; dense layers must come first")
    dense = sorted(hf.get("mlp_only_layers") or [])
    if dense != list(range(len(dense))):
        raise UnsupportedModel(f"{origin}: mlp_only_layers {dense} are not the leading layers")
    return len(dense)


def config_from_hf(hf: Mapping, origin: str, max_seq_len: int | None = None) -> ModelConfig:
    """lightseek's ModelConfig for a transformers ``config.json`` (as a dict)."""
    arch = hf.get("model_type")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModel(f"{origin}: architecture {arch!r} is not supported "
                               f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"{origin}: activation {hf['hidden_act']!r} is not supported (SwiGLU with silu is)")
    if hf.get("mlp_bias"):
        raise UnsupportedModel(f"{origin}: mlp_bias=true (biases in the feed-forward layers) is not supported")
    if hf.get("clip_qkv"):
        raise UnsupportedModel(f"{origin}: clip_qkv={hf['clip_qkv']} is not supported")
    try:
        dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        fields = dict(
            vocab_size=int(hf["vocab_size"]), dim=dim, n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            max_seq_len=int(max_seq_len or hf.get("max_position_embeddings", 2048)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            dense_inter_dim=int(hf["intermediate_size"]),
            router_mode="dense", n_dense_layers=0, balance_bias=False,
            **_rope_fields(hf, origin),
        )
    except KeyError as e:
        raise CheckpointError(f"{origin}: config.json has no {e.args[0]!r}") from None
    head_dim = hf.get("head_dim")
    if head_dim and int(head_dim) != dim // n_heads:
        fields["head_dim_override"] = int(head_dim)
    attn_bias = bool(hf.get("attention_bias", False))
    fields.update(qkv_bias=attn_bias, o_bias=attn_bias, sliding_window=_sliding_window(hf, origin))
    if arch in ("qwen2", "qwen2_moe"):
        fields.update(qkv_bias=True, o_bias=False)
    if arch in ("qwen3", "qwen3_moe"):
        fields["qk_norm"] = "head"
    if arch == "olmoe":
        fields["qk_norm"] = "full"
    if arch in MOE_ARCHS:
        n_experts = int(hf.get("num_local_experts") or hf.get("num_experts") or hf.get("n_routed_experts"))
        top_k = int(hf["num_experts_per_tok"])
        fields.update(router_mode="topk", n_experts=n_experts, top_k=top_k, max_k=top_k, min_k=1,
                      target_k=float(top_k), score_fn="softmax", n_shared_experts=0,
                      n_dense_layers=_dense_layers(hf, origin),
                      moe_inter_dim=int(hf.get("moe_intermediate_size") or hf["intermediate_size"]),
                      # Mixtral and Granite renormalise the chosen experts' weights (softmax over
                      # the top-k logits is the same thing); the Qwen MoEs and OLMoE say so
                      norm_topk_prob=bool(hf.get("norm_topk_prob", arch in ("mixtral", "granitemoe"))))
    if arch == "qwen2_moe":
        fields.update(n_shared_experts=1, shared_gate=True,
                      shared_inter_dim=int(hf["shared_expert_intermediate_size"]))
    if arch == "deepseek_v3":
        fields.update(attention="mla", n_kv_heads=n_heads, q_lora_rank=int(hf.get("q_lora_rank") or 0),
                      kv_lora_rank=int(hf["kv_lora_rank"]), qk_rope_head_dim=int(hf["qk_rope_head_dim"]),
                      qk_nope_head_dim=int(hf["qk_nope_head_dim"]), v_head_dim=int(hf["v_head_dim"]),
                      rope_interleave=bool(hf.get("rope_interleave", True)), head_dim_override=0,
                      # sigmoid scores; the checkpoint's selection bias (e_score_correction_bias) is
                      # lightseek's balancing bias, and group-limited choice its router groups
                      score_fn="sigmoid", balance_bias=True, routed_scaling=float(hf.get("routed_scaling_factor", 1.0)),
                      router_groups=int(hf.get("n_group") or 1), router_topk_groups=int(hf.get("topk_group") or 1),
                      n_dense_layers=int(hf.get("first_k_dense_replace", 0)),
                      n_shared_experts=int(hf.get("n_shared_experts") or 0),
                      shared_inter_dim=int(hf.get("n_shared_experts") or 0) * int(hf["moe_intermediate_size"]))
    if arch == "granitemoe":
        fields.update(embed_scale=float(hf.get("embedding_multiplier", 1.0)),
                      residual_scale=float(hf.get("residual_multiplier", 1.0)),
                      attn_scale=float(hf.get("attention_multiplier", 0.0)),
                      logits_scale=1.0 / float(hf.get("logits_scaling", 1.0)))
    return ModelConfig.from_dict(fields)


# --- tensors -----------------------------------------------------------------------------------
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_PER_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn.wq.weight", "self_attn.q_proj.bias": "attn.wq.bias",
    "self_attn.k_proj.weight": "attn.wk.weight", "self_attn.k_proj.bias": "attn.wk.bias",
    "self_attn.v_proj.weight": "attn.wv.weight", "self_attn.v_proj.bias": "attn.wv.bias",
    "self_attn.o_proj.weight": "attn.wo.weight", "self_attn.o_proj.bias": "attn.wo.bias",
    "self_attn.q_norm.weight": "attn.q_norm.weight", "self_attn.k_norm.weight": "attn.k_norm.weight",
    "mlp.gate_proj.weight": "ffn.w1.weight", "mlp.up_proj.weight": "ffn.w3.weight",
    "mlp.down_proj.weight": "ffn.w2.weight",
    # routers
    "mlp.gate.weight": "ffn.router.weight", "block_sparse_moe.gate.weight": "ffn.router.weight",
    "block_sparse_moe.router.layer.weight": "ffn.router.weight",
    # shared experts (Qwen2-MoE)
    "mlp.shared_expert.gate_proj.weight": "ffn.shared.w1.weight",
    "mlp.shared_expert.up_proj.weight": "ffn.shared.w3.weight",
    "mlp.shared_expert.down_proj.weight": "ffn.shared.w2.weight",
    "mlp.shared_expert_gate.weight": "ffn.shared_gate.weight",
    # DeepSeek-V3: latent attention, selection bias, shared experts
    "self_attn.q_a_proj.weight": "attn.wq_a.weight", "self_attn.q_a_proj.bias": "attn.wq_a.bias",
    "self_attn.q_a_layernorm.weight": "attn.q_a_norm.weight", "self_attn.q_b_proj.weight": "attn.wq_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn.wkv_a.weight", "self_attn.kv_a_proj_with_mqa.bias": "attn.wkv_a.bias",
    "self_attn.kv_a_layernorm.weight": "attn.kv_a_norm.weight", "self_attn.kv_b_proj.weight": "attn.wkv_b.weight",
    "mlp.gate.e_score_correction_bias": "ffn.router.bias_E",
    "mlp.shared_experts.gate_proj.weight": "ffn.shared.w1.weight",
    "mlp.shared_experts.up_proj.weight": "ffn.shared.w3.weight",
    "mlp.shared_experts.down_proj.weight": "ffn.shared.w2.weight",
}
_GLOBAL = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "head.weight"}
# per-expert tensors: (regex on the layer-relative name) -> which stacked weight, transposed
_EXPERT = re.compile(r"^(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
_EXPERT_ROLE = {"gate_proj": "w1", "w1": "w1", "up_proj": "w3", "w3": "w3", "down_proj": "w2", "w2": "w2"}


def convert_state(cfg: ModelConfig, names: list[str], read: Callable[[str], torch.Tensor],
                  origin: str) -> dict[str, torch.Tensor]:
    """lightseek's state dict from tensors named as transformers names them. ``read(name)``
    loads one tensor, so a large model is converted tensor by tensor."""
    state: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    unknown = []
    for name in names:
        if name in _GLOBAL:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue  # tied to the embedding
            state[_GLOBAL[name]] = read(name)
            continue
        m = _LAYER.match(name)
        if not m:
            unknown.append(name)
            continue
        layer, rest = int(m.group(1)), m.group(2)
        prefix = f"layers.{layer}."
        if rest in _PER_LAYER:
            state[prefix + _PER_LAYER[rest]] = read(name)
        elif e := _EXPERT.match(rest):
            experts.setdefault((layer, _EXPERT_ROLE[e.group(2)]), {})[int(e.group(1))] = read(name)
        elif rest in ("block_sparse_moe.input_linear.weight", "mlp.experts.gate_up_proj"):
            gate_up = read(name)                                   # (E, 2H, D): gate rows, then up rows
            H = gate_up.shape[1] // 2
            state[prefix + "ffn.w1_EDH"] = gate_up[:, :H].transpose(1, 2).contiguous()
            state[prefix + "ffn.w3_EDH"] = gate_up[:, H:].transpose(1, 2).contiguous()
        elif rest in ("block_sparse_moe.output_linear.weight", "mlp.experts.down_proj",
                      "mlp.experts.down_stack.weight"):
            state[prefix + "ffn.w2_EHD"] = read(name).transpose(1, 2).contiguous()  # (E, D, H) -> (E, H, D)
        elif rest in ("mlp.experts.gate_stack.weight", "mlp.experts.up_stack.weight"):  # GGUF: (E, H, D)
            key = "ffn.w1_EDH" if "gate" in rest else "ffn.w3_EDH"
            state[prefix + key] = read(name).transpose(1, 2).contiguous()
        else:
            unknown.append(name)
    if unknown:
        raise UnsupportedModel(f"{origin}: tensor {unknown[0]!r} has no place in lightseek's model"
                               + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for (layer, role), by_index in experts.items():
        if sorted(by_index) != list(range(cfg.n_experts)):
            raise CheckpointError(f"{origin}: layer {layer} has experts {sorted(by_index)[:4]}..., "
                                  f"expected 0..{cfg.n_experts - 1}")
        stacked = torch.stack([by_index[j] for j in range(cfg.n_experts)])       # (E, out, in)
        key = {"w1": "ffn.w1_EDH", "w3": "ffn.w3_EDH", "w2": "ffn.w2_EHD"}[role]
        state[f"layers.{layer}.{key}"] = stacked.transpose(1, 2).contiguous()   # (E, in, out)
    return state
