"""Dropless expert dispatch: the readable reference loop, the sorted-segment paths for many
tokens (a Python loop over experts, or one grouped GEMM per projection), and a per-row path for
the few tokens of a decode step.

All take the router's padded output, ``expert_ids_TK`` (sentinel id ``E`` in unused slots) and
fp32 ``weights_TK``, and the experts' stacked SwiGLU weights::

    w1_EDH, w3_EDH   gate and up projections, (E, D, H)
    w2_EHD           down projection,         (E, H, D)

and return ``sum_k weights_TK[t, k] * expert_{ids[t, k]}(x_TD[t])`` for every token, with no
token dropped. Every path is differentiable through autograd and is tested against the
reference forward and backward.
"""

from __future__ import annotations

import functools

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


def _sort_by_expert(expert_ids_TK: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable order of the flattened (token, slot) pairs by expert (sentinel slots last), and
    the number of pairs per expert, (E,) on the device."""
    flat_ids = expert_ids_TK.reshape(-1)                                  # (T*K,)
    order = torch.argsort(flat_ids, stable=True)
    counts_E = torch.bincount(flat_ids, minlength=n_experts + 1)[:n_experts]
    return order, counts_E


def _combine(x_TD: torch.Tensor, token_idx_N: torch.Tensor, y_ND: torch.Tensor, w_N: torch.Tensor) -> torch.Tensor:
    """Weighted scatter-add of the pair outputs back onto their tokens, in fp32."""
    out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    out_TD = out_TD.index_add(0, token_idx_N, y_ND.float() * w_N[:, None])
    return out_TD.to(x_TD.dtype)


def moe_sorted_segments(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
                        w1_EDH: torch.Tensor, w3_EDH: torch.Tensor, w2_EHD: torch.Tensor) -> torch.Tensor:
    """Stable-sort (token, slot) pairs by expert, run each expert on its contiguous segment,
    scatter-add the weighted results back. One host synchronisation (the segment sizes)."""
    order, counts_E = _sort_by_expert(expert_ids_TK, w1_EDH.shape[0])
    counts = counts_E.tolist()                                            # the one host sync
    order = order[:sum(counts)]
    if not order.numel():  # every slot unused
        return torch.zeros_like(x_TD)
    token_idx = order // expert_ids_TK.shape[1]                           # (N,) token of each pair
    x_ND = x_TD.index_select(0, token_idx)
    # unbind once: indexing w[e] per expert would make autograd add E full-size zero tensors
    w1s, w3s, w2s = w1_EDH.unbind(0), w3_EDH.unbind(0), w2_EHD.unbind(0)
    outputs = []
    start = 0
    for e, n in enumerate(counts):
        if n:
            outputs.append(_swiglu(x_ND[start:start + n], w1s[e], w3s[e], w2s[e]))
            start += n
    return _combine(x_TD, token_idx, torch.cat(outputs), weights_TK.reshape(-1)[order])


def moe_few_tokens(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
                   w1_EDH: torch.Tensor, w3_EDH: torch.Tensor, w2_EHD: torch.Tensor) -> torch.Tensor:
    """Decode-sized batches: the (token, slot) pairs are grouped by expert on the host, and each
    chosen expert runs once on its rows. Nothing is sorted or gathered on the device; with a
    handful of tokens those steps cost more than the experts' matmuls. Host synchronisations:
    the ids (and, without autograd, the weights, which then scale in place)."""
    n_experts = w1_EDH.shape[0]
    ids = expert_ids_TK.tolist()                                          # the one host sync
    pairs: dict[int, list[tuple[int, int]]] = {}
    for t, row in enumerate(ids):
        for slot, e in enumerate(row):
            if e < n_experts:
                pairs.setdefault(e, []).append((t, slot))
    grad = torch.is_grad_enabled()
    scale = None if grad else weights_TK.tolist()
    out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    for e, routed in pairs.items():
        if len(routed) == 1 and not grad:  # the decode case: one row, a view, an in-place add
            t, slot = routed[0]
            y = _swiglu(x_TD[t:t + 1], w1_EDH[e], w3_EDH[e], w2_EHD[e])
            out_TD[t:t + 1].add_(y.float(), alpha=scale[t][slot])
            continue
        tok = torch.tensor([t for t, _ in routed], device=x_TD.device)
        slots = torch.tensor([s for _, s in routed], device=x_TD.device)
        y = _swiglu(x_TD.index_select(0, tok), w1_EDH[e], w3_EDH[e], w2_EHD[e]).float()
        y = y * weights_TK[tok, slots][:, None]
        out_TD = out_TD.index_add(0, tok, y) if grad else out_TD.index_add_(0, tok, y)
    return out_TD.to(x_TD.dtype)


def moe_bags(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
             w1_EDH: torch.Tensor, w3_EDH: torch.Tensor, w2_EHD: torch.Tensor) -> torch.Tensor:
    """Decode rows that read the chosen experts' weights where they lie, through embedding bags
    (`bag_experts`), with nothing gathered or copied; the pairs' outputs are then weighted and
    summed in fp32, as the other paths do. On SmolLM2's expert shapes (16 experts of 96 neurons,
    5 chosen, 30 layers' weights so that none stays in cache) the experts of one row took 365 us
    a layer this way (through ``F.embedding_bag``; `bag_sums` is faster), against 575 us for
    `moe_few_tokens`' products expert by expert and 550 us for the dense FFN of those shapes in
    slices. A pair reads its expert's weights for itself, so this suits one row, not a batch.
    One host synchronisation (the ids)."""
    T = x_TD.shape[0]
    pairs = [(t, k, e) for t, row in enumerate(expert_ids_TK.tolist())  # the one host sync
             for k, e in enumerate(row) if e < w1_EDH.shape[0]]
    if not pairs:
        return torch.zeros_like(x_TD)
    dev = x_TD.device
    tok, slot, exp = zip(*pairs)
    one = T == 1 and list(slot) == list(range(len(pairs)))  # one token, its experts in the first slots
    tok_P = None if one else torch.tensor(tok, device=dev)
    x_PD = x_TD.expand(len(pairs), x_TD.shape[1]) if T == 1 else x_TD.index_select(0, tok_P)
    y_PD = bag_experts(x_PD, torch.tensor(exp, device=dev), w1_EDH, w3_EDH, w2_EHD)
    if one:
        return (y_PD.float() * weights_TK[0, :len(pairs), None]).sum(0, keepdim=True).to(x_TD.dtype)
    return _combine(x_TD, tok_P, y_PD, weights_TK[tok, slot])


def bag_experts(x_PD: torch.Tensor, exp_P: torch.Tensor, w1_EDH: torch.Tensor, w3_EDH: torch.Tensor,
                w2_EHD: torch.Tensor) -> torch.Tensor:
    """(P, D): the SwiGLU of expert ``exp_P[p]`` on row ``x_PD[p]``, unweighted, as three
    embedding bags over the stacked weights: ``x @ w1_EDH[e]`` is the sum of the rows of
    ``w1_EDH[e]`` weighted by x's features, one bag of D rows per pair (the same for ``w3``), and
    the down product one bag over the expert's H rows of ``w2_EHD`` weighted by the activations."""
    E, D, H = w1_EDH.shape
    rows_PD = expert_rows(E, D, x_PD.device).index_select(0, exp_P)
    gate = bag_sums(w1_EDH.reshape(E * D, H), rows_PD, x_PD)
    up = bag_sums(w3_EDH.reshape(E * D, H), rows_PD, x_PD)
    return bag_sums(w2_EHD.reshape(E * H, D), expert_rows(E, H, x_PD.device).index_select(0, exp_P),
                    F.silu(gate) * up)


def bag_sums(table: torch.Tensor, rows_PR: torch.Tensor, weights_PR: torch.Tensor) -> torch.Tensor:
    """(P, N): row p is ``sum_r weights_PR[p, r] * table[rows_PR[p, r]]``. ``torch.embedding_bag``
    on flat indices with offsets: ``F.embedding_bag``'s two-dimensional form costs some 20 us more
    a call (67 against 48 us for one of SmolLM2's expert bags, five experts). Without autograd
    the table goes in detached: a table that requires grad takes embedding_bag's slower path,
    which prepares for a backward (0.8 ms of a 33 ms MoE decode step)."""
    P, R = rows_PR.shape
    if not torch.is_grad_enabled():
        table = table.detach()
    return torch.embedding_bag(table, rows_PR.reshape(-1), _bag_starts(P, R, rows_PR.device), False, 0, False,
                               weights_PR.reshape(-1))[0]


@functools.lru_cache(maxsize=64)  # one per bag count: decode uses a few, a batch through 'bags' any number
def _bag_starts(bags: int, rows: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: usable by autograd later, whoever asked first
        return torch.arange(0, bags * rows, rows, device=device)


@functools.cache
def expert_rows(n_experts: int, n_rows: int, device: torch.device) -> torch.Tensor:
    """(E, R): the flat row indices of each expert's R rows in a stacked (E * R, ...) weight.
    Cached: not to be written to."""
    with torch.inference_mode(False):
        return torch.arange(n_experts * n_rows, device=device).view(n_experts, n_rows)


def _grouped_mm_fn():
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def moe_grouped_mm(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
                   w1_EDH: torch.Tensor, w3_EDH: torch.Tensor, w2_EHD: torch.Tensor) -> torch.Tensor:
    """Sorted pairs as above, but each projection is one grouped GEMM over all experts
    (``grouped_mm`` with segment offsets): no Python loop over experts, forward or backward.
    One host synchronisation (the number of routed pairs)."""
    gmm = _grouped_mm_fn()
    order, counts_E = _sort_by_expert(expert_ids_TK, w1_EDH.shape[0])
    offsets_E = counts_E.cumsum(0).to(torch.int32)                        # segment ends
    order = order[:int(offsets_E[-1])]                                    # the one host sync
    token_idx = order // expert_ids_TK.shape[1]
    x_ND = x_TD.index_select(0, token_idx)                                # (N, D), grouped by expert
    h_NH = F.silu(gmm(x_ND, w1_EDH, offs=offsets_E)) * gmm(x_ND, w3_EDH, offs=offsets_E)
    y_ND = gmm(h_NH, w2_EHD, offs=offsets_E)
    return _combine(x_TD, token_idx, y_ND, weights_TK.reshape(-1)[order])


DISPATCH = {
    "reference": moe_reference,
    "segments": moe_sorted_segments,
    "grouped_mm": moe_grouped_mm,
    "few_tokens": moe_few_tokens,
    "bags": moe_bags,
}

# 'auto' runs up to this many tokens on the CPU through moe_bags (batch-1 decode). Timed on 2
# CPU cores with SmolLM2's expert shapes (16 experts of 96 neurons, k = 5, 30 layers' weights,
# cold caches), moe_few_tokens beats grouped_mm for one token and falls behind from two, and
# moe_bags beats moe_few_tokens for one token (bench/moefy_speed.py --dispatch compares the paths
# in the whole model).
FEW_TOKENS = 1


@functools.cache
def grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this PyTorch build has a grouped GEMM kernel for the device and dtype, forward
    and backward (probed once on a tiny problem)."""
    gmm = _grouped_mm_fn()
    if gmm is None:
        return False
    # the probe needs autograd even when the first call comes from inference under no_grad
    # (the answer is cached for the process), and must keep its own tensors even when the first
    # call comes from inside a checkpointed block (identity hooks shadow checkpointing's)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        return _probe_grouped_mm(gmm, device_type, dtype)


def _probe_grouped_mm(gmm, device_type: str, dtype: torch.dtype) -> bool:
    try:
        x = torch.randn(6, 16, device=device_type, dtype=dtype, requires_grad=True)
        w = torch.randn(3, 16, 16, device=device_type, dtype=dtype, requires_grad=True)
        offs = torch.tensor([2, 2, 6], dtype=torch.int32, device=device_type)
        gmm(x, w, offs=offs).backward(torch.ones(6, 16, device=device_type, dtype=dtype))
        return True
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def auto_dispatch(device_type: str, dtype: torch.dtype) -> str:
    """The fastest path measured for the device (bench/moe_layer.py): grouped GEMM where the
    build has a kernel for it, else the sorted-segment loop."""
    return "grouped_mm" if grouped_mm_works(device_type, dtype) else "segments"


def get_dispatch(name: str):
    """The dispatch function called ``name``; 'auto' resolves per call site's device and dtype
    (cached), so a model moved to another device picks that device's best path."""
    if name == "auto":
        def auto(x_TD, *args):
            if x_TD.shape[0] <= FEW_TOKENS and x_TD.device.type == "cpu":
                return moe_bags(x_TD, *args)
            return DISPATCH[auto_dispatch(x_TD.device.type, x_TD.dtype)](x_TD, *args)

        return auto
    try:
        return DISPATCH[name]
    except KeyError:
        raise ValueError(f"unknown dispatch '{name}' (known: auto, {', '.join(DISPATCH)})") from None
