"""End-to-end tuning of the grids (quant.tune_steps): scales and offsets move towards the source
model's predictions, codes and layout stay, and the checkpoint records what the tuning did."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint import quantized, text_file, windows  # noqa: F401  (fixtures)

from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import ConfigError
from lightseek.eval.kl import kl_divergence
from lightseek.model.checkpoint import load_model
from lightseek.quant import QuantConfig, QuantMoE, quantize
from lightseek.quant.tune import tune_grids

COARSE = {"bits": 4, "group_size": 32, "clip": [1.0]}  # plain min..max grids: the most to gain


def test_tuning_brings_the_quantized_model_closer_to_its_source(debug_checkpoint, quantized) -> None:  # noqa: F811
    ref, tok = load_model(debug_checkpoint), Tokenizer.load(debug_checkpoint)
    plain, tuned = quantized(**COARSE), quantized(**COARSE, tune_steps=40, tune_samples=16)
    held_out = [windows(tok)]  # text the calibration windows do not contain
    before = kl_divergence(load_model(plain), ref, held_out)["kl_mean"]
    after = kl_divergence(load_model(tuned), ref, held_out)["kl_mean"]
    assert after < 0.8 * before, (before, after)

    meta = json.loads((tuned / "config.json").read_text())["quantization"]
    assert meta["config"]["tune_steps"] == 40
    t = meta["tuning"]
    assert t["steps"] == 40 and t["kl_last"] < t["kl_first"] and t["seconds"] > 0
    assert "tuning" not in json.loads((plain / "config.json").read_text())["quantization"]

    # the codes are GPTQ's / the rounding's, untouched; only scales and offsets moved, in their dtype
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert a.keys() == b.keys()
    codes = [k for k in a if a[k].dtype in (torch.uint8, torch.int8)]
    grids = [k for k in a if k.endswith(("scales", "zeros"))]
    assert codes and grids
    assert all(torch.equal(a[k], b[k]) for k in codes)
    assert all(a[k].dtype == b[k].dtype == torch.bfloat16 for k in grids)
    assert sum(not torch.equal(a[k], b[k]) for k in grids) > 0.9 * len(grids)
    assert isinstance(load_model(tuned).layers[1].ffn, QuantMoE)  # the routed experts were tuned too
    assert any(not torch.equal(a[k], b[k]) for k in grids if ".qexperts." in k)


def test_tune_grids_keeps_the_stored_tensors_and_the_tied_head(debug_checkpoint) -> None:
    source = load_model(debug_checkpoint)
    model = quantize(load_model(debug_checkpoint), QuantConfig(**COARSE))
    stored = {n: b for n, b in model.named_buffers() if n.endswith(("scales", "zeros"))}
    ptrs = {n: b.data_ptr() for n, b in stored.items()}
    before = {n: b.clone() for n, b in stored.items()}
    batch = windows(Tokenizer.load(debug_checkpoint), n=2, seq=32)
    r = tune_grids(model, source, [batch], steps=3, lr=1e-2)
    assert r["steps"] == 3 and r["kl_first"] > 0
    after = dict(model.named_buffers())
    for n in stored:  # the same tensors (in place), now holding other values
        assert after[n].data_ptr() == ptrs[n] and after[n].dtype == torch.bfloat16
    assert any(not torch.equal(before[n], after[n]) for n in stored)
    assert model.head.scales is model.embed.scales and model.head.zeros is model.embed.zeros
    assert not any(b.requires_grad for b in model.buffers())
    with torch.inference_mode():  # the packed kernels rebuilt from the tuned values
        packed = model(batch[:, :-1]).logits
    from lightseek.quant import set_kernel
    set_kernel(model, "dequant")
    with torch.inference_mode():
        reference = model(batch[:, :-1]).logits
    assert (packed - reference).norm() < 0.02 * reference.norm()


def test_tune_grids_refuses_a_model_without_quantized_weights(debug_checkpoint) -> None:
    model = load_model(debug_checkpoint)
    with pytest.raises(ValueError, match="no quantized weights"):
        tune_grids(model, model, [torch.zeros(1, 4, dtype=torch.long)], steps=1, lr=1e-3)
    q = quantize(load_model(debug_checkpoint), QuantConfig(**COARSE))
    with pytest.raises(ValueError, match="at least one step"):
        tune_grids(q, model, [], steps=1, lr=1e-3)


@pytest.mark.parametrize("field,value", [("tune_steps", -1), ("tune_batch", 0), ("tune_samples", 0), ("tune_lr", 0.0)])
def test_bad_tuning_settings_are_refused(field: str, value) -> None:
    with pytest.raises(ConfigError, match="quant.tune_"):
        QuantConfig(**{field: value})
