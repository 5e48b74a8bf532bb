"""Dropless expert dispatch: the readable reference loop and the fast sorted-segment path.

Both take the router's padded output, ``expert_ids_TK`` (sentinel id ``E`` in unused slots) and
fp32 ``weights_TK``, and the experts' stacked SwiGLU weights::

    w1_EDH, w3_EDH   gate and up projections, (E, D, H)
    w2_EHD           down projection,         (E, H, D)

and return ``sum_k weights_TK[t, k] * expert_{ids[t, k]}(x_TD[t])`` for every token, with no
token dropped. The fast path is differentiable through autograd and is tested against the
reference forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _swiglu(x: torch.Tensor, w1_DH: torch.Tensor, w3_DH: torch.Tensor, w2_HD: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ w1_DH) * (x @ w3_DH)) @ w2_HD


def moe_reference(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
                  w1_EDH: torch.Tensor, w3_EDH: torch.Tensor, w2_EHD: torch.Tensor) -> torch.Tensor:
    """One expert at a time: gather its tokens with a mask, run it, add the weighted result."""
    n_experts = w1_EDH.shape[0]
    out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    for e in range(n_experts):
        token_idx, slot_idx = torch.nonzero(expert_ids_TK == e, as_tuple=True)
        if token_idx.numel() == 0:
            continue
        y = _swiglu(x_TD[token_idx], w1_EDH[e], w3_EDH[e], w2_EHD[e])
        out_TD = out_TD.index_add(0, token_idx, y.float() * weights_TK[token_idx, slot_idx, None])
    return out_TD.to(x_TD.dtype)


def moe_sorted_segments(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
                        w1_EDH: torch.Tensor, w3_EDH: torch.Tensor, w2_EHD: torch.Tensor) -> torch.Tensor:
    """Stable-sort (token, slot) pairs by expert, run each expert on its contiguous segment,
    scatter-add the weighted results back. One host synchronisation (the segment sizes)."""
    n_experts = w1_EDH.shape[0]
    k = expert_ids_TK.shape[1]
    flat_ids = expert_ids_TK.reshape(-1)                                  # (T*K,)
    order = torch.argsort(flat_ids, stable=True)                          # sentinel slots sort last
    counts = torch.bincount(flat_ids, minlength=n_experts + 1).tolist()   # the one host sync
    n_routed = len(flat_ids) - counts[n_experts]
    order = order[:n_routed]
    token_idx = order // k                                                # (N,) token of each pair
    x_ND = x_TD.index_select(0, token_idx)
    outputs = []
    start = 0
    for e in range(n_experts):
        n = counts[e]
        if n:
            outputs.append(_swiglu(x_ND[start:start + n], w1_EDH[e], w3_EDH[e], w2_EHD[e]))
            start += n
    out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    if outputs:
        y_ND = torch.cat(outputs).float() * weights_TK.reshape(-1)[order, None]
        out_TD = out_TD.index_add(0, token_idx, y_ND)
    return out_TD.to(x_TD.dtype)


DISPATCH = {
    "reference": moe_reference,
    "segments": moe_sorted_segments,
}


def get_dispatch(name: str):
    """The dispatch function called ``name`` ('auto' picks the best for the device)."""
    if name == "auto":
        name = "segments"
    try:
        return DISPATCH[name]
    except KeyError:
        raise ValueError(f"unknown dispatch '{name}' (known: auto, {', '.join(DISPATCH)})") from None
