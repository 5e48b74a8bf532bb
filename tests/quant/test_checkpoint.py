"""Quantized checkpoints: round trip, generation, serving engine, KL against the source, LoRA on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import corpus_text

from lightseek.adapters.lora import LoraConfig, apply_lora, use_adapters
from lightseek.adapters.store import base_fingerprint, load_adapter, save_adapter
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import CheckpointError
from lightseek.eval.kl import kl_divergence
from lightseek.model.checkpoint import load_model
from lightseek.model.generate import generate_ids
from lightseek.model.sampling import SamplingParams
from lightseek.quant import QuantConfig, QuantLinear, QuantMoE, quantize, set_kernel
from lightseek.quant.config import CalibConfig
from lightseek.quant.run import quantize_checkpoint


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("quant_text") / "text.txt"
    f.write_text(corpus_text()[:30_000], encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def quantized(debug_checkpoint, text_file, tmp_path_factory):
    """Quantize the debug checkpoint once per config: make(**QuantConfig fields) -> folder."""
    made: dict[str, Path] = {}

    def make(**kw) -> Path:
        key = repr(sorted(kw.items()))
        if key not in made:
            cfg = QuantConfig(**kw, calib=CalibConfig(files=[str(text_file)], samples=8, seq_len=64))
            made[key] = tmp_path_factory.mktemp("quant") / "ckpt"
            quantize_checkpoint(debug_checkpoint, cfg, made[key], show_progress=False)
        return made[key]

    return make


def windows(tok: Tokenizer, n: int = 4, seq: int = 48) -> torch.Tensor:
    ids = tok.encode(corpus_text()[-20_000:])[: n * (seq + 1)]
    return torch.tensor(ids).reshape(n, seq + 1)                              # (n, T + 1)


def test_round_trip_gives_identical_logits(debug_checkpoint) -> None:
    import tempfile

    from lightseek.quant.checkpoint import save_quantized

    model = quantize(load_model(debug_checkpoint), QuantConfig(policy="mixed", group_size=32))
    x = windows(Tokenizer.load(debug_checkpoint))[:, :-1]
    with tempfile.TemporaryDirectory() as d:
        save_quantized(Path(d) / "q", model, source=base_fingerprint(debug_checkpoint))
        meta = json.loads((Path(d) / "q" / "config.json").read_text())
        again = load_model(Path(d) / "q")
        size = (Path(d) / "q" / "model.safetensors").stat().st_size
    assert meta["quantization"]["config"]["policy"] == "mixed"
    assert meta["quantization"]["layers"]["layers.1.ffn"]["bits"] == 4
    assert meta["quantization"]["layers"]["layers.1.ffn.router"]["bits"] == 8
    assert isinstance(again.layers[1].ffn, QuantMoE) and isinstance(again.layers[0].attn.wq, QuantLinear)
    assert again.head.qweight.data_ptr() == again.embed.qweight.data_ptr()  # still tied
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)
    assert size < 0.4 * (debug_checkpoint / "model.safetensors").stat().st_size


@pytest.mark.parametrize("kw", [{"bits": 8}, {"bits": 4, "group_size": 32, "method": "gptq"},
                                {"bits": 4, "group_size": 32, "method": "gptq", "sequential": True, "act_order": False}])
def test_quantized_checkpoint_stays_close_and_generates(debug_checkpoint, quantized, kw) -> None:
    ref, tok = load_model(debug_checkpoint), Tokenizer.load(debug_checkpoint)
    q = load_model(quantized(**kw))
    batch = windows(tok)
    r = kl_divergence(q, ref, [batch])
    assert r["kl_mean"] < (0.01 if kw["bits"] == 8 else 0.2)
    assert abs(r["ppl_change"]) < (0.02 if kw["bits"] == 8 else 0.15)
    out = list(generate_ids(q, tok.encode("To be, or not"), SamplingParams(max_new_tokens=8, temperature=0)))
    assert len(out) >= 1 and all(0 <= t < q.cfg.vocab_size for t in out)


def test_kl_of_a_model_with_itself_is_zero_and_grows_with_coarser_grids(debug_checkpoint, quantized) -> None:
    ref, tok = load_model(debug_checkpoint), Tokenizer.load(debug_checkpoint)
    batch = windows(tok)
    same = kl_divergence(load_model(debug_checkpoint), ref, [batch])
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-9) and same["ppl_change"] == pytest.approx(0.0, abs=1e-9)
    k8 = kl_divergence(load_model(quantized(bits=8)), ref, [batch])
    k4 = kl_divergence(load_model(quantized(bits=4, group_size=32)), ref, [batch])
    assert 0 < k8["kl_mean"] < k4["kl_mean"]
    assert k4["kl_p99"] >= k4["kl_mean"] and k4["kl_max"] >= k4["kl_p99"]
    # by hand, on the first token
    with torch.no_grad():
        lp = torch.log_softmax(load_model(quantized(bits=4, group_size=32))(batch[:1, :1]).logits[0, 0], -1)
        lq = torch.log_softmax(ref(batch[:1, :1]).logits[0, 0], -1)
    one = kl_divergence(load_model(quantized(bits=4, group_size=32)), ref, [batch[:1, :2]])
    assert one["kl_mean"] == pytest.approx((lq.exp() * (lq - lp)).sum().item(), rel=1e-4)


def test_eval_with_kl_ref(debug_checkpoint, quantized, text_file) -> None:
    from lightseek.eval.run import run_eval
    from lightseek.model.checkpoint import read_checkpoint_config
    from lightseek.train.config import load_run_config

    ckpt = quantized(bits=8)
    cfg = load_run_config(None, ["--train.eval_batches=2"], base=read_checkpoint_config(ckpt).get("run"))
    r = run_eval(str(ckpt), cfg, data=[str(text_file)], kl_ref=str(debug_checkpoint))
    assert "KL(ref || model)" in r["text"] and r["kl"]["kl_tokens"] == r["tokens"]
    assert r["kl"]["ppl"] == pytest.approx(r["ppl"], rel=1e-4)  # the same tokens as the perplexity


def test_engine_serves_a_quantized_checkpoint(quantized) -> None:
    from lightseek.serve.engine import Engine, GenParams

    ckpt = quantized(policy="mixed", group_size=32)
    model, tok = load_model(ckpt), Tokenizer.load(ckpt)
    reqs = Engine(model, tok, max_slots=2).generate([tok.encode("Hello there"), tok.encode("My lord")],
                                                    GenParams(max_tokens=6, temperature=0))
    for r, p in zip(reqs, ("Hello there", "My lord")):
        alone = list(generate_ids(model, tok.encode(p), SamplingParams(max_new_tokens=6, temperature=0),
                                  stop_ids=[tok.eot_id, tok.token_id("<|end|>")]))
        assert r.output_ids == alone


def test_lora_on_a_quantized_base(debug_checkpoint, quantized, strong_adapter) -> None:
    q = load_model(quantized(bits=4, group_size=32))
    set_kernel(q, "dequant")  # exact comparison: the adapter's expert path computes in fp32 too
    x = windows(Tokenizer.load(debug_checkpoint))[:, :-1]
    with torch.no_grad():
        base = q(x).logits
    apply_lora(q, LoraConfig(rank=4, targets=["attn", "experts", "shared", "dense", "embed"]), "zero")
    with torch.no_grad(), use_adapters(q, "zero"):
        assert torch.allclose(q(x).logits, base, atol=1e-4)  # B = 0: exactly the quantized model
    strong_adapter(q, "strong")
    with torch.no_grad(), use_adapters(q, "strong"):
        assert (q(x).logits - base).abs().max() > 1e-2
    # it trains: gradients reach the factors through the quantized layers
    q.train()
    with use_adapters(q, "strong"):
        q(x, x).loss.backward()
    grads = [p.grad for n, p in q.named_parameters() if "lora_" in n and ".strong" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_adapter_of_the_source_applies_to_its_quantized_version(debug_checkpoint, quantized, tmp_path) -> None:
    src = load_model(debug_checkpoint)
    cfg = LoraConfig(rank=2, targets=["attn", "experts"])
    apply_lora(src, cfg, "med")
    meta = {"base": {**base_fingerprint(debug_checkpoint), "model": src.cfg.to_dict()}}
    save_adapter(tmp_path / "med", src, "med", cfg, meta)
    ckpt = quantized(bits=8)
    q = load_model(ckpt)
    info = load_adapter(q, tmp_path / "med", base_fingerprint(ckpt)["sha256"])
    assert info.name == "med"
    # a quantized checkpoint of other weights: refused, saying where it came from
    other = load_model(ckpt)
    other.quant_source = {"sha256": "0" * 64, "path": "/elsewhere"}
    with pytest.raises(CheckpointError, match="quantized checkpoint was made from 000000000000"):
        load_adapter(other, tmp_path / "med", base_fingerprint(ckpt)["sha256"])
