"""QuantConfig: how `lightseek quant` compresses a checkpoint, and which role gets how many bits.

Every weight matrix of the model has a *role*:

    router   each MoE layer's gate (E, D)                 held dequantized at run time (tiny)
    attn     the attention projections wq, wk, wv, wo
    shared   the shared experts' w1, w3, w2
    experts  the routed experts' stacked w1, w3, w2      quantized per expert (own scales)
    dense    the FFNs of the dense layers
    embed    the token embedding (and the output head when it is tied to it)
    head     the output head (when it is not tied to the embedding)

A role gets 8 bits (int8, one scale per output channel), 4 bits (int4 in groups of
``group_size`` input columns, a scale and an offset per group) or none (kept in full precision).
The ``uniform`` policy gives every role ``bits``; ``mixed`` gives the router, attention and
shared experts 8 bits and the routed experts, dense FFNs, embedding and head 4 bits; ``budget``
chooses 4 or 8 bits matrix by matrix, the most sensitive to the calibration loss first, within
``max_bits`` per weight (`quant.budget`). ``roles`` overrides any of them, role by role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightseek.config import field
from lightseek.data.calib import CalibConfig
from lightseek.errors import ConfigError

ROLES = ("router", "attn", "shared", "experts", "dense", "embed", "head")
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
ACT_ROLES = ("attn", "dense", "shared")  # roles whose 8-bit layers take 8-bit inputs under activations=8
MIXED = {"router": 8, "attn": 8, "shared": 8, "experts": 4, "dense": 4, "embed": 4, "head": 4}


@dataclass
class QuantConfig:
    bits: int = field(8, help="Bits of every role under the uniform policy: 8 (per channel) or 4 (groupwise).")
    group_size: int = field(64, help=f"Input columns per scale of 4-bit weights: one of {GROUP_SIZES}.")
    method: Literal["rtn", "gptq"] = field("rtn", help=(
        "rtn: round to nearest. gptq: round column by column, compensating each column's error in the "
        "columns not yet rounded, weighted by a Hessian of calibration activations."))
    policy: Literal["uniform", "mixed", "budget"] = field("uniform", help=(
        "uniform: every role at `bits`. mixed: router, attention and shared experts at 8 bits; routed "
        "experts, dense FFNs, embedding and head at 4. budget: 4 or 8 bits per matrix, the most sensitive "
        "(Fisher-weighted rounding error on calibration text) promoted to 8 first, within `max_bits`."))
    max_bits: float = field(4.9, help=(
        "budget: the most bits per weight of the whole model (codes, scales, offsets and full-precision "
        "tensors, per parameter of the original)."))
    fisher_samples: int = field(16, help=(
        "budget: calibration windows whose loss gradients measure each matrix's sensitivity."))
    roles: dict[str, int | None] = field(default_factory=dict, help=(
        f"Per-role bits overriding the policy (4, 8 or null = full precision); roles: {', '.join(ROLES)}."))
    pad_groups: bool = field(False, help=(
        "When group_size does not divide a layer's input dim: pad the last group with zero columns "
        "(true) instead of stopping with an error (false)."))
    clip: list[float] = field(default_factory=lambda: [1.0, 0.95, 0.9, 0.85, 0.8], help=(
        "4-bit grids: factors shrinking each group's min..max that are tried; the one with the least "
        "squared rounding error is kept ([1.0] = plain min..max)."))
    activations: int | None = field(None, help=(
        "8: the 8-bit linear layers of the attention, dense FFN and shared-expert roles also round their inputs "
        "to 8 bits when they run, one scale per token (W8A8: integer products through fbgemm on CPU), after "
        "smoothing moves the inputs' outlier channels into the weights (smooth_alpha); an output head tied to an "
        "8-bit embedding takes 8-bit inputs too (unsmoothed, its top logits recomputed in fp32); routed experts "
        "and an untied head keep full-precision inputs. null: weights only."))
    smooth_alpha: float | None = field(0.7, help=(
        "activations 8: how much of each input channel's range moves into the weights (SmoothQuant's alpha: "
        "channel scale = max|x|^alpha / max|w|^(1-alpha), from calibration text); null: no smoothing."))
    kernel: Literal["auto", "packed", "dequant"] = field("auto", help=(
        "Matmul of quantized weights: PyTorch's packed int8/int4 CPU kernels, dequantize-then-matmul, "
        "or auto (the faster, see docs/results/quant.md)."))
    damp: float = field(0.01, help="gptq: damping added to the Hessian's diagonal, as a share of its mean.")
    block: int = field(128, help="gptq: columns rounded per block before the lazy update of the rest.")
    act_order: bool = field(True, help=(
        "gptq: round the columns of the inputs with the most energy (largest Hessian diagonal) first; "
        "4-bit grids are then fixed from the unrounded weights."))
    refit: int = field(2, help=(
        "gptq, 4 bits: rounds of refitting each group's scale and offset to its rounded codes (least squares "
        "against the calibration Hessian), each round after the first rounding again on the refit grids; "
        "0: the grids chosen before rounding."))
    sequential: bool = field(False, help=(
        "gptq: calibrate block by block, each layer on the activations of the layers before it already "
        "quantized (about twice the time); false: every Hessian from one pass of the full-precision model."))
    tune_steps: int = field(0, help=(
        "Steps of end-to-end tuning after quantization: every scale and offset trained so that the quantized "
        "model's next-token distributions match the full-precision model's (KL) on calibration windows, codes "
        "held fixed (quant.tune); 0: none. Each step is a forward of both models and a backward of one."))
    tune_lr: float = field(2e-3, help="tuning: Adam's step, relative to each scale (cosine decay to zero).")
    tune_batch: int = field(4, help="tuning: calibration windows per step.")
    tune_samples: int = field(256, help=(
        "tuning: calibration windows to cycle through, drawn from quant.calib.files like GPTQ's."))
    calib: CalibConfig = field(default_factory=CalibConfig, help="Calibration data (gptq, budget, tuning).")

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ConfigError(f"quant.bits: {self.bits} is not supported (choose 4 or 8)")
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(f"quant.group_size: {self.group_size} is not supported (choose one of "
                              f"{', '.join(map(str, GROUP_SIZES))})")
        for role, bits in self.roles.items():
            if role not in ROLES:
                raise ConfigError(f"quant.roles: unknown role '{role}' (roles: {', '.join(ROLES)})")
            if bits is not None and (isinstance(bits, bool) or bits not in BITS):
                raise ConfigError(f"quant.roles.{role}: bits {bits!r} not in {{4, 8}} (or null for full precision)")
        if not self.clip or not all(0.5 <= a <= 1.0 for a in self.clip):
            raise ConfigError(f"quant.clip: {self.clip} must be a non-empty list of factors in [0.5, 1]")
        if not 0.0 <= self.damp < 1.0:
            raise ConfigError(f"quant.damp must be in [0, 1), got {self.damp}")
        if not 4.0 < self.max_bits <= 32.0:
            raise ConfigError(f"quant.max_bits: {self.max_bits} must be above 4 (bits per weight, at most 32)")
        if self.fisher_samples < 1:
            raise ConfigError(f"quant.fisher_samples: {self.fisher_samples} must be at least 1")
        if not 0 <= self.refit <= 8:
            raise ConfigError(f"quant.refit: {self.refit} must be between 0 and 8 rounds")
        if self.tune_steps < 0 or self.tune_batch < 1 or self.tune_samples < 1 or not self.tune_lr > 0:
            raise ConfigError(f"quant.tune_*: steps {self.tune_steps} must be >= 0, batch {self.tune_batch} and "
                              f"samples {self.tune_samples} >= 1, lr {self.tune_lr} > 0")
        if self.activations not in (None, 8):
            raise ConfigError(f"quant.activations: {self.activations!r} is not supported (8, or null for weights only)")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"quant.smooth_alpha: {self.smooth_alpha} must be in [0, 1] (or null: no smoothing)")
        if self.block < 1 or self.block % self.group_size:
            raise ConfigError(f"quant.block: {self.block} must be a positive multiple of group_size {self.group_size}")

    def role_bits(self, role: str) -> int | None:
        """Bits of ``role`` (None: kept in full precision); under the budget policy, the floor
        the budget starts from (4 bits; routers 8)."""
        if role not in ROLES:
            raise ConfigError(f"unknown quantization role '{role}' (roles: {', '.join(ROLES)})")
        if role in self.roles:
            return self.roles[role]
        if self.policy == "budget":
            return 8 if role == "router" else 4
        return MIXED[role] if self.policy == "mixed" else self.bits

    @property
    def smooths(self) -> bool:
        """Whether quantizing measures the inputs' channel ranges to smooth them (W8A8)."""
        return self.activations == 8 and self.smooth_alpha is not None

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq" or self.policy == "budget" or self.smooths
