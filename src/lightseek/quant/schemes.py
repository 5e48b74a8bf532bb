"""Weight quantization schemes on plain tensors: int8 per output channel, int4 per group.

A weight is ``(..., N, K)``: N output channels, K input columns (leading dims stack experts,
each with its own scales). The grids:

    int8   w = q * scale,                q in [-127, 127], one scale per output channel
    int4   w = (q - 8) * scale + zero,   q in [0, 15], a scale and an offset per group of
                                         ``group`` input columns (asymmetric, min..max)

The int4 form is the one PyTorch's int4 CPU kernel computes, so codes, scales and offsets go to
it unchanged. Scales and offsets are stored in bf16 (the packed kernels' fast path computes in
bf16) and the codes are rounded against the bf16 values, so what is stored is exactly what both
the packed kernels and the reference compute with. int4 codes are stored two
per byte (even column in the low nibble): ``(..., N, K / 2)`` uint8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightseek.errors import ConfigError

SCALE_DTYPE = torch.bfloat16


@dataclass
class QTensor:
    """A quantized ``(..., N, K)`` weight."""

    bits: int
    group: int                 # input columns per scale (0: one scale per output channel)
    qweight: torch.Tensor      # int8 (..., N, K) or uint8 (..., N, ceil(K / 2)) for 4 bits
    scales: torch.Tensor       # bf16 (..., N) for 8 bits, (..., N, ceil(K / group)) for 4 bits
    zeros: torch.Tensor | None  # bf16 (..., N, ceil(K / group)) for 4 bits
    in_features: int           # K (a last group shorter than ``group`` covers the remaining columns)

    @property
    def out_features(self) -> int:
        return self.qweight.shape[-2]

    def storage_bits(self) -> int:
        """Bits on disk: codes, scales and offsets."""
        return sum(8 * t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros) if t is not None)


def stored_bits(shape: Sequence[int], bits: int, group: int) -> int:
    """Bits a ``(..., N, K)`` weight takes quantized: codes, and bf16 scales (and offsets for 4
    bits); what ``QTensor.storage_bits`` counts, from the shape alone."""
    *lead, n, k = shape
    rows = n * math.prod(lead)
    if bits == 8:
        return rows * (8 * k + 16)
    return rows * (8 * -(-k // 2) + 2 * 16 * -(-k // group))


def padded_dim(k: int, group: int, pad: bool, where: str) -> int:
    """K rounded up to whole groups; without ``pad`` a K that is not a multiple is an error."""
    if k % group == 0:
        return k
    if not pad:
        ok = [g for g in (32, 64, 128) if k % g == 0]
        raise ConfigError(f"{where}: group_size {group} does not divide its input dim {k} "
                          f"({'use group ' + ' or '.join(map(str, ok)) if ok else 'no supported group size does'}, "
                          f"or set quant.pad_groups=true)")
    return -(-k // group) * group


def pad_columns(w: torch.Tensor, kp: int) -> torch.Tensor:
    """``w`` (..., K) widened to ``kp`` columns by repeating its last column (so a short last
    group's grid spans only its real values)."""
    k = w.shape[-1]
    return w if kp == k else torch.cat([w, w[..., -1:].expand(*w.shape[:-1], kp - k)], -1)


def pack_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` columns of 4-bit codes, two per byte (an odd K gets one filler code)."""
    codes = codes[..., :k]
    if k % 2:
        codes = torch.cat([codes, torch.full_like(codes[..., :1], 8)], -1)
    return pack_nibbles(codes)


def group_codes(qt: QTensor) -> torch.Tensor:
    """The 4-bit codes of ``qt`` as (..., N, n_groups * group) uint8, a short last group filled
    with code 8 (which the kernels multiply by zero-padded inputs)."""
    k = qt.in_features
    kp = qt.scales.shape[-1] * qt.group
    codes = unpack_nibbles(qt.qweight)[..., :k]
    return torch.nn.functional.pad(codes, (0, kp - k), value=8)


def int8_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale (..., N), max |w| / 127, rounded to bf16 (as stored)."""
    scale = w.float().abs().amax(-1) / 127.0
    return scale.clamp_min(1e-6).to(SCALE_DTYPE).float()


def int8_codes(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Codes of ``w`` (..., N, K) on the grid of ``scale`` (..., N), as float."""
    return (w.float() / scale[..., None]).round().clamp(-127, 127)


def int4_grid(w_group: torch.Tensor, clip: Sequence[float] = (1.0,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and offset (..., n_groups) of groups (..., n_groups, G), in bf16: the grid spans
    min..max shrunk by each factor of ``clip``, and the one with the least squared rounding
    error of the group is kept (clipping a few outliers can round the rest more finely)."""
    w = w_group.float()
    best = None
    for a in clip:
        lo, hi = a * w.amin(-1), a * w.amax(-1)
        scale = ((hi - lo) / 15.0).clamp_min(1e-6).to(SCALE_DTYPE).float()
        zero = (lo + 8.0 * scale).to(SCALE_DTYPE).float()
        if len(clip) == 1:
            return scale, zero
        q = int4_codes(w, scale[..., None], zero[..., None])
        err = ((q - 8.0) * scale[..., None] + zero[..., None] - w).square().sum(-1)
        if best is None:
            best = [err, scale, zero]
        else:
            better = err < best[0]
            best = [torch.where(better, new, old) for new, old in zip((err, scale, zero), best)]
    return best[1], best[2]


def int4_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes in [0, 15] of ``w`` on the grid (scale, zero), same leading shape, as float."""
    return ((w.float() - zero) / scale + 8.0).round().clamp(0, 15)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(..., K) codes in [0, 15] -> (..., K / 2) uint8, even columns in the low nibble."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(..., K / 2) uint8 -> (..., K) uint8 codes."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


def quantize_rtn(w: torch.Tensor, bits: int, group: int, pad: bool = False, where: str = "weight",
                 clip: Sequence[float] = (1.0,)) -> QTensor:
    """Round ``w`` (..., N, K) to the nearest point of its grid (int4 grids chosen over ``clip``)."""
    k = w.shape[-1]
    if bits == 8:
        scale = int8_scale(w)
        return QTensor(8, 0, int8_codes(w, scale).to(torch.int8), scale.to(SCALE_DTYPE), None, k)
    kp = padded_dim(k, group, pad, where)
    wp = pad_columns(w.float(), kp)                                       # (..., N, Kp)
    groups = wp.unflatten(-1, (kp // group, group))                       # (..., N, Kp/G, G)
    scale, zero = int4_grid(groups, clip)                                 # (..., N, Kp/G)
    codes = int4_codes(groups, scale[..., None], zero[..., None]).flatten(-2)
    return QTensor(4, group, pack_codes(codes, k), scale.to(SCALE_DTYPE), zero.to(SCALE_DTYPE), k)


def dequantize(qt: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight the codes stand for, (..., N, K)."""
    if qt.bits == 8:
        return (qt.qweight.to(dtype) * qt.scales.to(dtype)[..., None])
    codes = group_codes(qt).to(dtype)                                     # (..., N, Kp)
    g = codes.unflatten(-1, (-1, qt.group))                               # (..., N, Kp/G, G)
    w = (g - 8.0) * qt.scales.to(dtype)[..., None] + qt.zeros.to(dtype)[..., None]
    return w.flatten(-2)[..., :qt.in_features]


def check_bits(bits: int, where: str) -> None:
    if bits not in (4, 8):
        raise ConfigError(f"{where}: bits {bits} not in {{4, 8}}")
