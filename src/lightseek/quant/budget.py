"""The budget policy: 4 or 8 bits matrix by matrix, the most sensitive first, within a budget of
bits per weight (``quant.max_bits``).

A matrix's *sensitivity* at b bits is the rise of the calibration loss its rounding is expected
to cause, to second order with the diagonal of the Fisher information (the mean squared
gradient of each window's next-token loss, per weight):

    s_b(W) = sum_ij F_ij (W_ij - Q_b(W)_ij)^2

so a rounding error counts as much as the loss is sensitive to that weight, wherever the
matrix sits in the model (the Hessian a layer's GPTQ uses sees only that layer's output).
Every free matrix starts at 4 bits; promoting one to 8 saves ``s_4 - s_8`` and costs its
extra stored bits, and matrices are promoted in order of saving per bit while the whole model
(codes, scales, offsets and every full-precision tensor) stays within the budget. Roles fixed
by ``quant.roles``, and the routers (8 bits, tiny), are not chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightseek.errors import ConfigError
from lightseek.model.transformer import Transformer
from lightseek.quant.config import QuantConfig
from lightseek.quant.schemes import dequantize, quantize_rtn, stored_bits


@dataclass
class Sensitivity:
    path: str
    bits: dict[int, int]        # stored bits at 4 and at 8 bits
    loss: dict[int, float]      # estimated loss rise at 4 and at 8 bits

    @property
    def saving_per_bit(self) -> float:
        return (self.loss[4] - self.loss[8]) / max(self.bits[8] - self.bits[4], 1)


def fisher_diagonal(model: Transformer, windows: Sequence[torch.Tensor],
                    weights: Sequence[torch.nn.Parameter]) -> dict[int, torch.Tensor]:
    """Mean over ``windows`` (rows of the (b, T) batches, one window at a time) of the squared
    gradient of its mean next-token loss, for each of ``weights`` (by ``id``)."""
    wanted = {id(p) for p in weights}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    fisher = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in weights}
    n = 0
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        with torch.enable_grad():
            for batch in windows:
                for row in batch:
                    ids = row[None]
                    logits = model(ids[:, :-1]).logits
                    loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
                    grads = torch.autograd.grad(loss, list(weights), allow_unused=True)
                    for p, g in zip(weights, grads):
                        if g is not None:
                            fisher[id(p)] += g.float().square()
                    n += 1
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
    if n == 0:
        raise ConfigError("quant.policy budget: no calibration windows to measure sensitivity on")
    return {k: v / n for k, v in fisher.items()}


def sensitivities(model: Transformer, cfg: QuantConfig, free, windows: Sequence[torch.Tensor]) -> list[Sensitivity]:
    """The sensitivity of every target in ``free`` at 4 and 8 bits (round to nearest)."""
    from lightseek.quant.apply import _matrices, _params, _where

    params = {t.path: _params(model, t) for t in free}
    unique = list({id(p): p for ps in params.values() for p in ps.values()}.values())
    fisher = fisher_diagonal(model, windows, unique)
    out = []
    for t in free:
        loss = {4: 0.0, 8: 0.0}
        for name, w in _matrices(model, t).items():
            f = fisher[id(params[t.path][name])]
            f = f.transpose(1, 2) if t.kind == "experts" else f
            for b in loss:
                qt = quantize_rtn(w, b, cfg.group_size, cfg.pad_groups, _where(t, name, cfg), cfg.clip)
                loss[b] += (f * (dequantize(qt) - w.float()).square()).sum().item()
        out.append(Sensitivity(t.path, _stored(model, t, cfg.group_size), loss))
    return out


def _stored(model: Transformer, t, group: int) -> dict[int, int]:
    """Stored bits of target ``t`` at 4 and at 8 bits."""
    from lightseek.quant.apply import _matrices

    shapes = [w.shape for w in _matrices(model, t).values()]
    return {b: sum(stored_bits(s, b, group) for s in shapes) for b in (4, 8)}


def choose_bits(model: Transformer, cfg: QuantConfig, chosen,
                windows: torch.Tensor) -> tuple[dict[str, int], list[Sensitivity]]:
    """Bits of every target of ``chosen`` ((target, bits) at the policy's floor) under the budget
    ``cfg.max_bits``, sensitivities measured on ``windows`` (n, T): {path: bits} and the
    sensitivities it was chosen by. Routers and roles set by hand keep their bits."""
    from lightseek.quant.apply import _matrices, weight_bits

    free = [t for t, _ in chosen if t.role != "router" and t.role not in cfg.roles]
    n_params = sum(p.numel() for p in model.parameters())
    total = weight_bits(model)  # everything in full precision, then each chosen target at its (floor) bits
    for t, bits in chosen:
        total += _stored(model, t, cfg.group_size)[bits] - sum(8 * w.numel() * w.element_size()
                                                              for w in _matrices(model, t).values())
    budget = cfg.max_bits * n_params
    if total > budget:  # checked before the (slow) sensitivities
        raise ConfigError(f"quant.max_bits: {cfg.max_bits} bits per weight is below the least this model takes "
                          f"({total / n_params:.3f}, every free matrix at 4 bits in groups of {cfg.group_size}); "
                          f"raise max_bits or group_size")
    sens = sensitivities(model, cfg, free, [windows])
    bits = {s.path: 4 for s in sens}
    for s in sorted(sens, key=lambda s: s.saving_per_bit, reverse=True):
        extra = s.bits[8] - s.bits[4]
        if s.loss[4] > s.loss[8] and total + extra <= budget:
            bits[s.path] = 8
            total += extra
    return bits, sens
