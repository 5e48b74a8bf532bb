"""GPTQ rounds with less layer output error than round-to-nearest on correlated inputs."""

from __future__ import annotations

import pytest
import torch

from lightseek.quant.gptq import Hessian, gptq_quantize
from lightseek.quant.schemes import dequantize, group_codes, quantize_rtn


def correlated_inputs(rows: int, k: int, seed: int) -> torch.Tensor:
    """Inputs whose columns move together (a few strong directions), as activations do."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(123)) * torch.logspace(0, -2, k)[:, None]
    return torch.randn(rows, k, generator=g) @ mix


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,group", [(4, 32), (4, 64), (8, 0)])
def test_gptq_beats_rtn_on_output_error(bits: int, group: int, act_order: bool) -> None:
    k, n = 128, 64
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(7)) * 0.05
    calib, held_out = correlated_inputs(2048, k, 0), correlated_inputs(1024, k, 1)
    h = Hessian(k)
    h.add(calib)
    q_gptq = gptq_quantize(w[None], h.h, bits, group or 32, damp=0.01, block=64, act_order=act_order)
    q_rtn = quantize_rtn(w, bits, group or 32)

    def out_err(qw: torch.Tensor) -> float:
        return ((held_out @ (qw - w).T).norm() / (held_out @ w.T).norm()).item()

    e_gptq, e_rtn = out_err(dequantize(q_gptq)[0]), out_err(dequantize(q_rtn))
    assert e_gptq < 0.7 * e_rtn, (e_gptq, e_rtn)
    # the codes stay on the same kind of grid
    assert q_gptq.qweight.dtype == q_rtn.qweight.dtype and q_gptq.scales.shape[1:] == q_rtn.scales.shape


def test_gptq_without_calibration_inputs_is_rounding_to_nearest() -> None:
    w = torch.randn(2, 32, 64, generator=torch.Generator().manual_seed(0))  # two experts
    h = Hessian(64, batch=2)  # no rows seen: all-zero Hessians
    qt = gptq_quantize(w, h.h, 4, 32, damp=0.01, block=64)
    assert torch.equal(qt.qweight, quantize_rtn(w, 4, 32).qweight)


@pytest.mark.parametrize("bits", [4, 8])
def test_act_order_keeps_the_stored_column_layout(bits: int) -> None:
    """With uncorrelated inputs there is no error to spread, so GPTQ in any order is rounding to
    nearest on the unrounded weights' grids: act order (columns visited by a shuffled, decreasing
    Hessian diagonal) must put every code back in its own column and group."""
    w = torch.randn(3, 16, 128, generator=torch.Generator().manual_seed(1))
    energy = torch.rand(3, 128, generator=torch.Generator().manual_seed(2)) + 0.1
    h = torch.diag_embed(energy.double())
    qt = gptq_quantize(w, h, bits, 32, damp=0.0, block=64, act_order=True)
    rtn = quantize_rtn(w, bits, 32, clip=(1.0,))
    assert torch.equal(qt.qweight, rtn.qweight) and torch.equal(qt.scales, rtn.scales)


def test_collected_hessians_are_each_layers_input_products() -> None:
    """collect_hessians on a small model: every watched layer's Hessian equals sum x x^T of the
    inputs it saw (recorded separately), and layers called on one tensor (wq, wk, wv) share one."""
    from lightseek.model.config import preset
    from lightseek.model.transformer import Transformer
    from lightseek.quant.gptq import collect_hessians

    torch.manual_seed(0)
    model = Transformer(preset("debug")).eval()
    block = model.layers[0]
    linears = {"wq": block.attn.wq, "wk": block.attn.wk, "wv": block.attn.wv, "wo": block.attn.wo}
    seen: dict[str, list[torch.Tensor]] = {p: [] for p in linears}
    hooks = [m.register_forward_pre_hook(lambda m, a, p=p: seen[p].append(a[0].reshape(-1, a[0].shape[-1])))
             for p, m in linears.items()]
    batches = [torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(i))
               for i in range(3)]
    sinks = collect_hessians(lambda: [model(b) for b in batches], linears, {})
    for h in hooks:
        h.remove()
    for path in linears:
        x = torch.cat(seen[path]).double()
        exact = x.T @ x  # float32 products per call: a relative error near 1e-6 of the largest entry
        torch.testing.assert_close(sinks[path].h[0], exact, rtol=0, atol=1e-5 * exact.abs().max().item())
        assert sinks[path].rows[0] == x.shape[0] == 3 * 2 * 16
    assert sinks["wq"] is sinks["wk"] is sinks["wv"] and sinks["wo"] is not sinks["wq"]


def _row_errors(w: torch.Tensor, h: torch.Tensor, qt) -> torch.Tensor:
    d = w.double() - dequantize(qt, torch.float64)
    return ((d @ h) * d).sum(-1)


@pytest.mark.parametrize("k", [128, 96])  # 96: a short last group of 32 (padded)
def test_refit_grid_is_the_least_squares_grid_of_the_codes(k: int) -> None:
    """refit_grid keeps the codes and solves for each row's scales and offsets: the output error
    of each row falls, and no small move of any one scale or offset lowers it further."""
    from lightseek.quant.gptq import refit_grid

    w = torch.randn(2, 16, k, generator=torch.Generator().manual_seed(3)) * 0.05
    h = Hessian(k, batch=2)
    h.add(correlated_inputs(1024, k, 0), 0)
    h.add(correlated_inputs(1024, k, 1), 1)
    qt = gptq_quantize(w, h.h, 4, 64, damp=0.0, block=64, pad=True, act_order=True)
    fit = refit_grid(w, h.h, qt, damp=0.0)
    assert torch.equal(fit.qweight, qt.qweight) and fit.scales.dtype == qt.scales.dtype
    before, after = _row_errors(w, h.h, qt), _row_errors(w, h.h, fit)
    assert (after <= before * 1.0001).all() and after.sum() < 0.97 * before.sum(), (before.sum(), after.sum())
    # each row's grid is the least-squares one: against an explicit design matrix, solved by lstsq
    g, G = 64, fit.scales.shape[-1]
    codes = group_codes(qt).double()[..., :k] - 8.0                           # (B, N, K)
    member = torch.nn.functional.one_hot(torch.arange(k) // g, G).double()      # (K, G)
    for b in range(2):
        L = torch.linalg.cholesky(h.h[b])
        for r in range(16):
            design = torch.cat([codes[b, r, :, None] * member, member], -1)    # (K, 2G)
            theta = torch.linalg.lstsq(L.T @ design, L.T @ w[b, r].double()[:, None]).solution[:, 0]
            torch.testing.assert_close(fit.scales[b, r].double(), theta[:G].bfloat16().double(), rtol=8e-3, atol=1e-5)
            torch.testing.assert_close(fit.zeros[b, r].double(), theta[G:].bfloat16().double(), rtol=8e-3, atol=1e-5)


def test_refit_rounds_never_make_a_row_worse_and_keep_the_layout() -> None:
    k, n = 128, 32
    w = torch.randn(1, n, k, generator=torch.Generator().manual_seed(5)) * 0.05
    h = Hessian(k)
    h.add(correlated_inputs(2048, k, 2))
    base = gptq_quantize(w, h.h, 4, 64, damp=0.01, block=64, act_order=True)
    errs = [_row_errors(w, h.h, base)]
    for rounds in (1, 2):
        qt = gptq_quantize(w, h.h, 4, 64, damp=0.01, block=64, act_order=True, refit=rounds)
        assert qt.qweight.shape == base.qweight.shape and qt.scales.shape == base.scales.shape
        errs.append(_row_errors(w, h.h, qt))
        assert (errs[-1] <= errs[-2] * 1.0001).all()
    assert errs[-1].sum() < 0.9 * errs[0].sum()
    # int8 has one scale per channel and no grid to refit: unchanged
    q8 = gptq_quantize(w, h.h, 8, 64, damp=0.01, block=64, refit=2)
    assert torch.equal(q8.qweight, gptq_quantize(w, h.h, 8, 64, damp=0.01, block=64).qweight)


@pytest.mark.parametrize("act_order", [False, True])
def test_rounding_on_a_given_grid_uses_that_grid(act_order: bool) -> None:
    """A refit round's GPTQ pass rounds on the grids it is given: with uncorrelated inputs
    (nothing to compensate) its codes are plain rounding on those grids, in every column."""
    from lightseek.quant.gptq import _gptq
    from lightseek.quant.schemes import int4_codes, pack_codes

    w = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(4))
    h = torch.diag_embed(torch.rand(2, 128, generator=torch.Generator().manual_seed(5)).double() + 0.1)
    other = quantize_rtn(w * 1.3 + 0.05, 4, 32)                      # some grid other than w's own
    qt = _gptq(w, h, 4, 32, 0.0, 64, False, "w", (1.0,), act_order, grid=(other.scales, other.zeros))
    s, z = other.scales.float().repeat_interleave(32, -1), other.zeros.float().repeat_interleave(32, -1)
    assert torch.equal(qt.scales, other.scales) and torch.equal(qt.zeros, other.zeros)
    assert torch.equal(qt.qweight, pack_codes(int4_codes(w, s, z), 128))


def test_refit_leaves_its_inputs_alone_and_uncalibrated_experts_rounded_to_nearest() -> None:
    """gptq_quantize with refit rounds never writes to the caller's weights or Hessians (fp64
    weights in stored order were once updated in place), and an expert no calibration token
    reached stays at round-to-nearest."""
    w = torch.randn(2, 16, 96, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 0.05
    h = Hessian(96, batch=2)
    h.add(correlated_inputs(512, 96, 3), 0)                            # expert 1 sees nothing
    w0, h0 = w.clone(), h.h.clone()
    qt = gptq_quantize(w, h.h, 4, 32, damp=0.01, block=32, refit=2)
    assert torch.equal(w, w0) and torch.equal(h.h, h0)
    assert torch.equal(qt.qweight[1], quantize_rtn(w[1], 4, 32).qweight)
