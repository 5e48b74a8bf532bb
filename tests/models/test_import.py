"""`lightseek import`: every supported architecture's logits and greedy tokens equal transformers'
on the same weights; bad sources are one clear error and leave nothing behind."""

from __future__ import annotations

import json

import pytest
import torch

from lightseek.data.chat import encode_chat
from lightseek.data.tokenizer import StreamDecoder, Tokenizer
from lightseek.errors import CheckpointError
from lightseek.model.checkpoint import load_model
from lightseek.model.generate import generate_ids
from lightseek.model.sampling import SamplingParams
from lightseek.models.hf import SUPPORTED_ARCHS
from lightseek.models.importer import import_model

transformers = pytest.importorskip("transformers", reason="parity tests compare with transformers (test extra)")
pytest.importorskip("gguf", reason="GGUF tests need the gguf package (a core dependency)")
from tests.models.tiny import CHATML, hf_model, save_hf_folder, write_gguf

PROMPT = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 64, 128, 11, 200, 31, 9, 77, 150, 12, 60, 44, 8, 19, 101, 6, 300,
                        88]])  # 24 tokens: longer than the sliding window of the Mistral case


# what a llama.cpp converter writes for a plain Llama: no biases, no RoPE scaling
PLAIN_LLAMA = {"attention_bias": False, "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}


def assert_parity(ours, theirs, new_tokens: int = 64) -> None:
    with torch.no_grad():
        ref = theirs(PROMPT).logits.float()
        got = ours(PROMPT).logits
    assert (got - ref).abs().max().item() < 1e-4
    ref_ids = theirs.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                              pad_token_id=0, min_new_tokens=new_tokens)[0, PROMPT.shape[1]:].tolist()
    got_ids = list(generate_ids(ours, PROMPT[0].tolist(), SamplingParams(temperature=0.0, max_new_tokens=new_tokens)))
    assert got_ids == ref_ids


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_hf_folder_imports_with_transformers_parity(tmp_path, arch) -> None:
    theirs = hf_model(arch)
    src = save_hf_folder(theirs, tmp_path / "src")
    ours = load_model(import_model(src, tmp_path / "ckpt", show_progress=False))
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["architecture"] == arch
    assert_parity(ours, theirs)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0"])
def test_gguf_imports_with_transformers_parity(tmp_path, qtype) -> None:
    src = write_gguf(hf_model("llama", **PLAIN_LLAMA), tmp_path / f"tiny-{qtype}.gguf", qtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=src.name, dtype=torch.float32)
    ours = load_model(import_model(src, tmp_path / "ckpt", show_progress=False))
    assert_parity(ours, theirs.eval(), new_tokens=16)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_gguf_k_quants_read_as_transformers_reads_them(tmp_path, qtype) -> None:
    model = hf_model("llama", **PLAIN_LLAMA, hidden_size=256, intermediate_size=256)
    src = write_gguf(model, tmp_path / "k.gguf", raw_override=qtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=src.name, dtype=torch.float32)
    ours = load_model(import_model(src, tmp_path / "ckpt", show_progress=False))
    with torch.no_grad():
        assert (ours(PROMPT).logits - theirs(PROMPT).logits).abs().max().item() < 1e-4


def test_gguf_tokenizer_and_chat_template(tmp_path) -> None:
    src = write_gguf(hf_model("llama", **PLAIN_LLAMA), tmp_path / "t.gguf", "F32", pre="smollm")
    tok = Tokenizer.load(import_model(src, tmp_path / "ckpt", show_progress=False))
    assert tok.chat.chat_template == CHATML
    assert tok.eot_id == tok.token_id("<|im_end|>")
    messages = [{"role": "user", "content": "Glaucoma <|im_start|>?"}, {"role": "assistant", "content": "The optic nerve."}]
    ids, mask = encode_chat(tok, messages)
    text = tok.decode(ids, skip_special=False)
    assert text == "<|im_start|>user\nGlaucoma <|im_start|>?<|im_end|>\n<|im_start|>assistant\nThe optic nerve.<|im_end|>\n"
    assert ids.count(tok.token_id("<|im_start|>")) == 2  # the user's "<|im_start|>" stays plain text
    learned = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
    assert learned == "The optic nerve.<|im_end|>"
    assert tok.encode("digits 2024") == tok.encode("digits ") + [tok.encode(d)[0] for d in "2024"]


def test_chat_encoding_matches_transformers(tmp_path) -> None:
    src = save_hf_folder(hf_model("qwen2"), tmp_path / "src")
    tok = Tokenizer.load(import_model(src, tmp_path / "ckpt", show_progress=False))
    theirs = transformers.AutoTokenizer.from_pretrained(src)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is glaucoma?"}]
    ref = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ref = ref["input_ids"] if hasattr(ref, "keys") else ref
    assert encode_chat(tok, messages, add_generation_prompt=True)[0] == list(ref)


# --- what is refused, and that nothing is left behind ------------------------------------------------
def _refused(src, out, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as e:
        import_model(src, out, show_progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_unsupported_architecture_or_option_is_refused(tmp_path) -> None:
    src = save_hf_folder(hf_model("llama"), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    _refused(src, tmp_path / "out", "architecture 'gpt_neox' is not supported")
    (src / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    _refused(src, tmp_path / "out", "activation 'gelu' is not supported")


def test_truncated_safetensors_is_refused(tmp_path) -> None:
    src = save_hf_folder(hf_model("llama"), tmp_path / "src")
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _refused(src, tmp_path / "out", "model.safetensors")


def test_missing_tensor_is_refused(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    src = save_hf_folder(hf_model("mixtral"), tmp_path / "src")
    state = load_file(src / "model.safetensors")
    del state["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    _refused(src, tmp_path / "out", "layer 1 has experts")


def test_corrupt_gguf_is_refused(tmp_path) -> None:
    src = write_gguf(hf_model("llama", **PLAIN_LLAMA), tmp_path / "m.gguf", "Q8_0")
    data = src.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    _refused(tmp_path / "cut.gguf", tmp_path / "out", "cut.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 64)
    _refused(tmp_path / "junk.gguf", tmp_path / "out", "junk.gguf")


def test_unsupported_quant_type_is_refused(tmp_path) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter

    w = GGUFWriter(str(tmp_path / "iq.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 144), dtype=np.uint8), raw_dtype=Q.IQ4_NL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _refused(tmp_path / "iq.gguf", tmp_path / "out", "quant type IQ4_NL")


def test_cli_import_one_line_error(tmp_path, capsys) -> None:
    from lightseek.cli import main

    assert main(["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "import source not found" in err


def test_imported_moe_quantizes_and_biased_attention_is_refused(tmp_path) -> None:
    from lightseek.errors import ConfigError
    from lightseek.quant.config import QuantConfig
    from lightseek.quant.run import quantize_checkpoint

    moe = import_model(save_hf_folder(hf_model("qwen3_moe"), tmp_path / "moe"), tmp_path / "moe-ckpt",
                       show_progress=False)
    out = quantize_checkpoint(moe, QuantConfig(bits=8), tmp_path / "moe-int8", show_progress=False)
    with torch.no_grad():
        ref, got = load_model(moe)(PROMPT).logits, load_model(out["out"])(PROMPT).logits
    assert (got.softmax(-1) - ref.softmax(-1)).abs().max().item() < 0.05  # int8 of every matrix, routers included
    qwen2 = import_model(save_hf_folder(hf_model("qwen2"), tmp_path / "q2"), tmp_path / "q2-ckpt", show_progress=False)
    with pytest.raises(ConfigError, match="has a bias"):
        quantize_checkpoint(qwen2, QuantConfig(bits=8), tmp_path / "q2-int8", show_progress=False)
    assert not (tmp_path / "q2-int8").exists()


@pytest.mark.parametrize(("arch", "gguf_arch"), [("qwen3_moe", "qwen3moe"), ("qwen2_moe", "qwen2moe")])
def test_moe_gguf_imports_as_its_hf_folder_does(tmp_path, arch, gguf_arch) -> None:
    from tests.models.tiny import write_moe_gguf

    theirs = hf_model(arch)  # Qwen3-MoE renormalises top-k weights, Qwen2-MoE not, as llama.cpp assumes
    src = write_moe_gguf(theirs, tmp_path / "moe.gguf", gguf_arch)
    ours = load_model(import_model(src, tmp_path / "ckpt", show_progress=False))
    assert ours.cfg.n_experts == 4 and ours.cfg.top_k == 2
    assert_parity(ours, theirs, new_tokens=16)
    q8 = load_model(import_model(write_moe_gguf(theirs, tmp_path / "q8.gguf", gguf_arch, "Q8_0"),
                                 tmp_path / "q8", show_progress=False))
    with torch.no_grad():  # Q8_0 codes: close to the fp32 model, not equal
        assert (q8(PROMPT).logits.softmax(-1) - theirs(PROMPT).logits.softmax(-1)).abs().max().item() < 0.05


def test_gguf_sentencepiece_vocabulary_tokenizes_as_transformers_does(tmp_path) -> None:
    src = write_gguf(hf_model("llama", **PLAIN_LLAMA), tmp_path / "spm.gguf", "F32", pre="sentencepiece")
    tok = Tokenizer.load(import_model(src, tmp_path / "ckpt", show_progress=False))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=src.name)
    for text in ("Glaucoma damages the optic nerve.", "  two  spaces\nand a newline", "12 times: 3.5%",
                 "unseen letters: zebra, quiz, ß, 青光眼", "the court held that the clause was void"):
        ids = tok.encode(text)
        assert ids == theirs(text, add_special_tokens=False).input_ids, text
        assert tok.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids) == text or text.startswith(" ")  # SentencePiece drops one leading space
        stream = StreamDecoder(tok)  # streamed text equals the full decode, first space dropped alike
        assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids)
    assert tok.eot_id == 2 and tok.bos_id == 1
