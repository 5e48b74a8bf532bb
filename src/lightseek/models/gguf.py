"""GGUF files (llama.cpp's format) read into transformers-style config and tensor names, so that
`lightseek.models.hf` does the rest. Tensors are dequantized with the `gguf` package that
llama.cpp maintains; the tokenizer is rebuilt from the file's metadata for the `tokenizers`
library.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from lightseek.data.tokenizer import ChatSpec, end_of_turn_tokens
from lightseek.errors import CheckpointError
from lightseek.models.hf import UnsupportedModel

# Quant types lightseek reads (the gguf package dequantizes them); others are refused by name.
SUPPORTED_QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# GGUF architectures and the transformers model_type they become. llama.cpp writes Mistral
# checkpoints as "llama", and Mixtral as "llama" with expert tensors.
GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
          # MoE: the router, every expert's matrices stacked in one tensor, the shared expert
          "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.gate_stack",
          "ffn_up_exps": "mlp.experts.up_stack", "ffn_down_exps": "mlp.experts.down_stack",
          "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
          "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")

# Pre-tokenizers llama.cpp names in `tokenizer.ggml.pre`, as `tokenizers` components.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(kind: str, origin: str):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind in ("default", "gpt2", "gpt-2"):
        return byte_level
    if kind == "smollm":  # each digit on its own, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}.get(kind)
    if split is None:
        raise UnsupportedModel(f"{origin}: pre-tokenizer {kind!r} is not supported "
                               "(smollm, gpt2, llama-bpe and qwen2 are)")
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


class GGUFModel:
    """One GGUF file: its metadata as a transformers config, its tensors by transformers name."""

    def __init__(self, path: str | Path):
        try:
            from gguf import GGUFReader
        except ImportError:
            raise CheckpointError('reading GGUF files needs the gguf package: pip install "lightseek[gguf]"') from None
        self.path = Path(path)
        self.origin = str(self.path)
        try:
            self.reader = GGUFReader(self.path)
        except Exception as e:  # the reader raises ValueError, struct.error, IndexError ... on damage
            raise CheckpointError(f"{self.origin}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self.arch = self.meta("general.architecture")
        if self.arch not in GGUF_ARCHS:
            raise UnsupportedModel(f"{self.origin}: GGUF architecture {self.arch!r} is not supported "
                                   f"(supported: {', '.join(GGUF_ARCHS)})")
        self.tensors = {t.name: t for t in self.reader.tensors}
        for t in self.reader.tensors:
            if t.tensor_type.name not in SUPPORTED_QUANTS:
                raise UnsupportedModel(f"{self.origin}: tensor {t.name} has quant type {t.tensor_type.name}, "
                                       f"which lightseek does not read (it reads {', '.join(SUPPORTED_QUANTS)})")

    def meta(self, key: str, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            if default is not None:
                return default
            raise CheckpointError(f"{self.origin}: metadata {key!r} is missing")
        return field.contents()

    def hf_config(self) -> dict:
        a = self.arch
        n_heads = int(self.meta(f"{a}.attention.head_count"))
        dim = int(self.meta(f"{a}.embedding_length"))
        config = {
            "model_type": GGUF_ARCHS[a],
            "vocab_size": int(self.meta(f"{a}.vocab_size", len(self.meta("tokenizer.ggml.tokens")))),
            "hidden_size": dim,
            "intermediate_size": int(self.meta(f"{a}.feed_forward_length")),
            "num_hidden_layers": int(self.meta(f"{a}.block_count")),
            "num_attention_heads": n_heads,
            "num_key_value_heads": int(self.meta(f"{a}.attention.head_count_kv", n_heads)),
            "head_dim": int(self.meta(f"{a}.attention.key_length", dim // n_heads)),
            "max_position_embeddings": int(self.meta(f"{a}.context_length")),
            "rms_norm_eps": float(self.meta(f"{a}.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.meta(f"{a}.rope.freq_base", 10000.0)),
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "attention_bias": "blk.0.attn_q.bias" in self.tensors and a == "llama",
        }
        scaling = self.meta(f"{a}.rope.scaling.type", "none")
        if scaling not in ("none", ""):
            config["rope_scaling"] = {
                "rope_type": scaling, "factor": float(self.meta(f"{a}.rope.scaling.factor")),
                "original_max_position_embeddings": int(self.meta(f"{a}.rope.scaling.original_context_length", 0))}
        moe_layers = [n for n in self.tensors if n.endswith("ffn_gate_exps.weight")]
        if moe_layers:
            if len(moe_layers) != config["num_hidden_layers"]:
                raise UnsupportedModel(f"{self.origin}: MoE files with dense layers are not supported yet")
            config.update(num_experts=int(self.meta(f"{a}.expert_count")),
                          num_experts_per_tok=int(self.meta(f"{a}.expert_used_count")),
                          moe_intermediate_size=int(self.meta(f"{a}.expert_feed_forward_length")),
                          # llama.cpp renormalises the chosen experts' weights for Mixtral and
                          # Qwen3-MoE files, not for Qwen2-MoE ones
                          norm_topk_prob=a != "qwen2moe")
            if a == "llama":
                config["model_type"] = "mixtral"
            elif a == "qwen2moe":
                config["shared_expert_intermediate_size"] = int(
                    self.meta(f"{a}.expert_shared_feed_forward_length"))
        return config

    def tensor_names(self) -> list[str]:
        names = []
        for name in self.tensors:
            if name in _GLOBAL:
                names.append(_GLOBAL[name])
            elif (m := _BLOCK_NAME.match(name)) and m.group(2) in _BLOCK:
                names.append(f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}")
            elif name == "rope_freqs.weight":  # llama.cpp's copy of the llama3 RoPE factors: derived here
                continue
            else:
                raise UnsupportedModel(f"{self.origin}: tensor {name!r} has no place in lightseek's model")
        self._by_hf = dict(zip(names, (n for n in self.tensors if n != "rope_freqs.weight")))
        return names

    def read(self, hf_name: str) -> torch.Tensor:
        """One tensor by its transformers name, dequantized to fp32, in transformers' layout."""
        from gguf import GGMLQuantizationType, dequantize

        t = self.tensors[self._by_hf[hf_name]]
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest dimension first
        try:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                data = np.asarray(t.data, dtype=np.float32)
            else:
                data = dequantize(t.data, t.tensor_type)
            data = data.reshape(shape)
        except (ValueError, IndexError) as e:
            raise CheckpointError(f"{self.origin}: tensor {t.name} is damaged ({e})") from None
        if self.arch == "llama" and (".q_proj.weight" in hf_name or ".k_proj.weight" in hf_name):
            heads = self.meta("llama.attention.head_count" if ".q_proj" in hf_name else "llama.attention.head_count_kv")
            data = _unpermute_rope(data, int(heads))
        return torch.from_numpy(np.array(data, dtype=np.float32, copy=True))

    # --- tokenizer -----------------------------------------------------------------------------
    def tokenizer(self):
        """(a `tokenizers.Tokenizer`, ChatSpec) from the file's vocabulary, merges and template."""
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as HFTokenizer

        kind = self.meta("tokenizer.ggml.model")
        tokens = list(self.meta("tokenizer.ggml.tokens"))
        types = list(self.meta("tokenizer.ggml.token_type"))
        vocab = {t: i for i, t in enumerate(tokens)}
        if kind == "gpt2":  # byte-level BPE
            merges = [tuple(m.split(" ", 1)) for m in self.meta("tokenizer.ggml.merges")]
            tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
            tok.pre_tokenizer = _pre_tokenizer(self.meta("tokenizer.ggml.pre", "default"), self.origin)
            tok.decoder = decoders.ByteLevel()
        elif kind == "llama":  # SentencePiece BPE (Llama 2, Mistral): "▁" for spaces, bytes as <0xNN>
            tok = _sentencepiece_bpe(vocab, list(self.meta("tokenizer.ggml.scores")),
                                     bool(self.meta("tokenizer.ggml.add_space_prefix", True)))
        else:
            raise UnsupportedModel(f"{self.origin}: tokenizer type {kind!r} is not supported (byte-level BPE "
                                   "'gpt2' and SentencePiece BPE 'llama' are)")
        control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
        user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4]
        tok.add_special_tokens(control)
        if user:
            tok.add_tokens(user)

        def token(key: str) -> str | None:
            tid = self.meta(key, -1)
            return tokens[int(tid)] if 0 <= int(tid) < len(tokens) else None

        template = self.meta("tokenizer.chat_template", "") or None
        eos = token("tokenizer.ggml.eos_token_id")
        if eos is None:
            raise CheckpointError(f"{self.origin}: no end-of-sequence token in the metadata")
        chat = ChatSpec(chat_template=template, eos_token=eos, bos_token=token("tokenizer.ggml.bos_token_id"),
                        pad_token=token("tokenizer.ggml.padding_token_id"),
                        end_tokens=end_of_turn_tokens(template, tokens, eos))
        return tok, chat


def _sentencepiece_bpe(vocab: dict[str, int], scores: list[float], prefix_space: bool):
    """A `tokenizers` BPE equal to a SentencePiece BPE model from its pieces and scores. GGUF keeps
    no merges for these: a piece is the merge of any two pieces it splits into, and merges rank
    by the merged piece's score (SentencePiece merges the highest-scoring pair first)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    ranked = []  # (-score, -len(left), -len(right), pair): best first; ties keep vocabulary order
    for piece, pid in vocab.items():
        splits = sorted(((piece[:i], piece[i:]) for i in range(1, len(piece))
                         if piece[:i] in vocab and piece[i:] in vocab), key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        ranked += [(-scores[pid], -len(left), -len(right), (left, right)) for left, right in splits]
    merges = [pair for *_, pair in sorted(ranked, key=lambda r: r[:3])]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix_space else "never",
                                                 split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix_space else []))
    return tok


def _unpermute_rope(w, n_heads: int):
    """Undo llama.cpp's reordering of query/key rows (it stores each head's rotary pairs
    interleaved; transformers and lightseek rotate halves)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
