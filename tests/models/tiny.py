"""Tiny randomly initialised pretrained-layout models for the import tests: a transformers model
of each supported architecture saved as a Hugging Face folder, a small byte-level BPE tokenizer
with a ChatML template, and GGUF files written the way llama.cpp writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 320  # the tokenizer has fewer tokens; the model's embedding is padded, as real ones often are
TEXT = ("Glaucoma damages the optic nerve. The quick brown fox jumps over the lazy dog 12 times. "
        "Markets rose 3.5% as bond yields fell; the court held that the clause was void.")


def tokenizer_json():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 20, trainer=trainer)
    return tok


def hf_config(arch: str, **overrides):
    import transformers

    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2, bos_token_id=1,
                 pad_token_id=None, tie_word_embeddings=False)
    moe = dict(num_experts_per_tok=2)
    if arch == "llama":  # Llama 3.1's RoPE scaling and attention biases, unless overridden
        return transformers.LlamaConfig(**{**small, "attention_bias": True, "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, **overrides})
    small.update(overrides)
    if arch == "mistral":  # a sliding window shorter than the test sequences
        return transformers.MistralConfig(**small, sliding_window=16)
    if arch == "qwen2":
        return transformers.Qwen2Config(**{**small, "tie_word_embeddings": True})
    if arch == "qwen3":  # head width that is not dim / heads, QK-norm, YaRN
        return transformers.Qwen3Config(**small, head_dim=32, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64})
    if arch == "mixtral":
        return transformers.MixtralConfig(**small, num_local_experts=4, **moe)
    if arch == "qwen2_moe":
        return transformers.Qwen2MoeConfig(**small, num_experts=4, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=48, norm_topk_prob=False, **moe)
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**small, num_experts=4, moe_intermediate_size=32, norm_topk_prob=True,
                                           **moe)
    if arch == "olmoe":
        return transformers.OlmoeConfig(**small, num_experts=4, **moe)
    if arch == "granitemoe":
        return transformers.GraniteMoeConfig(**small, num_local_experts=4, embedding_multiplier=6.0,
                                             residual_multiplier=0.3, attention_multiplier=0.2,
                                             logits_scaling=4.0, **moe)
    if arch == "deepseek_v3":
        # compressed queries, values wider than keys, group-limited routing, one dense layer first
        return transformers.DeepseekV3Config(**{**small, "num_hidden_layers": 3, "num_key_value_heads": 4}, n_routed_experts=8,
                                             moe_intermediate_size=32, n_shared_experts=1, q_lora_rank=24,
                                             kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=24,
                                             n_group=4, topk_group=2, first_k_dense_replace=1,
                                             routed_scaling_factor=2.5, **moe)
    raise ValueError(arch)


def hf_model(arch: str, seed: int = 0, **overrides):
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(arch, **overrides)).eval()
    with torch.no_grad():  # random norms and biases, so that a missed one shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model


def save_hf_folder(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer_json().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": None}), encoding="utf-8")
    return folder


# --- GGUF, as llama.cpp's converter writes a Llama model ------------------------------------------
def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def sentencepiece_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style BPE vocabulary as GGUF stores one (pieces, scores, token types):
    <unk> <s> </s>, the 256 byte pieces <0x00>..<0xFF>, then "▁"-spelled pieces learned from TEXT,
    scored by the order they were learned in."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    bpe.train_from_iterator([TEXT] * 20, trainer=trainers.BpeTrainer(vocab_size=size - 259, show_progress=False))
    pieces = [t for t, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    pad = size - len(tokens)
    return tokens + [f"[PAD{i}]" for i in range(pad)], scores + [-1e9] * pad, types + [5] * pad


def _gguf_header(model, path: Path, arch: str, pre: str):
    """A GGUFWriter with the model's shape and the test tokenizer (vocabulary, merges, ChatML);
    ``pre="sentencepiece"`` writes a SentencePiece BPE vocabulary instead."""
    import gguf

    cfg = model.config
    tok = tokenizer_json()
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), cfg.vocab_size)]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if pre == "sentencepiece":
        tokens, scores, types = sentencepiece_vocab(cfg.vocab_size)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_add_space_prefix(True)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        return w
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else (5 if t.startswith("[PAD") else 1) for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHATML)
    return w


def _gguf_finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gguf(model, path: Path, qtype: str = "Q8_0", pre: str = "gpt2", raw_override=None) -> Path:
    """A GGUF file of a transformers Llama model. Matrices are stored as ``qtype`` (norms as F32);
    ``raw_override`` (a K-quant name) writes random blocks of that type instead: the gguf package
    reads K-quants but cannot write them."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    cfg = model.config
    w = _gguf_header(model, path, "llama", pre)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    rng = np.random.default_rng(0)
    for hf_name, tensor in model.state_dict().items():
        if hf_name in names:
            name = names[hf_name]
        else:
            layer, rest = hf_name.split(".", 3)[2], hf_name.split(".", 3)[3]
            module, kind = rest.rsplit(".", 1)
            name = f"blk.{layer}.{block[module]}.{kind}"
        data = tensor.float().numpy()
        if name.endswith("attn_q.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        if data.ndim == 1:
            w.add_tensor(name, data)
        elif raw_override is not None and name != "token_embd.weight":
            w.add_tensor(name, _random_k_blocks(raw_override, data.shape, rng), raw_dtype=Q[raw_override])
        else:
            w.add_tensor(name, gguf.quants.quantize(data, Q[qtype]), raw_dtype=Q[qtype])
    _gguf_finish(w)
    return path


# bytes per block of 256 values, and where each block's fp16 scales sit
_K_LAYOUT = {"Q4_K": (144, (0, 2)), "Q6_K": (210, (208,))}


def _random_k_blocks(kind: str, shape: tuple[int, int], rng) -> np.ndarray:
    size, scale_at = _K_LAYOUT[kind]
    rows, cols = shape
    assert cols % 256 == 0, "K-quant rows hold multiples of 256 values"
    blocks = rng.integers(0, 256, size=(rows, cols // 256, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    for at in scale_at:  # random bytes there could be NaN or inf
        blocks[..., at:at + 2] = scale
    return blocks.reshape(rows, -1)


def write_moe_gguf(model, path: Path, arch: str, qtype: str = "F32") -> Path:
    """A GGUF file of a transformers Qwen2-MoE or Qwen3-MoE model ("qwen2moe" / "qwen3moe"), laid
    out as llama.cpp's converter lays it out: experts stacked per layer, no query/key reordering."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    cfg = model.config
    w = _gguf_header(model, path, arch, "qwen2")
    w.add_expert_count(cfg.num_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    block = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate": "ffn_gate_inp",
             "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
             "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
    state = model.state_dict()
    out = {"token_embd.weight": state.pop("model.embed_tokens.weight"),
           "output_norm.weight": state.pop("model.norm.weight"), "output.weight": state.pop("lm_head.weight")}
    for i in range(cfg.num_hidden_layers):  # transformers keeps experts fused in memory: (E, 2H, D), (E, D, H)
        gate_up = state.pop(f"model.layers.{i}.mlp.experts.gate_up_proj")
        H = gate_up.shape[1] // 2
        out[f"blk.{i}.ffn_gate_exps.weight"], out[f"blk.{i}.ffn_up_exps.weight"] = gate_up[:, :H], gate_up[:, H:]
        out[f"blk.{i}.ffn_down_exps.weight"] = state.pop(f"model.layers.{i}.mlp.experts.down_proj")
    for name, tensor in state.items():
        layer, rest = name.split(".", 3)[2], name.split(".", 3)[3]
        module, kind = rest.rsplit(".", 1)
        out[f"blk.{layer}.{block[module]}.{kind}"] = tensor
    for name, tensor in out.items():
        data = tensor.float().numpy()
        if data.ndim == 1 or qtype == "F32" or data.shape[-1] % 32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, Q[qtype]), raw_dtype=Q[qtype])
    _gguf_finish(w)
    return path
