"""Weight-only quantization: int8 per channel, int4 per group, round-to-nearest or GPTQ, mixed
precision by role, quantized checkpoints that `load_model` rebuilds. See `quant.config`."""

from lightseek.quant.apply import bits_per_weight, quantize
from lightseek.quant.config import CalibConfig, QuantConfig
from lightseek.quant.modules import QuantEmbedding, QuantLinear, QuantMoE, set_kernel

__all__ = ["CalibConfig", "QuantConfig", "QuantEmbedding", "QuantLinear", "QuantMoE", "bits_per_weight",
           "quantize", "set_kernel"]
