"""The training-free baseline for dynamic MoE: magnitude thresholding of FFN activations (TEAL).

TEAL (Liu et al. 2024) zeroes the entries of each linear layer's input whose magnitude falls
below a per-layer threshold, calibrated so that a target share of entries is zero, and skips
the matching weight columns. Here each FFN gets two thresholds: on its input (the columns of
``W1`` and ``W3`` skipped) and on its intermediate activations (the columns of ``W2`` skipped).
At sparsity ``s`` on both, the share of FFN weights used per token is ``1 - s``, the same
measure as the routed experts' active share, so the two compare at equal FFN compute.

This module measures quality only: it computes the dense products and masks them. Realising
the speed needs sparse kernels, which lightseek does not have for this baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.model.moe import SwiGLU
from lightseek.model.transformer import Transformer
from lightseek.moefy.convert import layerwise


class ThresholdFFN(nn.Module):
    """A SwiGLU FFN whose small input and intermediate activations are zeroed."""

    def __init__(self, ffn: SwiGLU, t_in: float, t_mid: float):
        super().__init__()
        self.ffn = ffn
        self.t_in, self.t_mid = t_in, t_mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(x.abs() < self.t_in, 0.0)
        h = F.silu(self.ffn.w1(x)) * self.ffn.w3(x)
        return self.ffn.w2(h.masked_fill(h.abs() < self.t_mid, 0.0))


def _quantile(values: torch.Tensor, q: float, max_n: int = 1 << 22) -> float:
    if q == 0.0:  # nothing zeroed, on any input
        return 0.0
    flat = values.reshape(-1)
    if flat.numel() > max_n:  # torch.quantile has an input size limit; a strided sample is plenty
        flat = flat[:: flat.numel() // max_n + 1]
    return float(torch.quantile(flat.float(), q))


@torch.no_grad()
def threshold_ffns(model: Transformer, windows: list[torch.Tensor], sparsity: float) -> list[tuple[float, float]]:
    """Replace every dense FFN of ``model`` by a `ThresholdFFN` whose thresholds zero a share
    ``sparsity`` of its inputs and of its intermediate activations on ``windows`` (calibrated
    layer by layer, each on inputs from the thresholded layers below). Returns the thresholds."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    out = []
    for _, block, u_ND in layerwise(model, windows):
        ffn = block.ffn.ffn if isinstance(block.ffn, ThresholdFFN) else block.ffn
        if not isinstance(ffn, SwiGLU):
            continue
        t_in = _quantile(u_ND.abs(), sparsity)
        x = u_ND.masked_fill(u_ND.abs() < t_in, 0.0)
        t_mid = _quantile((F.silu(ffn.w1(x)) * ffn.w3(x)).abs(), sparsity)
        block.ffn = ThresholdFFN(ffn, t_in, t_mid)
        out.append((t_in, t_mid))
    return out
