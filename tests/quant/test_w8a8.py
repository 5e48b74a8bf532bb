"""8-bit inputs as well as 8-bit weights (quant.activations = 8): smoothing, the integer product,
its floating-point simulation, checkpoints, the decode step and the serving engine."""

from __future__ import annotations

import pytest
import torch
from conftest import corpus_text

from lightseek.errors import ConfigError
from lightseek.model.config import preset
from lightseek.model.decode import DecodeStep
from lightseek.model.kv_cache import KVCache
from lightseek.model.transformer import Transformer
from lightseek.quant import QuantConfig, QuantLinear, quantize, set_kernel
from lightseek.quant.apply import smoothing
from lightseek.quant.modules import fbgemm_available
from lightseek.quant.schemes import quantize_rtn

needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="this PyTorch build has no fbgemm (non-x86 CPU)")


def _dense(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(preset("debug", router_mode="dense")).eval()
    with torch.no_grad():  # outlier channels in the residual stream, as real models have
        model.embed.weight[:, :3] *= 20.0
    return model


def _calib(model: Transformer, n: int = 4, seq: int = 32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, model.cfg.vocab_size, (n, seq), generator=g).split(2))


def _layer(n_out: int = 48, n_in: int = 64, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g)
    act_scale = torch.rand(n_in, generator=g) + 0.5
    return QuantLinear(quantize_rtn(w, 8, 64, False, "test"), "auto", act_scale)


@needs_fbgemm
def test_the_integer_product_matches_its_simulation_and_rows_do_not_depend_on_each_other() -> None:
    layer = _layer()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 64, generator=g) * torch.tensor([0.01, 1.0, 30.0, 1.0, 5.0, 0.2])[:, None]
    x[:, 7] *= 40.0  # an outlier channel
    with torch.inference_mode():
        assert layer.uses_fbgemm(x)
        fast = layer(x)
        alone = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])
        set_kernel(layer, "dequant")
        assert not layer.uses_fbgemm(x)
        simulated = layer(x)
    # the same integers on both paths: only the order of float sums differs
    assert torch.allclose(fast, simulated, rtol=1e-4, atol=1e-4 * fast.abs().max().item())
    assert torch.equal(fast, alone)  # each row rounds on its own grid
    exact = x @ layer.weight.T
    err = (fast - exact).abs().max(-1).values / exact.abs().max(-1).values
    assert err.max() < 0.1 and err.min() > 0  # rounded, not exact, and close at every scale
    # the one-sequence decode step's product: the row's range handed to the kernel as its input
    # scale (the same grid, so the same integers up to a tie), and the batch product on an input
    # the caller smoothed already
    set_kernel(layer, "auto")
    one_row, smoothed_rows = layer.bound(one_row=True), layer.bound(smoothed=True)
    with torch.inference_mode():
        for i in range(len(x)):
            assert torch.allclose(one_row(x[i:i + 1]), fast[i:i + 1], rtol=1e-5, atol=1e-5 * fast[i].abs().max().item())
        assert torch.allclose(smoothed_rows(x * layer.act_scale), fast, rtol=1e-5, atol=1e-5 * fast.abs().max().item())


def test_smoothing_is_shared_by_layers_that_read_one_input() -> None:
    model = _dense()
    paths = [f"layers.{i}.{p}" for i in range(model.cfg.n_layers)
             for p in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w3", "ffn.w2")]
    with torch.no_grad():
        s = smoothing(model, paths, _calib(model), 0.7)
    for i in range(model.cfg.n_layers):
        assert torch.equal(s[f"layers.{i}.attn.wq"], s[f"layers.{i}.attn.wk"])
        assert torch.equal(s[f"layers.{i}.attn.wq"], s[f"layers.{i}.attn.wv"])
        assert torch.equal(s[f"layers.{i}.ffn.w1"], s[f"layers.{i}.ffn.w3"])
        assert not torch.equal(s[f"layers.{i}.attn.wo"], s[f"layers.{i}.attn.wq"])
    # the embedding's outlier channels reach the first layer's input norm: their s is largest
    first = s["layers.0.attn.wq"]
    assert first[:3].min() > first[3:].max()
    none = smoothing(model, paths, None, None)
    assert all(torch.equal(v, torch.ones(model.cfg.dim if "w2" not in p else v.numel())) for p, v in none.items())


def test_w8a8_model_stays_close_to_full_precision_and_smoothing_helps() -> None:
    model = _dense()
    x = _calib(model, seed=3)[0]
    with torch.inference_mode():
        ref = torch.log_softmax(model(x).logits, -1)

    def kl(alpha) -> float:
        q = quantize(_dense(), QuantConfig(bits=8, activations=8, smooth_alpha=alpha), _calib(model))
        assert isinstance(q.layers[0].attn.wq, QuantLinear) and q.layers[0].attn.wq.act_scale is not None
        assert q.quant_layers["layers.0.ffn.w2"]["activations"] == 8
        assert q.head.act_scale is not None  # the tied head: unsmoothed 8-bit inputs
        with torch.inference_mode():
            logp = torch.log_softmax(q(x).logits, -1)
        return (ref.exp() * (ref - logp)).sum(-1).mean().item()

    smoothed, plain = kl(0.7), kl(None)
    assert 0 < smoothed < plain
    assert smoothed < 0.05


def test_w8a8_checkpoint_round_trip_decode_step_and_engine(debug_checkpoint, tmp_path) -> None:
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.quant.config import CalibConfig
    from lightseek.quant.run import quantize_checkpoint
    from lightseek.serve.engine import Engine, GenParams
    text = tmp_path / "text.txt"
    text.write_text(corpus_text()[:20_000], encoding="utf-8")
    cfg = QuantConfig(bits=8, activations=8, calib=CalibConfig(files=[str(text)], samples=4, seq_len=32))
    out = quantize_checkpoint(debug_checkpoint, cfg, tmp_path / "w8a8", show_progress=False)
    assert out["layers"] > 0
    model = load_model(tmp_path / "w8a8")
    again = load_model(tmp_path / "w8a8")
    tok = Tokenizer.load(tmp_path / "w8a8")
    ids = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog")])
    with torch.inference_mode():
        logits = model(ids).logits
        assert torch.equal(logits, again(ids).logits)
        # the decode step (fused, bare products) against the forward, token by token
        cache, ref = KVCache.for_model(model, 1, 64), KVCache.for_model(model, 1, 64)
        model(ids[:, :-1], cache=cache)
        model(ids[:, :-1], cache=ref)
        step = DecodeStep.of(model)
        a = step(ids[0, -1:], cache)
        b = model(ids[:, -1:], cache=ref).logits[:, -1]
        assert torch.allclose(a, b, atol=1e-3)
        # the prompt through the step's products (smoothing folded into the norms) as well
        cache = KVCache.for_model(model, 1, 64)
        assert torch.allclose(step.prefill(ids[0], cache), logits[:, -1], atol=1e-3)
        # a norm the smoothing was folded into changes: the step is built again
        model.layers[0].attn_norm.weight.mul_(2.0)
        assert DecodeStep.of(model) is not step
    # the engine: a request's tokens are the same alone and in a batch
    prompts = [tok.encode(p) for p in ("Once upon a time", "The court held", "In the morning the")]
    params = GenParams(max_tokens=12, temperature=0.0)
    together = [r.output_ids for r in Engine(model, tok, max_slots=3).generate(prompts, params)]
    alone = [Engine(model, tok, max_slots=1).generate([p], params)[0].output_ids for p in prompts]
    assert together == alone


@pytest.mark.parametrize("kw, message", [
    (dict(activations=4), "quant.activations"),
    (dict(activations=8, smooth_alpha=1.5), "quant.smooth_alpha"),
])
def test_bad_settings_are_refused(kw, message) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**kw)


def test_w8a8_needs_8_bit_layers_and_calibration() -> None:
    with pytest.raises(ConfigError, match="no 8-bit linear layer"):
        quantize(_dense(), QuantConfig(bits=4, group_size=32, activations=8), _calib(_dense()))
    with pytest.raises(ConfigError, match="needs calibration text"):
        quantize(_dense(), QuantConfig(bits=8, activations=8))
    with pytest.raises(ConfigError, match="needs calibration text"):
        quantize(_dense(), QuantConfig(bits=8, activations=8), [])
    # without smoothing no calibration is needed
    q = quantize(_dense(), QuantConfig(bits=8, activations=8, smooth_alpha=None))
    assert torch.equal(q.layers[0].attn.wq.act_scale, torch.ones(q.cfg.dim))
