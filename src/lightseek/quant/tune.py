"""End-to-end tuning of a quantized model's grids: scales and offsets trained against the
full-precision model, codes held fixed.

GPTQ (and its refit) fits each matrix to its own outputs on calibration inputs. What a user sees
is the whole model's next-token distribution, and the errors of 200-odd matrices add up on the
way there. This stage trains every quantized matrix's scales (and its 4-bit offsets) so that
the quantized model predicts as the full-precision one does: the loss is the per-token
KL(full precision || quantized) on calibration windows, its gradient flows through the
dequantized weights ``(q - 8) * s + z`` into ``s`` and ``z``, and Adam takes the steps (the
end-to-end stage of EfficientQAT, Chen et al., 2024, on GPTQ's codes). The codes stay as the
quantizer rounded them, so the checkpoint's layout, size and kernels are unchanged; only the
bf16 values of its scales and offsets differ.

Each scale is trained relative to where it started, ``s = s0 * (1 + a)`` and ``z = z0 + s0 * b``
with ``a`` and ``b`` from zero, so one learning rate is one relative step for a matrix of any
magnitude. The learning rate decays to zero on a cosine over the steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lightseek.eval.kl import kl_per_token
from lightseek.model.transformer import Transformer
from lightseek.quant.modules import _QuantWeights


class _Grid:
    """One stored grid (a module's scales, and offsets for 4 bits) and its trainable deltas."""

    def __init__(self, mod: _QuantWeights):
        self.scales, self.zeros = mod.scales, mod.zeros
        self.s0 = mod.scales.float()
        self.a = torch.zeros_like(self.s0, requires_grad=True)
        self.z0 = None if mod.zeros is None else mod.zeros.float()
        self.b = None if mod.zeros is None else torch.zeros_like(self.z0, requires_grad=True)

    def params(self) -> list[torch.Tensor]:
        return [self.a] + ([] if self.b is None else [self.b])

    def values(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.s0 * (1 + self.a)
        return s, None if self.b is None else self.z0 + self.s0 * self.b


def _grids(model: Transformer) -> tuple[list[_Grid], dict[_QuantWeights, _Grid]]:
    """A grid per stored scale tensor, and for every quantized module the grid it computes with
    (a tied head shares the embedding's)."""
    by_storage: dict[int, _Grid] = {}
    users: dict[_QuantWeights, _Grid] = {}
    for m in model.modules():
        if isinstance(m, _QuantWeights):
            key = m.scales.data_ptr()
            if key not in by_storage:
                by_storage[key] = _Grid(m)
            users[m] = by_storage[key]
    return list(by_storage.values()), users


def tune_grids(model: Transformer, reference: Transformer, windows: Sequence[torch.Tensor], steps: int,
               lr: float, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the scales and offsets of quantized ``model`` for ``steps`` steps, one batch of
    ``windows`` ((b, T) token ids, cycled) a step, towards ``reference`` (the full-precision
    model it was quantized from). Returns what happened: steps, the mean KL of the first and
    last steps' batches, seconds. ``model`` is changed in place; its codes are not."""
    grids, users = _grids(model)
    if not grids:
        raise ValueError("tune_grids: the model has no quantized weights")
    if steps < 1 or not windows:
        raise ValueError(f"tune_grids: needs at least one step and one window (got {steps} steps, "
                         f"{len(windows)} windows)")
    device = grids[0].s0.device
    params = [p for g in grids for p in g.params()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    was_training, reference_training = model.training, reference.training
    model.eval()
    reference.eval()
    kls, t0 = [], time.perf_counter()
    try:
        for i in range(steps):
            ids = windows[i % len(windows)].to(device)
            with torch.inference_mode():
                logq = F.log_softmax(reference(ids[:, :-1]).logits.float(), -1)
            for m, g in users.items():  # computed afresh each step: the graph runs through them
                m.scales, m.zeros = g.values()
            logp = F.log_softmax(model(ids[:, :-1]).logits.float(), -1)
            loss = kl_per_token(logq.clone(), logp).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            kls.append(loss.item())
            if on_step is not None:
                on_step(i, kls[-1])
    finally:
        with torch.no_grad():  # the stored tensors back in place, holding the tuned values in their dtype
            for g in grids:
                s, z = g.values()
                g.scales.copy_(s.to(g.scales.dtype))
                if g.zeros is not None:
                    g.zeros.copy_(z.to(g.zeros.dtype))
            for m, g in users.items():
                m.scales, m.zeros = g.scales, g.zeros
        model.reset_routing_stats()  # tuning is not serving traffic
        reference.reset_routing_stats()
        model.train(was_training)
        reference.train(reference_training)
    n = max(1, min(len(kls), len(windows)))
    return {"steps": steps, "lr": lr, "kl_first": sum(kls[:n]) / n, "kl_last": sum(kls[-n:]) / n,
            "seconds": round(time.perf_counter() - t0, 1)}

