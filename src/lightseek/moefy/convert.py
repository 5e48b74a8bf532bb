"""Dense to MoE: cut each FFN into experts, fit a router per layer, calibrate its threshold.

The conversion walks the model one block at a time over calibration windows (as GPTQ does):
the hidden states that reach block ``i`` have already passed through the converted blocks
``0..i-1``, so each router is fitted on the inputs it will see at run time, and the error each
layer adds is visible to the next. Per MoE layer:

1. **Experts**: the FFN's neurons (optionally minus an always-on shared expert) are split into
   equal groups (`lightseek.moefy.split`); each expert's weights are slices of the original
   ``W1``, ``W3`` and ``W2``, stored in the stacked ``(E, D, H)`` layout, and experts combine
   with weight 1 (``expert_weights: unit``): with every expert on, the layer is the dense FFN.
2. **Router**: a linear gate trained so that ``softmax(gate(x))`` matches each expert's share of
   the token's output norm ``||y_e(x)|| / sum_e ||y_e(x)||`` (cross-entropy against those shares;
   started from a ridge fit of the log norms). Only the router trains: seconds per layer.
3. **Threshold** (dynamic routing): a token takes the fewest experts whose predicted share
   reaches the layer's threshold; the threshold is set by bisection so that the layer's average
   experts per token on the calibration text is ``target_k``.

Each layer's report (on a tenth of the calibration tokens held out from the router fit): router
recall (share of the token's true top-k experts, k the token's own, that the router picked),
the layer's relative output error against the dense FFN, realised k and MaxVio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.errors import ConfigError
from lightseek.model.config import ModelConfig
from lightseek.model.moe import MoE, SwiGLU, routing_stats
from lightseek.model.transformer import Block, Transformer
from lightseek.moefy.config import MoefyConfig
from lightseek.moefy.split import neuron_contributions, shared_neurons, split_neurons

HOLDOUT = 0.1  # share of calibration tokens kept out of the router fit, for the layer report


def check_dense(model: Transformer, command: str = "moefy") -> int:
    """The FFN width of a plain dense floating-point model; a clear error, naming ``command``,
    for anything else."""
    if model.cfg.is_moe:
        raise ConfigError(f"{command} takes dense checkpoints; this one is already a MoE (it has MoE layers)")
    if any(type(p) is not nn.Parameter for p in model.parameters()) or any(
            type(b.ffn) is not SwiGLU for b in model.layers):
        raise ConfigError(f"{command} needs a plain full-precision dense model (no adapters, not quantized)")
    return model.cfg.dense_inter_dim


def moe_config(dense: ModelConfig, cfg: MoefyConfig) -> ModelConfig:
    """The converted model's config: the dense one with MoE FFNs cut from its FFN width."""
    top_k, min_k, max_k = cfg.resolved_k()
    width = dense.dense_inter_dim
    routed = width - cfg.shared_dim
    if routed <= 0 or routed % cfg.experts:
        raise ConfigError(f"moefy: the FFN has {width} neurons; {width} - shared_dim ({cfg.shared_dim}) = {routed} "
                          f"must be a positive multiple of experts ({cfg.experts})")
    if cfg.dense_layers >= dense.n_layers:
        raise ConfigError(f"moefy.dense_layers ({cfg.dense_layers}) leaves no layer of {dense.n_layers} to convert")
    target_k = cfg.target_k if cfg.router == "dynamic" else float(top_k)
    return dense.replace(
        router_mode=cfg.router, n_dense_layers=cfg.dense_layers, n_experts=cfg.experts,
        n_shared_experts=1 if cfg.shared_dim else 0, shared_inter_dim=cfg.shared_dim,
        moe_inter_dim=routed // cfg.experts, shared_gate=False, score_fn="softmax", expert_weights="unit",
        norm_topk_prob=False, routed_scaling=1.0, balance_bias=False, router_groups=1, router_topk_groups=1,
        aux_loss_coef=0.0, z_loss_coef=0.0, top_k=top_k, target_k=target_k,
        min_k=min(min_k, top_k) if cfg.router == "topk" else min_k,
        max_k=max(max_k, top_k), threshold_init=1.0)


@torch.no_grad()
def layerwise(model: Transformer, windows: list[torch.Tensor]) -> Iterator[tuple[int, Block, torch.Tensor]]:
    """Walk ``model`` block by block over calibration ``windows`` (batches of (b, T) token ids).

    Yields ``(index, block, ffn_inputs_ND)`` once per block, where the inputs are the normed
    hidden states that reach the block's FFN; when the caller resumes, the block's FFN (which the
    caller may have replaced) carries the hidden states on to the next block."""
    cfg = model.cfg
    hs = [model.embed(w) * cfg.embed_scale for w in windows]
    T = windows[0].shape[1]
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    for i, block in enumerate(model.layers):
        xs = [h + block.attn(block.attn_norm(h), cos, sin, None, 0) * block.residual_scale for h in hs]
        us = [block.ffn_norm(x) for x in xs]
        yield i, block, torch.cat([u.reshape(-1, cfg.dim) for u in us])
        hs = [x + block.ffn(u) * block.residual_scale for x, u in zip(xs, us)]


def moefy_model(dense: Transformer, windows: list[torch.Tensor], cfg: MoefyConfig,
                on_layer: Callable[[dict], None] | None = None) -> tuple[Transformer, list[dict]]:
    """A MoE copy of ``dense`` (which is left unchanged) and one report per converted layer."""
    check_dense(dense)
    moe_cfg = moe_config(dense.cfg, cfg)
    model = Transformer(moe_cfg).to(next(dense.parameters()).device)
    missing, unexpected = model.load_state_dict(dense.state_dict(), strict=False)
    if any(not k.startswith("layers.") or ".ffn." not in k for k in [*missing, *unexpected]):
        raise ConfigError(f"moefy: the dense and MoE models differ outside the FFNs ({missing + unexpected})")
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    reports = []
    for i, block, u_ND in layerwise(model, windows):
        if isinstance(block.ffn, MoE):
            report = convert_layer(block.ffn, dense.layers[i].ffn, u_ND, cfg, gen)
            report["layer"] = i
            reports.append(report)
            if on_layer is not None:
                on_layer(report)
    return model, reports


@torch.no_grad()
def convert_layer(moe: MoE, ffn: SwiGLU, u_ND: torch.Tensor, cfg: MoefyConfig, gen: torch.Generator) -> dict:
    """Fill ``moe`` with experts cut from ``ffn``, fit its router on ``u_ND``, report."""
    N = u_ND.shape[0]
    perm = torch.randperm(N, generator=gen)
    n_hold = max(1, int(N * HOLDOUT))
    fit_idx, hold_idx = perm[n_hold:], perm[:n_hold]
    sample = u_ND[fit_idx[: cfg.cluster_tokens]]
    contrib_NI = neuron_contributions(ffn, sample)
    shared = shared_neurons(contrib_NI, cfg.shared_dim)
    is_shared = torch.zeros(ffn.w1.weight.shape[0], dtype=torch.bool)
    is_shared[shared] = True
    routed = torch.nonzero(~is_shared).squeeze(1)
    groups_EH = split_neurons(cfg.split, cfg.experts, routed, ffn=ffn, contrib_NI=contrib_NI,
                              iters=cfg.cluster_iters, generator=gen)
    _copy_experts(moe, ffn, groups_EH, shared)

    norms_NE = expert_output_norms(ffn, groups_EH, u_ND)
    fit_router(moe.router, u_ND[fit_idx], norms_NE[fit_idx], cfg.router_steps, cfg.router_lr)
    if moe.cfg.router_mode == "dynamic":
        set_threshold(moe, u_ND[fit_idx])
    return layer_report(moe, ffn, u_ND[hold_idx], norms_NE[hold_idx], groups_EH)


def _copy_experts(moe: MoE, ffn: SwiGLU, groups_EH: torch.Tensor, shared: torch.Tensor) -> None:
    w1, w3, w2 = ffn.w1.weight, ffn.w3.weight, ffn.w2.weight        # (I, D), (I, D), (D, I)
    moe.w1_EDH.copy_(w1[groups_EH].transpose(1, 2))
    moe.w3_EDH.copy_(w3[groups_EH].transpose(1, 2))
    moe.w2_EHD.copy_(w2.T[groups_EH])
    if moe.shared is not None:
        moe.shared.w1.weight.copy_(w1[shared])
        moe.shared.w3.weight.copy_(w3[shared])
        moe.shared.w2.weight.copy_(w2[:, shared])


@torch.no_grad()
def expert_output_norms(ffn: SwiGLU, groups_EH: torch.Tensor, u_ND: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``||y_e(x)||`` for every token and routed expert: (N, E)."""
    out = []
    w2_EHD = ffn.w2.weight.T[groups_EH]
    for u in u_ND.split(chunk):
        h_NI = F.silu(ffn.w1(u)) * ffn.w3(u)
        y_ENd = torch.bmm(h_NI[:, groups_EH].transpose(0, 1), w2_EHD)      # (E, n, D)
        out.append(y_ENd.norm(dim=-1).T)
    return torch.cat(out)


def fit_router(router: nn.Module, u_ND: torch.Tensor, norms_NE: torch.Tensor, steps: int, lr: float) -> None:
    """Fit ``router.weight`` so that softmax(gate(x)) predicts each expert's share of the output:
    a ridge fit of the (per-token centred) log norms, then Adam on the cross-entropy."""
    u = u_ND.float()
    log_n = norms_NE.clamp_min(1e-8).log()
    target_log = log_n - log_n.mean(1, keepdim=True)
    D = u.shape[1]
    gram = u.T @ u
    ridge = 1e-3 * gram.diagonal().mean() * torch.eye(D)
    w_DE = torch.linalg.solve(gram + ridge, u.T @ target_log)
    shares_NE = norms_NE / norms_NE.sum(1, keepdim=True).clamp_min(1e-12)
    weight = w_DE.T.contiguous().requires_grad_(True)
    if steps:
        opt = torch.optim.Adam([weight], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = -(shares_NE * F.log_softmax(u @ weight.T, dim=-1)).sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        router.weight.copy_(weight.detach())


def set_threshold(moe: MoE, u_ND: torch.Tensor) -> float:
    """Set ``moe``'s dynamic threshold so that its average k on inputs ``u_ND`` is its target_k."""
    cfg = moe.cfg
    probs = F.linear(u_ND, moe.router.weight).softmax(-1)
    t = calibrate_threshold(probs, cfg.target_k, cfg.min_k, cfg.max_k)
    moe.router.threshold.fill_(t)
    return t


def calibrate_threshold(probs_NE: torch.Tensor, target_k: float, min_k: int, max_k: int, iters: int = 40) -> float:
    """The smallest routing-mass threshold at which the average number of experts per token
    (fewest experts, in order of predicted share, whose shares reach it) is ``target_k``."""
    mass_NE = probs_NE.sort(dim=-1, descending=True).values.cumsum(-1)

    def mean_k(t: float) -> float:
        return float(((mass_NE < t).sum(-1) + 1).clamp(min_k, max_k).float().mean())

    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if mean_k(mid) < target_k:
            lo = mid
        else:
            hi = mid
    return hi


@torch.no_grad()
def layer_report(moe: MoE, ffn: SwiGLU, u_ND: torch.Tensor, norms_NE: torch.Tensor, groups_EH: torch.Tensor) -> dict:
    """Router recall, output error against the dense FFN, realised k and MaxVio on ``u_ND``."""
    router = moe.router
    router.reset_stats()
    y_moe = moe(u_ND[None])[0]
    stats = routing_stats(router.load_E, router.stat_sums)
    ids_NK = router(u_ND[None]).expert_ids_TK  # the same selection (routing is deterministic)
    router.reset_stats()
    y_dense = ffn(u_ND)
    E = moe.cfg.n_experts
    chosen_NE = torch.zeros(u_ND.shape[0], E + 1, dtype=torch.bool).scatter_(1, ids_NK, True)[:, :E]
    k_N = chosen_NE.sum(1)
    rank_NE = norms_NE.argsort(dim=1, descending=True).argsort(dim=1)   # 0 = the largest output
    true_top_NE = rank_NE < k_N[:, None]
    recall = float(((chosen_NE & true_top_NE).sum(1).float() / k_N.clamp_min(1)).mean())
    oracle_mass = float((norms_NE * true_top_NE).sum(1).div(norms_NE.sum(1)).mean())
    return {
        "router_recall": recall,
        "rel_error": float((y_moe - y_dense).norm() / y_dense.norm().clamp_min(1e-12)),
        "avg_k": stats["avg_k"],
        "max_vio": stats["max_vio"],
        "threshold": float(router.threshold) if moe.cfg.router_mode == "dynamic" else None,
        "oracle_mass": oracle_mass,
        "expert_width": int(groups_EH.shape[1]),
    }


def set_routing(model: Transformer, **changes) -> ModelConfig:
    """Change how a MoE model routes (``router_mode``, ``top_k``, ``target_k``, ...) in place; the
    new config is checked and shared by the model, its MoE layers and their routers."""
    new = model.cfg.replace(**changes)
    model.cfg = new
    for moe in model.moe_layers():
        moe.cfg = moe.router.cfg = new
    return new


@torch.no_grad()
def retarget(model: Transformer, windows: list[torch.Tensor], target_k: float) -> list[float]:
    """Dynamic routing at a new average ``target_k``: each layer's threshold recalibrated on
    ``windows``, layer by layer (each on inputs from the recalibrated layers below it). Returns
    the thresholds."""
    set_routing(model, router_mode="dynamic", target_k=target_k,
                min_k=min(model.cfg.min_k, int(target_k)), max_k=model.cfg.n_experts)
    return [set_threshold(block.ffn, u_ND) for _, block, u_ND in layerwise(model, windows)
            if isinstance(block.ffn, MoE)]
