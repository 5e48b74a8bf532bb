"""The MoE layer: router (dense / topk / dynamic), balancing, routing statistics, experts.

Every router mode returns the same thing: padded ``(T, k_max)`` expert ids with the sentinel id
``n_experts`` in unused slots, and fp32 weights (zero in unused slots). Dispatch never needs to
know which mode chose them.

Balancing is auxiliary-loss-free by default: a per-expert bias is added to the scores for
*selection only* (the weights still come from the unbiased scores), and after each optimizer step
it moves by a fixed step toward equal load. In ``dynamic`` mode each token takes the smallest
set of experts whose routing mass reaches a threshold, and a controller moves the threshold after
each step so that the average number of experts per token stays at ``target_k``. Both updates
are driven by statistics the layer accumulates during forward passes, so they are exact under
gradient accumulation and, after an all-reduce, under data parallelism.
"""

from __future__ import annotations

import array
import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.kernels.dispatch import get_dispatch
from lightseek.kernels.linear import Linear
from lightseek.model.config import ModelConfig
from lightseek.model.variants import ExpertWeights, LinearUpdate, Selection, apply_updates, token_rows

_state = threading.local()


def is_recomputing() -> bool:
    return getattr(_state, "recomputing", False)


class recomputing:  # used like a function: `with recomputing():`
    """Forward passes inside are gradient checkpointing's recomputation of one already counted:
    routers leave their statistics alone (the load, k and threshold updates see each token once)
    and layers keep the auxiliary loss of the first pass. Re-entrant and reusable: checkpointing
    may enter one instance more than once (a second backward over a retained graph)."""

    def __enter__(self) -> None:
        self._before = getattr(self, "_before", [])
        self._before.append(is_recomputing())
        _state.recomputing = True

    def __exit__(self, *exc) -> None:
        _state.recomputing = self._before.pop()


@dataclass
class RouterOutput:
    expert_ids_TK: torch.Tensor   # (T, K) int64, sentinel = n_experts in unused slots
    weights_TK: torch.Tensor      # (T, K) fp32, zero in unused slots
    aux_loss: torch.Tensor | None  # scalar: sequence-level balance loss + z-loss, if enabled


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_experts = cfg.n_experts
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.dim))
        # Selection-only bias and the dynamic threshold are state, saved with the model.
        self.register_buffer("bias_E", torch.zeros(cfg.n_experts))
        self.register_buffer("threshold", torch.tensor(float(cfg.threshold_init)))
        # Statistics accumulated since the last reset (not saved), read as `load_E` and
        # `stat_sums`: the batched forward adds to these tensors, tokens routed on the host
        # (`route_one`) to host lists, so that a decode step pays no tensor operation for them.
        # Only the thread that runs the model writes either; a reader (the server's metrics,
        # another thread) adds them up into new tensors and changes nothing.
        self.register_buffer("_load_E", torch.zeros(cfg.n_experts, dtype=torch.float64), persistent=False)
        self.register_buffer("_stat_sums", torch.zeros(3, dtype=torch.float64), persistent=False)  # tokens, k, entropy
        self._host_load = [0] * cfg.n_experts
        self._host_sums = [0, 0, 0.0]
        # Variants (model.variants; adapters install them): an optional per-variant update of
        # the gate logits, each variant's own routing state, and which variant each sequence uses.
        self.lora: LinearUpdate | None = None
        self.adapter_states = nn.ModuleDict()
        self.selection: Selection | None = None
        self.token_mask_T: torch.Tensor | None = None  # real tokens of this forward (padding is False)

    @property
    def load_E(self) -> torch.Tensor:
        """Tokens routed to each expert since the last reset, (E,) float64: a new tensor (change
        the statistics through `reset_stats` and `restore_stats`)."""
        host = self._host_load[:]  # one read of the list: the model's thread may be adding to it
        return self._load_E + torch.tensor(host, dtype=torch.float64, device=self._load_E.device)

    @property
    def stat_sums(self) -> torch.Tensor:
        """Since the last reset: tokens, the sum of their k, the sum of their routing entropies
        ((3,) float64, a new tensor, as `load_E`)."""
        host = self._host_sums[:]
        return self._stat_sums + torch.tensor(host, dtype=torch.float64, device=self._stat_sums.device)

    def reset_stats(self) -> None:
        self.restore_stats(None, None)

    def restore_stats(self, load_E: torch.Tensor | None, stat_sums: torch.Tensor | None) -> None:
        """Set the statistics to values read before (`load_E`, `stat_sums`), or to zero (None)."""
        self._host_load, self._host_sums = [0] * self.n_experts, [0, 0, 0.0]
        for buf, value in ((self._load_E, load_E), (self._stat_sums, stat_sums)):
            buf.zero_() if value is None else buf.copy_(value)

    def forward(self, x_BTD: torch.Tensor) -> RouterOutput:
        B, T, _ = x_BTD.shape
        cfg = self.cfg
        groups = self.selection.groups if self.selection is not None else [(None, None)]
        if self.host_routes(x_BTD, B * T):
            return self._one_token(x_BTD)
        with torch.autocast(x_BTD.device.type, enabled=False):  # routing decisions in fp32, always
            x_TD = x_BTD.reshape(B * T, -1).float()
            logits_TE = F.linear(x_TD, self.weight.float())
            if self.lora is not None:
                logits_TE = apply_updates(logits_TE, x_TD, groups, self.lora, seq_len=T)
        bias_E, threshold = self._routing_state(groups, T)
        if cfg.score_fn == "softmax":
            scores_TE = logits_TE.softmax(dim=-1)
        else:
            scores_TE = logits_TE.sigmoid()
        # Selection order: for softmax the bias acts on logits (it scales an expert's odds, the
        # same at any number of experts); for sigmoid on scores, as in DeepSeek-V3.
        select_TE = (logits_TE if cfg.score_fn == "softmax" else scores_TE).detach()
        if cfg.balance_bias:
            select_TE = select_TE + bias_E
        if cfg.router_groups > 1:
            select_TE = self._limit_groups(select_TE)

        ramp_TK = None  # dynamic routing with a ramp: each chosen expert's factor (threshold_ramp)
        if cfg.router_mode == "topk":
            expert_ids_TK = select_TE.topk(cfg.top_k, dim=-1).indices
            keep_TK = torch.ones_like(expert_ids_TK, dtype=torch.bool)
        else:  # dynamic: smallest prefix (in selection order) whose routing mass reaches threshold
            expert_ids_TK = select_TE.topk(cfg.max_k, dim=-1).indices
            probs_TE = scores_TE.detach()
            if cfg.score_fn == "sigmoid":
                probs_TE = probs_TE / probs_TE.sum(-1, keepdim=True)
            chosen_probs_TK = probs_TE.gather(1, expert_ids_TK)
            mass_TK = chosen_probs_TK.cumsum(-1)
            k_T = ((mass_TK < threshold).sum(-1) + 1).clamp(cfg.min_k, cfg.max_k)
            keep_TK = torch.arange(cfg.max_k, device=x_BTD.device) < k_T[:, None]
            if cfg.threshold_ramp > 0:  # an expert fades out as the mass before it nears the threshold
                ramp_TK = ((threshold - (mass_TK - chosen_probs_TK)) / cfg.threshold_ramp).clamp(0.0, 1.0)
                ramp_TK[:, :cfg.min_k] = 1.0

        if cfg.expert_weights == "unit" and not torch.is_grad_enabled():  # inference: no scores needed
            weights_TK = keep_TK.float()
        elif cfg.expert_weights == "unit":  # experts are slices of one FFN: their plain sum is that FFN
            # value 1 for each chosen expert; the router still gets the gradient of its scores
            # (straight-through), so fine-tuning can train it
            chosen_TK = scores_TE.gather(1, expert_ids_TK)
            weights_TK = (1.0 + chosen_TK - chosen_TK.detach()) * keep_TK
        else:
            weights_TK = scores_TE.gather(1, expert_ids_TK) * keep_TK
            if ramp_TK is not None:  # before renormalising: a fading expert's share goes to the others smoothly
                weights_TK = weights_TK * ramp_TK
            if cfg.norm_topk_prob:
                weights_TK = weights_TK / weights_TK.sum(-1, keepdim=True).clamp_min(1e-20)
        if ramp_TK is not None and cfg.expert_weights == "unit":
            weights_TK = weights_TK * ramp_TK
        weights_TK = weights_TK * cfg.routed_scaling
        expert_ids_TK = expert_ids_TK.masked_fill(~keep_TK, self.n_experts)

        self._accumulate(scores_TE.detach(), expert_ids_TK)
        aux = self._aux_loss(logits_TE, scores_TE, expert_ids_TK, B, T) if self.training else None
        return RouterOutput(expert_ids_TK, weights_TK, aux)

    def host_routes(self, x: torch.Tensor, tokens: int) -> bool:
        """Whether `route_one` decides for this input: one token on the CPU at inference, one
        routing state, no gate adapter, no group limit."""
        return (tokens == 1 and x.device.type == "cpu" and self.lora is None and self.cfg.router_groups == 1
                and not self.training and not torch.is_grad_enabled()
                and (self.selection is None or len(self.selection.groups) == 1))

    def route_one(self, x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """One token's routing (x: D features, any shape), decided on the host: the chosen experts
        (k,) in selection order and their weights. Only the gate's product and its scores are
        tensor operations; the choice among the scores is made in Python, where `forward` runs
        some thirty small tensor operations, and the statistics add to host lists (read with the
        tensors' counts by `load_E` and `stat_sums`), so that a decode step pays no tensor
        operation for them. The same
        choices and weights as `forward`, except that the routing mass is summed in float64 here:
        a token whose mass lies within rounding of the threshold may take one expert more or
        fewer. See `host_routes`."""
        cfg, E = self.cfg, self.n_experts
        bias_E, threshold = self._state(self.selection.single if self.selection is not None else None)
        # scores and selection values in fp32 tensor arithmetic, as `forward` makes them (its
        # roundings decide ties); the choice among E values is then made on the host
        x1, w = x.reshape(1, -1).float(), self.weight.float()
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                logits_E = F.linear(x1, w)[0]
        else:
            logits_E = F.linear(x1, w)[0]
        scores_E = logits_E.softmax(-1) if cfg.score_fn == "softmax" else logits_E.sigmoid()
        select_E = logits_E if cfg.score_fn == "softmax" else scores_E
        if cfg.balance_bias:
            select_E = select_E + bias_E
        scores, select = scores_E.tolist(), select_E.tolist()
        order = sorted(range(E), key=select.__getitem__, reverse=True)
        share = sum(scores)
        if cfg.router_mode == "topk":
            chosen = order[:cfg.top_k]
        else:  # the smallest prefix whose share of the routing mass reaches the threshold
            limit, mass, k = float(threshold), 0.0, 1
            before = [0.0]  # the routing mass before each expert in order
            for e in order[:cfg.max_k - 1]:
                mass += scores[e] / share
                if mass >= limit:
                    break
                before.append(mass)
                k += 1
            chosen = order[:max(k, cfg.min_k)]
        fade = [1.0] * len(chosen)  # the ramp's factor of each chosen expert (min_k's are whole)
        if cfg.router_mode == "dynamic" and cfg.threshold_ramp > 0:
            fade = [1.0 if j < cfg.min_k or j >= len(before) else min(1.0, (limit - before[j]) / cfg.threshold_ramp)
                    for j in range(len(chosen))]
        if cfg.expert_weights == "unit":
            weights = [cfg.routed_scaling * f for f in fade]
        else:
            weights = [scores[e] * f for e, f in zip(chosen, fade)]
            if cfg.norm_topk_prob:
                total = max(sum(weights), 1e-20)
                weights = [w / total for w in weights]
            weights = [w * cfg.routed_scaling for w in weights]
        if self.token_mask_T is None or bool(self.token_mask_T.all()):
            load, sums = self._host_load, self._host_sums
            for e in chosen:
                load[e] += 1
            sums[0] += 1
            sums[1] += len(chosen)
            # entropy of v / share: sum(v log v) / share - log(share), as the v / share sum to one
            log = math.log
            sums[2] -= sum([v * log(v) for v in scores if v > 0]) / share - log(share)
        return torch.frombuffer(array.array("q", chosen), dtype=torch.int64), weights  # 5 us less than torch.tensor

    def _one_token(self, x_BTD: torch.Tensor) -> RouterOutput:
        """`forward`'s output for one token decided by `route_one`, padded to the mode's width."""
        ids, weights = self.route_one(x_BTD)
        pad = (self.cfg.top_k if self.cfg.router_mode == "topk" else self.cfg.max_k) - len(weights)
        return RouterOutput(F.pad(ids, (0, pad), value=self.n_experts)[None],
                            torch.tensor([weights + [0.0] * pad], dtype=torch.float32), None)

    def _limit_groups(self, select_TE: torch.Tensor) -> torch.Tensor:
        """Group-limited routing (DeepSeek-V3): only the router_topk_groups groups whose two best
        experts score highest stay selectable; the others' scores drop to 0."""
        cfg = self.cfg
        T, E = select_TE.shape
        grouped_TGe = select_TE.view(T, cfg.router_groups, E // cfg.router_groups)
        group_scores_TG = grouped_TGe.topk(min(2, E // cfg.router_groups), dim=-1).values.sum(-1)
        keep_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool).scatter_(
            1, group_scores_TG.topk(cfg.router_topk_groups, dim=-1).indices, True)
        return grouped_TGe.masked_fill(~keep_TG[..., None], 0.0).view(T, E)

    def _state(self, name: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(selection bias, threshold) of adapter ``name``, or the base model's (None)."""
        if name is not None and name in self.adapter_states:
            st = self.adapter_states[name]
            return st.bias_E, st.threshold
        return self.bias_E, self.threshold

    def _routing_state(self, groups, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias (E,) and threshold () for one group, or per token (T, E) and (T, 1) for a batch
        whose sequences use different adapters."""
        if len(groups) == 1:
            return self._state(groups[0][0])
        n_tokens = sum(len(rows) for _, rows in groups) * T
        bias_TE = self.bias_E.new_zeros(n_tokens, self.n_experts)
        threshold_T1 = self.threshold.new_zeros(n_tokens, 1)
        for name, rows in groups:
            bias, threshold = self._state(name)
            tok = token_rows(rows, T)
            bias_TE[tok] = bias
            threshold_T1[tok] = threshold
        return bias_TE, threshold_T1

    @torch.no_grad()
    def _accumulate(self, scores_TE: torch.Tensor, expert_ids_TK: torch.Tensor) -> None:
        if is_recomputing():
            return
        if self.token_mask_T is not None:  # padding does not count toward load, k or entropy
            scores_TE, expert_ids_TK = scores_TE[self.token_mask_T], expert_ids_TK[self.token_mask_T]
        counts = torch.bincount(expert_ids_TK.reshape(-1), minlength=self.n_experts + 1)
        self._load_E += counts[: self.n_experts]
        probs_TE = scores_TE / scores_TE.sum(-1, keepdim=True)
        entropy = -(probs_TE * probs_TE.clamp_min(1e-20).log()).sum()
        n_tokens = expert_ids_TK.shape[0]
        self._stat_sums += torch.stack([
            torch.tensor(float(n_tokens), dtype=torch.float64, device=counts.device),
            counts[: self.n_experts].sum().double(),
            entropy.double(),
        ])

    def _aux_loss(self, logits_TE, scores_TE, expert_ids_TK, B: int, T: int) -> torch.Tensor | None:
        cfg = self.cfg
        loss = None
        if cfg.aux_loss_coef > 0:
            # Sequence-level balance loss: sum_e f_e * P_e per sequence, f_e the (scaled) share of
            # the sequence's routing slots on e, P_e its mean normalised score.
            onehot = F.one_hot(expert_ids_TK, self.n_experts + 1)[..., : self.n_experts]
            counts_BE = onehot.sum(1).reshape(B, T, -1).sum(1).float()
            slots_B = counts_BE.sum(-1, keepdim=True).clamp_min(1)
            f_BE = counts_BE * self.n_experts / slots_B
            probs_BTE = (scores_TE / scores_TE.sum(-1, keepdim=True)).reshape(B, T, -1)
            loss = cfg.aux_loss_coef * (f_BE * probs_BTE.mean(1)).sum(-1).mean()
        if cfg.z_loss_coef > 0:
            z = cfg.z_loss_coef * torch.logsumexp(logits_TE, dim=-1).square().mean()
            loss = z if loss is None else loss + z
        return loss

    @torch.no_grad()
    def update(self, load_E: torch.Tensor, mean_k: float, step_scale: float = 1.0) -> None:
        """Balance bias toward equal load; dynamic threshold toward target_k, each by its step
        times ``step_scale``. Once per step.
        While one adapter runs the whole batch (adapter training), its own routing state moves."""
        cfg = self.cfg
        bias_E, threshold = self._state(self.selection.single if self.selection is not None else None)
        if cfg.balance_bias:
            # Proportional step toward equal load: overloaded experts lose selection bias in
            # proportion to their relative excess, so the bias settles instead of dithering.
            error_E = 1.0 - load_E / load_E.mean().clamp_min(1e-9)
            bias_E += cfg.bias_update_rate * step_scale * error_E.clamp(-1.0, 1.0).to(bias_E)
        if cfg.router_mode == "dynamic":
            new = threshold + cfg.threshold_lr * step_scale * (cfg.target_k - mean_k)
            threshold.copy_(new.clamp(1e-3, 1.0))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = Linear(dim, inter_dim, bias=False)
        self.w3 = Linear(dim, inter_dim, bias=False)
        self.w2 = Linear(inter_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    """Shared experts (always on) plus fine-grained routed experts with stacked weights."""

    def __init__(self, cfg: ModelConfig, dispatch: str = "auto"):
        super().__init__()
        self.cfg = cfg
        E, D, H = cfg.n_experts, cfg.dim, cfg.moe_inter_dim
        self.router = Router(cfg)
        self.w1_EDH = nn.Parameter(torch.empty(E, D, H))
        self.w3_EDH = nn.Parameter(torch.empty(E, D, H))
        self.w2_EHD = nn.Parameter(torch.empty(E, H, D))
        self.shared = SwiGLU(D, cfg.shared_dim) if cfg.n_shared_experts else None
        # Qwen2-MoE scales the shared output by a per-token sigmoid gate
        self.shared_gate = nn.Linear(D, 1, bias=False) if cfg.shared_gate and self.shared is not None else None
        self.set_dispatch(dispatch)
        self.aux_loss: torch.Tensor | None = None
        # Variants (model.variants): the routed experts' weights per variant (adapters install
        # per-expert updates here), and which variant each sequence uses.
        self.lora: ExpertWeights | None = None
        self.lora_selection: Selection | None = None

    def set_dispatch(self, name: str) -> None:
        self.dispatch_name = name
        self._dispatch = get_dispatch(name)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        route = self.router(x_BTD)
        if not is_recomputing():  # the first pass's loss is the one in the graph
            self.aux_loss = route.aux_loss
        x_TD = x_BTD.reshape(B * T, D)
        if torch.is_autocast_enabled(x_TD.device.type):  # grouped_mm has no autocast rule: cast here
            x_TD = x_TD.to(torch.get_autocast_dtype(x_TD.device.type))
        groups = self.lora_selection.groups if self.lora is not None else [(None, None)]
        if len(groups) == 1:
            y_TD = self._experts(x_TD, route.expert_ids_TK, route.weights_TK, groups[0][0])
        else:  # sequences with different adapters: each group through its own expert weights
            y_TD = torch.empty_like(x_TD)
            for name, rows in groups:
                tok = token_rows(rows, T)
                y_TD = y_TD.index_copy(0, tok, self._experts(
                    x_TD.index_select(0, tok), route.expert_ids_TK[tok], route.weights_TK[tok], name))
        if self.shared is not None:  # (B, T, D): adapters on the shared experts select by row
            y_TD = y_TD + self.shared_output(x_TD.reshape(B, T, D)).reshape(B * T, D)
        return y_TD.reshape(B, T, D).to(x_BTD.dtype)

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """The shared experts' output on ``x``, scaled by the sigmoid gate where there is one."""
        shared = self.shared(x)
        return shared if self.shared_gate is None else torch.sigmoid(self.shared_gate(x)) * shared

    def _experts(self, x_TD, expert_ids_TK, weights_TK, adapter: str | None) -> torch.Tensor:
        stacked = (self.w1_EDH, self.w3_EDH, self.w2_EHD) if self.lora is None else self.lora.weights(self, adapter)
        w1, w3, w2 = (w.to(x_TD.dtype) for w in stacked)
        return self._dispatch(x_TD, expert_ids_TK, weights_TK, w1, w3, w2)


def routing_stats(load_E: torch.Tensor, stat_sums: torch.Tensor) -> dict:
    """Tokens per expert, average k, MaxVio, dead experts and router entropy from raw sums."""
    load = load_E.double().cpu()
    n_tokens, k_sum, entropy_sum = (float(v) for v in stat_sums.cpu())
    mean_load = load.mean().item()
    return {
        "tokens": int(n_tokens),
        "tokens_per_expert": [int(v) for v in load.tolist()],
        "avg_k": k_sum / n_tokens if n_tokens else 0.0,
        "max_vio": (load.max().item() - mean_load) / mean_load if mean_load > 0 else 0.0,
        "dead_experts": int((load == 0).sum().item()) if n_tokens else 0,
        "entropy": entropy_sum / n_tokens if n_tokens else 0.0,
    }
