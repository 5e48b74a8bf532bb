"""Bad quantization configurations stop with one clear line naming the field, layer and value."""

from __future__ import annotations

import pytest
import torch

from lightseek.errors import ConfigError
from lightseek.model.config import preset
from lightseek.model.transformer import Transformer
from lightseek.quant import QuantConfig, QuantLinear, quantize
from lightseek.quant.run import load_quant_config


@pytest.mark.parametrize("kw,match", [
    ({"bits": 3}, r"quant\.bits: 3 is not supported"),
    ({"bits": 16}, r"quant\.bits: 16"),
    ({"group_size": 48}, r"quant\.group_size: 48 is not supported"),
    ({"roles": {"moe": 4}}, r"unknown role 'moe'"),
    ({"roles": {"experts": 2}}, r"quant\.roles\.experts: bits 2 not in \{4, 8\}"),
    ({"block": 100, "group_size": 64}, r"quant\.block: 100"),
    ({"refit": -1}, r"quant\.refit: -1 must be between 0 and 8 rounds"),
    ({"refit": 9}, r"quant\.refit: 9 must be between 0 and 8 rounds"),
])
def test_bad_config_values(kw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kw)


def test_group_that_does_not_divide_a_layer_names_the_layer_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = Transformer(preset("debug")).eval()  # the experts are 32 wide
    with pytest.raises(ConfigError, match=r"layers\.1\.ffn\.shared\.w2 .*group_size 64 does not divide its input dim 32"):
        quantize(model, QuantConfig(bits=4, group_size=64))
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    # the same with the shared experts at 8 bits: now the routed experts' w2 is named
    with pytest.raises(ConfigError, match=r"layers\.1\.ffn\.w2_EHD .*input dim 32"):
        quantize(model, QuantConfig(bits=4, group_size=64, roles={"shared": 8}))
    quantize(model, QuantConfig(bits=4, group_size=64, pad_groups=True))  # or pad the last group
    assert model.layers[1].ffn.qexperts["w2"].scales.shape[-1] == 1


def test_gptq_needs_calibration_and_overrides_are_checked() -> None:
    with pytest.raises(ConfigError, match="calibration"):
        quantize(Transformer(preset("debug")), QuantConfig(method="gptq"))
    cfg = load_quant_config(None, ["--quant.policy=mixed", "--quant.roles.embed=8", "--quant.calib.samples=4"])
    assert cfg.role_bits("embed") == 8 and cfg.role_bits("experts") == 4 and cfg.role_bits("attn") == 8
    assert load_quant_config(None, ["--quant.roles.embed=null"]).role_bits("embed") is None
    with pytest.raises(ConfigError, match=r"unknown config key 'quant\.grup_size' \(did you mean 'quant\.group_size'"):
        load_quant_config(None, ["--quant.grup_size=64"])
    with pytest.raises(ConfigError, match="'train'"):
        load_quant_config(None, ["--train.lr=1"])
