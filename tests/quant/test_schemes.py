"""Quantize-dequantize error bounds of each scheme, nibble packing, packed kernels vs reference."""

from __future__ import annotations

import pytest
import torch

from lightseek.kernels.dispatch import moe_reference
from lightseek.quant.modules import QuantLinear, RowExperts, _QuantWeights, quant_few_tokens, quant_segments
from lightseek.quant.schemes import dequantize, pack_nibbles, quantize_rtn, unpack_nibbles


def weight(n: int = 96, k: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, 3] *= 8  # an outlier column: groups and channels see different ranges
    return w


def test_int8_per_channel_error_is_at_most_half_a_step() -> None:
    w = weight()
    qt = quantize_rtn(w, 8, 0)
    assert qt.qweight.dtype == torch.int8 and qt.scales.shape == (96,)
    err = (dequantize(qt) - w).abs()
    step = qt.scales.float()[:, None]
    assert (err <= 0.5 * step * 1.01 + 1e-7).all()
    assert (err / w.abs().amax(1, keepdim=True)).max() < 1 / 250   # half of max / 127, per row
    assert err.max() > 0  # it does round


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_group_error_is_at_most_half_a_step(group: int) -> None:
    w = weight()
    qt = quantize_rtn(w, 4, group)
    assert qt.qweight.shape == (96, 64) and qt.scales.shape == (96, 128 // group)
    step = qt.scales.float().repeat_interleave(group, 1)
    zero = qt.zeros.float().abs().repeat_interleave(group, 1)
    err = (dequantize(qt) - w).abs()
    assert (err <= 0.5 * step + zero * 2**-8 + 1e-6).all()
    codes = unpack_nibbles(qt.qweight)
    assert codes.max() <= 15 and codes.min() == 0  # the grid spans each group's min..max


def test_smaller_groups_round_more_finely() -> None:
    w = weight()
    errs = [(dequantize(quantize_rtn(w, 4, g)) - w).norm().item() for g in (32, 64, 128)]
    assert errs[0] < errs[1] < errs[2]
    assert (dequantize(quantize_rtn(w, 8, 0)) - w).norm().item() < errs[0] / 4


def test_nibbles_round_trip_and_stacked_experts_have_own_scales() -> None:
    codes = torch.randint(0, 16, (3, 5, 64), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)
    stack = torch.stack([weight(seed=0), 10 * weight(seed=1)])             # (E=2, N, K), very different ranges
    qt = quantize_rtn(stack, 4, 32)
    assert qt.scales.shape == (2, 96, 4)
    assert qt.scales[1].float().mean() > 5 * qt.scales[0].float().mean()
    assert torch.allclose(dequantize(qt)[1], dequantize(quantize_rtn(stack[1], 4, 32)))


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 64), (4, 128)])
@pytest.mark.parametrize("rows", [1, 8])
def test_packed_kernel_equals_the_dequantized_reference(bits: int, group: int, rows: int) -> None:
    w = weight(n=96, k=256)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(1))
    layer = QuantLinear(quantize_rtn(w, bits, group or 32), kernel="packed")
    with torch.no_grad():
        packed = layer(x)
        assert layer._packed is not None  # the packed kernel ran
        layer.kernel = "dequant"
        ref = layer(x)
    assert torch.allclose(ref, x @ dequantize(layer.qtensor()).T, atol=1e-5)
    rel = (packed - ref).norm() / ref.norm()
    assert rel < 1e-2  # bf16 activations into the kernel, fp32 accumulation


def test_packed_experts_equal_the_reference_dispatch() -> None:
    g = torch.Generator().manual_seed(0)
    E, D, H, T = 4, 64, 32, 20
    w1, w3, w2 = (torch.randn(E, a, b, generator=g) * 0.1 for a, b in ((D, H), (D, H), (H, D)))
    stacks = {"w1": quantize_rtn(w1.transpose(1, 2), 4, 32), "w3": quantize_rtn(w3.transpose(1, 2), 4, 32),
              "w2": quantize_rtn(w2.transpose(1, 2), 8, 0)}
    q = torch.nn.ModuleDict({k: _QuantWeights(v, "packed") for k, v in stacks.items()})
    x = torch.randn(T, D, generator=g)
    ids = torch.randint(0, E, (T, 2), generator=g)
    ids[0, 1] = E  # an unused slot (sentinel)
    wts = torch.rand(T, 2, generator=g)
    deq = [dequantize(stacks[k]).transpose(1, 2) for k in ("w1", "w3", "w2")]
    ref = moe_reference(x, ids, wts, *deq)
    with torch.no_grad():
        out = quant_segments(x, ids, wts, q)
    assert (out - ref).norm() / ref.norm() < 1e-2
    for m in q.values():
        m.kernel = "dequant"
    assert torch.allclose(quant_segments(x, ids, wts, q), ref, atol=1e-5)
    # the decode path (a few tokens, no sorting) computes the same rows as the segment path
    for kernel in ("packed", "dequant"):
        for m in q.values():
            m.kernel = kernel
        with torch.no_grad():
            for rows in (slice(0, 1), slice(0, 3)):  # row 0 has an unused slot
                torch.testing.assert_close(quant_few_tokens(x[rows], ids[rows], wts[rows], q),
                                           quant_segments(x[rows], ids[rows], wts[rows], q), atol=1e-5, rtol=1e-4)
            assert quant_few_tokens(x[:0], ids[:0], wts[:0], q).shape == (0, D)


def test_a_short_last_group_is_stored_unpadded_and_computed_alike() -> None:
    w = weight(n=32, k=96)  # 96 input columns in groups of 64: one full group, one of 32
    qt = quantize_rtn(w, 4, 64, pad=True)
    assert qt.qweight.shape == (32, 48) and qt.scales.shape == (32, 2)  # no padded codes on disk
    err = (dequantize(qt) - w).abs()
    step = qt.scales.float().repeat_interleave(64, 1)[:, :96]
    assert (err <= 0.5 * step * 1.01 + 1e-6).all()
    x = torch.randn(5, 96)
    layer = QuantLinear(qt, kernel="packed")
    with torch.no_grad():
        packed = layer(x)
    assert layer._packed is not None
    ref = x @ dequantize(qt).T
    assert (packed - ref).norm() / ref.norm() < 1e-2


def test_clip_search_lowers_the_rounding_error_of_gaussian_groups() -> None:
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(0)) * 0.05  # tails, no single outlier
    clip = (1.0, 0.95, 0.9, 0.85, 0.8)
    for group in (32, 64, 128):
        plain = (dequantize(quantize_rtn(w, 4, group)) - w).square().sum()
        searched = (dequantize(quantize_rtn(w, 4, group, clip=clip)) - w).square().sum()
        assert searched < 0.97 * plain


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 64)])
def test_a_quantized_head_computes_its_largest_logits_in_fp32(bits: int, group: int) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2000, 128, generator=g) * 0.5  # logits of tens, where bf16 steps are 1/8 and more
    x = torch.randn(2, 5, 128, generator=g)
    head = QuantLinear(quantize_rtn(w, bits, group or 32), kernel="packed")
    with torch.no_grad():
        rounded = head(x)
        head.exact_top = 64
        exact = head(x)
        head.kernel = "dequant"
        ref = head(x)
    top = rounded.topk(64, -1).indices
    assert exact.dtype == x.dtype and exact.shape == (2, 5, 2000)
    # the kernel's top 64 of each row as the fp32 reference computes them; the rest as the kernel rounds them
    torch.testing.assert_close(exact.gather(-1, top), ref.gather(-1, top), rtol=1e-5, atol=1e-4)
    assert (rounded.gather(-1, top) - ref.gather(-1, top)).abs().max() > 1e-2
    rest = torch.ones_like(ref, dtype=torch.bool).scatter(-1, top, False)
    assert torch.equal(exact[rest], rounded[rest])


def _expert_stacks(bits13: int, bits2: int, group: int, E: int = 6, D: int = 128, H: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w1, w3, w2 = (torch.randn(E, a, b, generator=g) * 0.1 for a, b in ((D, H), (D, H), (H, D)))
    stacks = {"w1": quantize_rtn(w1.transpose(1, 2).contiguous(), bits13, group, pad=True),
              "w3": quantize_rtn(w3.transpose(1, 2).contiguous(), bits13, group, pad=True),
              "w2": quantize_rtn(w2.transpose(1, 2).contiguous(), bits2, group, pad=True)}
    deq = [dequantize(stacks[k]).transpose(1, 2) for k in ("w1", "w3", "w2")]
    return torch.nn.ModuleDict({k: _QuantWeights(v, "packed") for k, v in stacks.items()}), deq


# 4-bit gate and up with experts of 64 or 128 neurons: whole row blocks of the kernel's layout on
# AVX2 (32) and AVX-512 (64). (4, 4, 128, 64): the down projection's 64 inputs padded to a group of
# 128, which the gathered product must keep apart per expert; (8, 4, 64, 96) likewise with 8-bit
# gate and up (no row blocks), as the budget policy may mix them; E = 2: the fewest experts.
@pytest.mark.parametrize("bits13,bits2,group,H,E", [(4, 4, 32, 128, 6), (4, 4, 128, 64, 6), (4, 8, 32, 128, 6),
                                                    (8, 8, 32, 96, 6), (8, 4, 64, 96, 6), (4, 4, 32, 64, 2)])
def test_row_experts_gather_the_chosen_experts_into_two_products(bits13: int, bits2: int, group: int, H: int,
                                                                  E: int) -> None:
    """One row's chosen experts through `RowExperts` (their packed weights gathered, w1 and w3 as
    one product, 4-bit w2 as one) equal the dequantized reference, with any number of experts,
    weights of one or not, and an unused slot; `quant_few_tokens` uses it where given."""
    q, deq = _expert_stacks(bits13, bits2, group, E=E, H=H)
    row = RowExperts.build(q)
    assert row is not None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 128, generator=g)
    for k in sorted({1, min(3, E), E}):
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(4)])
        for wts in (torch.ones(4, k), torch.rand(4, k, generator=g)):
            ref = moe_reference(x, ids, wts, *deq)
            with torch.no_grad():
                got = quant_few_tokens(x, ids, wts, q, row)
                one_by_one = quant_few_tokens(x, ids, wts, q)
            assert (got - ref).norm() / ref.norm() < 1e-2
            torch.testing.assert_close(got, one_by_one, atol=2e-2, rtol=2e-2)  # bf16 outputs summed in another order
    ids = torch.tensor([[1, E, E], [E, E, E]])  # sentinel slots; a row with no expert at all is zero
    wts = torch.ones(2, 3)
    with torch.no_grad():
        got = quant_few_tokens(x[:2], ids, wts, q, row)
    ref = moe_reference(x[:1], ids[:1, :1], wts[:1, :1], *deq)
    assert (got[:1] - ref).norm() / ref.norm() < 1e-2 and not got[1].any()


def test_row_experts_keep_one_copy_of_the_gate_and_up_codes() -> None:
    """8-bit gate and up codes are gathered from the layer's own buffers; 4-bit ones are held once,
    and the per-expert products read views of them."""
    q8, _ = _expert_stacks(8, 8, 32)
    row = RowExperts.build(q8)
    assert row.w13[0] is q8["w1"].qweight and row.w13[1] is q8["w3"].qweight
    q4, _ = _expert_stacks(4, 4, 32, H=128)
    row = RowExperts.build(q4)
    stacked = row.w13.untyped_storage().data_ptr()
    for m in (q4["w1"], q4["w3"]):
        assert all(w.untyped_storage().data_ptr() == stacked for w, _ in m.packed())


def test_row_experts_only_where_the_packed_kernels_run() -> None:
    """No one-row path where the packed kernels do not run (the reference kernel chosen) or where
    gate and up differ in format; the per-expert path then computes the rows."""
    q, _ = _expert_stacks(4, 4, 32, H=128)
    assert RowExperts.build(q) is not None
    for m in q.values():
        m.kernel = "dequant"
    assert RowExperts.build(q) is None
    mixed, _ = _expert_stacks(4, 4, 32, H=128)
    mixed["w3"] = _expert_stacks(8, 8, 32, H=128)[0]["w3"]
    assert RowExperts.build(mixed) is None
