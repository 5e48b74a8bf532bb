"""Depth expansion: the deeper model starts as the original and can learn."""

from __future__ import annotations

import pytest
import torch

from lightseek.errors import ConfigError
from lightseek.model.checkpoint import load_model, save_checkpoint
from lightseek.model.config import preset
from lightseek.model.grow import expand_depth
from lightseek.model.kv_cache import KVCache
from lightseek.model.transformer import Transformer


def _model(mode: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(preset("debug", router_mode=mode))
    with torch.no_grad():
        for m in model.moe_layers():
            m.router.weight.normal_(0, 0.5)
            m.router.bias_E.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("mode", ["dense", "topk", "dynamic"])
@pytest.mark.parametrize("after", [None, 0])
def test_grown_model_computes_what_the_original_does(mode, after, tmp_path) -> None:
    model = _model(mode)
    grown = expand_depth(model, copies=2, after=after).eval()
    n, d = model.cfg.n_layers, model.cfg.n_dense_layers
    start = d if after is None else after
    assert grown.cfg.n_layers == n + 2 * (n - start)
    assert all(isinstance(b.ffn, type(grown.layers[0].ffn)) for b in grown.layers[:grown.cfg.n_dense_layers])
    assert [grown.cfg.is_moe_layer(i) for i in range(grown.cfg.n_layers)] == [
        type(b.ffn).__name__ == "MoE" for b in grown.layers]
    idx = torch.randint(0, model.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(grown(idx).logits, model(idx).logits, atol=1e-5, rtol=1e-5)
        cache = KVCache.for_model(grown, 2)  # every block writes its own cache layer
        grown(idx[:, :20], cache=cache)
        torch.testing.assert_close(grown(idx[:, 20:], cache=cache).logits, model(idx).logits[:, 20:],
                                   atol=1e-5, rtol=1e-5)
    assert grown.num_params()["active"] > model.num_params()["active"]
    save_checkpoint(tmp_path / "grown", grown)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "grown")(idx).logits, model(idx).logits, atol=1e-5, rtol=1e-5)


def test_new_blocks_learn() -> None:
    """The zeroed output projections get gradients, so the new blocks do not stay the identity."""
    grown = expand_depth(_model("dynamic"), copies=1).train()
    idx = torch.randint(0, grown.cfg.vocab_size, (2, 16))
    grown(idx, targets_BT=idx).loss.backward()
    new = grown.layers[grown.cfg.n_dense_layers + 1]
    assert new.attn.wo.weight.grad.abs().sum() > 0 and new.ffn.w2_EHD.grad.abs().sum() > 0


def test_bad_arguments_are_named() -> None:
    model = _model("topk")
    with pytest.raises(ConfigError, match="copies"):
        expand_depth(model, copies=0)
    with pytest.raises(ConfigError, match="after"):
        expand_depth(model, copies=1, after=model.cfg.n_layers)
