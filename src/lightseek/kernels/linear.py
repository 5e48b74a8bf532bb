"""Linear products for inference on CPU: the output features in slices through one ``bmm``.

With a few rows against a weight of hundreds of thousands of elements, the BLAS behind
``F.linear`` runs the product on one thread (at one row, 2 threads take as long as one), while
``bmm`` spreads the slices of a batched product over the threads. bench/sliced_linear.py
measures each of SmolLM2's projection shapes at 1-256 rows, and the model's decoding, with and
without the slices.

Small weights lose (``bmm``'s own cost: 128 x 384 at one row, 10 -> 20 us), so they, and every
case not measured (other devices and dtypes, autocast, a gradient to record, more than
``MAX_ROWS`` rows), take ``F.linear``. The values equal ``F.linear``'s up to float rounding (a
slice may sum in another order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_WEIGHT = 100_000  # elements; measured: 576 x 192 gains (50 -> 27 us at one row), 128 x 384 loses
MAX_ROWS = 256        # measured up to here; a long prefill chunk's product is large enough for the BLAS


def sliced(x: torch.Tensor, weight: torch.Tensor, slices: int) -> bool:
    """Whether ``sliced_linear`` takes the sliced product for these operands."""
    n, k = weight.shape
    return (slices > 1 and n % slices == 0 and n * k >= MIN_WEIGHT and x.device.type == "cpu"
            and weight.dtype == torch.float32 and x.dtype == torch.float32 and x.shape[-1] == k
            and x.numel() // k <= MAX_ROWS and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)))


class _StoredLowPrecision(torch.autograd.Function):
    """``F.linear`` of fp32 inputs with a frozen weight stored in bf16 or fp16: computed in fp32
    from the weight upcast for the call, and only the stored weight kept for backward (the
    input's gradient upcasts it again), so a frozen base held in bf16 under adapters costs half
    the memory of an fp32 one and trains with fp32 arithmetic."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_y):
        (weight,) = ctx.saved_tensors
        return grad_y @ weight.to(grad_y.dtype), None, None


def stored_low_precision(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``weight`` is held in a lower precision than the fp32 ``x`` it multiplies (outside
    autocast, which casts both itself): a frozen base stored in bf16 (`lora.store_frozen`)."""
    return (x.dtype == torch.float32 and weight.dtype in (torch.bfloat16, torch.float16)
            and not torch.is_autocast_enabled(x.device.type))


def sliced_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  slices: int = 4) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, as ``slices`` slices of the output features through one
    ``bmm`` where that is faster (`sliced`). A weight stored in bf16 or fp16 under fp32 inputs
    computes in fp32 (`stored_low_precision`); it must be frozen."""
    if stored_low_precision(x, weight):
        if weight.requires_grad or (bias is not None and bias.requires_grad):
            raise ValueError(f"a {weight.dtype} weight with {x.dtype} inputs must be frozen (it is held in "
                             f"low precision for adapters); train it in {x.dtype}")
        return _StoredLowPrecision.apply(x, weight, bias)
    if not sliced(x, weight, slices):
        return F.linear(x, weight, bias)
    n, k = weight.shape
    rows = x.numel() // k
    x_SMK = x.reshape(rows, k).expand(slices, rows, k)
    w_SKN = weight.view(slices, n // slices, k).transpose(1, 2)
    if bias is None:
        y_SMN = torch.bmm(x_SMK, w_SKN)
    else:
        y_SMN = torch.baddbmm(bias.view(slices, 1, n // slices), x_SMK, w_SKN)
    return y_SMN.transpose(0, 1).reshape(*x.shape[:-1], n)


class Linear(nn.Linear):
    """``nn.Linear`` whose product on CPU is `sliced_linear` (same parameters, same state dict;
    a product that records a gradient, and every other case `sliced` leaves out, is
    ``F.linear``). ``SLICES = 1`` turns it off, for this class and the products built from it."""

    SLICES = 4  # 2 and 4 measured alike on 2 cores; 4 leaves room for more threads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sliced_linear(x, self.weight, self.bias, self.SLICES)
