"""GPTQ: calibrated rounding that compensates each column's error in the columns not yet rounded.

For a layer ``y = x W^T`` the output error of a rounded weight is ``(W - Q) H (W - Q)^T`` with
``H = sum x x^T`` over calibration inputs. Columns are rounded one at a time; the error of each
is spread over the remaining columns through the inverse Hessian (its upper Cholesky factor),
so inputs that move together correct each other (Frantar et al., 2022). In stored order the grid
of a 4-bit group is fixed when the first column of the group is reached, from the weights as
updated so far; in act order (largest Hessian diagonal first) every grid is fixed up front.
Once the codes are rounded, each row's 4-bit grids are refit to them by least squares of the
same output error (``refit_grid``), and a further round rounds again on the refit grids.

Hessians are collected while calibration windows run (the caller decides through what: the
whole full-precision model, or one block of a model quantized block by block): a forward
pre-hook on every watched nn.Linear (and router), and for the routed experts the dispatch is
wrapped so that each expert's Hessians use only the tokens routed to it (w1/w3: its inputs; w2:
its hidden activations). All solves are batched over a leading dim (the experts of a layer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.model.moe import MoE
from lightseek.quant.schemes import (
    SCALE_DTYPE,
    QTensor,
    dequantize,
    group_codes,
    int4_codes,
    int4_grid,
    int8_codes,
    int8_scale,
    pack_codes,
    pad_columns,
    padded_dim,
)


class Hessian:
    """Running ``sum x x^T`` (B, K, K) in float64 and the number of rows seen per matrix (B,).

    Each call's product is computed in float32 (one batch of rows: a relative error near 1e-6,
    far under the damping) and summed in float64 across calls; float64 products took most of a
    GPTQ run's time (about 2x slower)."""

    def __init__(self, k: int, batch: int = 1):
        self.h = torch.zeros(batch, k, k, dtype=torch.float64)
        self.rows = torch.zeros(batch, dtype=torch.long)

    def add(self, x: torch.Tensor, index: int = 0) -> None:
        x = x.reshape(-1, x.shape[-1]).detach().float().cpu()           # (rows, K)
        self.h[index] += (x.T @ x).double()
        self.rows[index] += x.shape[0]


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, group: int, damp: float, block: int,
                  pad: bool = False, where: str = "weight", clip: Sequence[float] = (1.0,),
                  act_order: bool = False, refit: int = 0) -> QTensor:
    """GPTQ of ``w`` (B, N, K) against Hessians ``h`` (B, K, K); a matrix whose Hessian is all
    zero (an expert no calibration token reached) gets the identity, i.e. plain rounding.

    ``act_order`` rounds the columns in order of decreasing Hessian diagonal (the inputs with
    the most energy first, while the most columns remain to absorb their error). Each 4-bit
    group's grid is then fixed up front from the unrounded weights ("static groups"), so the
    stored layout, one grid per run of ``group`` consecutive columns, is the same either way.

    ``refit`` (4 bits): rounds of fitting every group's scale and offset to the codes just
    rounded (``refit_grid``); each round after the first rounds the weights again, on the
    grids of the round before. A row keeps whichever of its candidates has the least output
    error on the calibration inputs, so a round never makes a row worse."""
    qt = _gptq(w, h, bits, group, damp, block, pad, where, clip, act_order)
    if bits != 4 or not refit:
        return qt
    err = _row_error(w, h, qt)
    for i in range(refit):
        if i:
            qt, err = _better_rows(w, h, qt, err, _gptq(w, h, bits, group, damp, block, pad, where, clip,
                                                        act_order, grid=(qt.scales, qt.zeros)))
        qt, err = _better_rows(w, h, qt, err, refit_grid(w, h, qt, damp))
    return qt


def _rows(qt: QTensor, b: int, rows: slice) -> QTensor:
    """Rows ``rows`` of matrix ``b`` of a stacked 4-bit ``qt``."""
    return QTensor(4, qt.group, qt.qweight[b, rows], qt.scales[b, rows], qt.zeros[b, rows], qt.in_features)


def refit_grid(w: torch.Tensor, h: torch.Tensor, qt: QTensor, damp: float) -> QTensor:
    """``qt`` (4 bits, (B, N, ...)) with every row's scales and offsets refit to its codes: the
    least-squares solution of ``min (W - Q) H (W - Q)^T`` over a row's 2 x n_groups grid values,
    codes held fixed (H damped as GPTQ damps it). GPTQ's grids are chosen before the codes,
    from the unrounded weights; once the codes are known, a row's best grid is one linear solve.
    A tiny ridge towards the current grid keeps a group whose codes are all equal (its scale
    then undetermined) where it was. Scales and offsets are rounded to bf16, as stored."""
    B, N, K = w.shape
    G, g = qt.scales.shape[-1], qt.group
    kp = G * g
    H = torch.zeros(B, kp, kp, dtype=torch.float64)
    H[:, :K, :K] = h
    diag = H.diagonal(dim1=-2, dim2=-1)[..., :K]
    diag[diag <= 0] = 1.0
    diag += damp * diag.mean(-1, keepdim=True)
    W = F.pad(w.to(torch.float64), (0, kp - K))      # padding columns have no inputs: H is zero there
    HW = W @ H                                                                 # (B, N, Kp)
    Hzz = H.unflatten(-1, (G, g)).unflatten(-3, (G, g)).sum((-1, -3))           # (B, G, G)
    scales, zeros = torch.empty(B, N, G, dtype=torch.float64), torch.empty(B, N, G, dtype=torch.float64)
    rows = max(1, 2 ** 24 // (G * kp))                      # (rows, G, Kp) float64 products at a time
    for b in range(B):
        Hg = H[b].unflatten(0, (G, g))                                          # (G, g, Kp)
        for r0 in range(0, N, rows):
            r1 = min(r0 + rows, N)
            c = group_codes(_rows(qt, b, slice(r0, r1))).double() - 8.0        # (n, Kp)
            cg = c.unflatten(-1, (G, g))                                        # (n, G, g)
            A = torch.einsum("ngi,gij->ngj", cg, Hg).unflatten(-1, (G, g))      # (n, G, G, g): c_g H_gh
            M = torch.cat([torch.cat([torch.einsum("nghj,nhj->ngh", A, cg), A.sum(-1)], -1),
                           torch.cat([A.sum(-1).transpose(-1, -2), Hzz[b].expand(r1 - r0, G, G)], -1)], -2)
            hw = HW[b, r0:r1].unflatten(-1, (G, g))
            v = torch.cat([(cg * hw).sum(-1), hw.sum(-1)], -1)                 # (n, 2G)
            theta0 = torch.cat([qt.scales[b, r0:r1], qt.zeros[b, r0:r1]], -1).double()
            ridge = 1e-6 * M.diagonal(dim1=-2, dim2=-1).abs().mean(-1, keepdim=True).clamp_min(1e-30)
            M = M + torch.diag_embed(ridge.expand(-1, 2 * G))
            theta = torch.linalg.solve(M, (v + ridge * theta0)[..., None])[..., 0]
            scales[b, r0:r1], zeros[b, r0:r1] = theta[:, :G], theta[:, G:]
    return QTensor(4, g, qt.qweight, scales.to(SCALE_DTYPE), zeros.to(SCALE_DTYPE), K)


def _row_error(w: torch.Tensor, h: torch.Tensor, qt: QTensor, rows: int = 4096) -> torch.Tensor:
    """(B, N): each row's output error ``(W - Q) H (W - Q)^T`` on the calibration inputs, in
    chunks of ``rows`` rows (a vocabulary-sized embedding would otherwise take several float64
    copies of itself)."""
    B, N, _ = w.shape
    out = torch.empty(B, N, dtype=torch.float64)
    for b in range(B):
        hb = h[b].to(torch.float64)
        for r0 in range(0, N, rows):
            sl = slice(r0, r0 + rows)
            d = w[b, sl].to(torch.float64) - dequantize(_rows(qt, b, sl), torch.float64)
            out[b, sl] = ((d @ hb) * d).sum(-1)
    return out


def _better_rows(w: torch.Tensor, h: torch.Tensor, a: QTensor, err_a: torch.Tensor,
                 b: QTensor) -> tuple[QTensor, torch.Tensor]:
    """Row by row, whichever of two 4-bit quantizations of ``w`` has the smaller output error,
    and that error (``err_a``: the incumbent ``a``'s, carried from the round before)."""
    err_b = _row_error(w, h, b)
    take = err_b < err_a                                                        # (B, N)
    t = take[..., None]
    return (QTensor(4, a.group, torch.where(t, b.qweight, a.qweight), torch.where(t, b.scales, a.scales),
                    torch.where(t, b.zeros, a.zeros), a.in_features), torch.where(take, err_b, err_a))


def _gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group: int, damp: float, block: int, pad: bool,
          where: str, clip: Sequence[float], act_order: bool,
          grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> QTensor:
    """One GPTQ pass (see gptq_quantize); ``grid``: 4-bit scales and offsets to round on, fixed
    up front, instead of choosing them."""
    B, N, K = w.shape
    kp = K if bits == 8 else padded_dim(K, group, pad, where)
    W = pad_columns(w.to(torch.float64, copy=True), kp)   # (B, N, Kp); updated in place below, never the caller's
    H = torch.zeros(B, kp, kp, dtype=torch.float64)
    H[:, :K, :K] = h
    diag = H.diagonal(dim1=-2, dim2=-1)
    diag[diag <= 0] = 1.0  # inputs always zero (and padding): nothing to compensate against
    diag += damp * diag.mean(-1, keepdim=True)

    if bits == 8:
        scale = int8_scale(W).double()                                        # (B, N)
    else:
        scale = torch.zeros(B, N, kp // group, dtype=torch.float64)
        zero = torch.zeros_like(scale)
    order = torch.arange(kp).expand(B, kp)                                    # rounding order -> column
    if act_order:
        order = torch.sort(diag, dim=-1, descending=True, stable=True).indices
        W = W.gather(-1, order[:, None, :].expand(B, N, kp))
        H = H.gather(-1, order[:, None, :].expand(B, kp, kp)).gather(-2, order[:, :, None].expand(B, kp, kp))
        if bits == 4 and grid is None:  # static groups: every grid from the unrounded weights, in stored layout
            s, z = int4_grid(pad_columns(w.to(torch.float64), kp).unflatten(-1, (kp // group, group)), clip)
            scale, zero = s.double(), z.double()
    if bits == 4 and grid is not None:
        scale, zero = grid[0].double(), grid[1].double()
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # (B, Kp, Kp)

    codes = torch.zeros(B, N, kp, dtype=torch.float64)
    for i1 in range(0, kp, block):
        i2 = min(i1 + block, kp)
        W1, err1, U1 = W[..., i1:i2].clone(), torch.zeros(B, N, i2 - i1, dtype=torch.float64), U[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if bits == 8:
                q = int8_codes(W1[..., i, None], scale).double()[..., 0]
                deq = q * scale
            else:
                if act_order or grid is not None:  # the grid of the stored group this column belongs to
                    g = (order[:, col] // group)[:, None, None].expand(B, N, 1)
                    s, z = scale.gather(-1, g)[..., 0], zero.gather(-1, g)[..., 0]
                else:
                    if col % group == 0:  # the group's grid from the weights as updated so far
                        s, z = int4_grid(W1[..., i:i + group], clip)         # (B, N)
                        scale[..., col // group], zero[..., col // group] = s, z
                    s, z = scale[..., col // group], zero[..., col // group]
                q = int4_codes(W1[..., i], s, z).double()
                deq = (q - 8.0) * s + z
            codes[..., col] = q
            err = (W1[..., i] - deq) / U1[:, i, i][:, None]                   # (B, N)
            W1[..., i:] -= err[..., None] * U1[:, i, i:][:, None, :]
            err1[..., i] = err
        W[..., i2:] -= err1 @ U[:, i1:i2, i2:]
    if act_order:  # back to the stored column order
        codes = codes.scatter(-1, order[:, None, :].expand(B, N, kp), codes.clone())
    if bits == 8:
        return QTensor(8, 0, codes[..., :K].to(torch.int8), scale.to(SCALE_DTYPE), None, K)
    return QTensor(4, group, pack_codes(codes, K), scale.to(SCALE_DTYPE), zero.to(SCALE_DTYPE), K)


@contextlib.contextmanager
def _expert_capture(moe: MoE, sinks: dict[str, Hessian]) -> Iterator[None]:
    """Wrap ``moe``'s dispatch: each expert's Hessians from its own routed tokens."""
    original = moe._dispatch

    def capture(x_TD, expert_ids_TK, weights_TK, w1, w3, w2):
        for e in range(w1.shape[0]):
            tok = (expert_ids_TK == e).any(-1)
            if tok.any():
                x = x_TD[tok]                                                 # (n_e, D)
                sinks["w1"].add(x, e)
                sinks["w2"].add(F.silu(x @ w1[e]) * (x @ w3[e]), e)           # (n_e, H)
        return original(x_TD, expert_ids_TK, weights_TK, w1, w3, w2)

    moe._dispatch = capture
    try:
        yield
    finally:
        moe._dispatch = original


@torch.no_grad()
def collect_hessians(run: Callable[[], object], linears: dict[str, nn.Module],
                     moes: dict[str, MoE]) -> dict[str, Hessian]:
    """Call ``run`` (forward passes over the calibration windows) with every module in ``linears``
    (by path) and every routed expert of ``moes`` watched: Hessians of their inputs (``<path>.w1``
    for an expert's w1 and w3, which share their input, and ``<path>.w2``)."""
    sinks: dict[str, Hessian] = {}
    last: dict = {"x": None, "path": None}  # the input the previous hook saw, and whose sink it went to

    def watch(path: str, x: torch.Tensor) -> None:
        # wq, wk and wv (w1 and w3) are called on one tensor: they share one Hessian
        if x is last["x"] and path != last["path"] and (path not in sinks or sinks[path] is sinks[last["path"]]):
            sinks[path] = sinks[last["path"]]
            return
        if path not in sinks:
            sinks[path] = Hessian(x.shape[-1])
        sinks[path].add(x)
        last["x"], last["path"] = x, path

    handles = [mod.register_forward_pre_hook(lambda m, args, p=path: watch(p, args[0]))
               for path, mod in linears.items()]
    with contextlib.ExitStack() as stack:
        for path, moe in moes.items():
            E, D, H = moe.w1_EDH.shape
            own = {"w1": Hessian(D, E), "w2": Hessian(H, E)}
            sinks[f"{path}.w1"], sinks[f"{path}.w2"] = own["w1"], own["w2"]
            stack.enter_context(_expert_capture(moe, own))
        try:
            run()
        finally:
            for h in handles:
                h.remove()
            last["x"] = None
    for path, mod in linears.items():  # a module no calibration input reached: an all-zero Hessian
        sinks.setdefault(path, Hessian(mod.weight.shape[1]))
    return sinks
