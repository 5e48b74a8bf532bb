"""LoRA adapters for the lightseek transformer, routed experts included.

A low-rank update ``W + (alpha / r) * B A`` is attached to every targeted weight:

    attn     the attention projections wq, wk, wv, wo              (nn.Linear, unmerged path)
    shared   the shared experts' w1, w3, w2                        (nn.Linear, unmerged path)
    dense    the FFNs of dense layers                              (nn.Linear, unmerged path)
    experts  every routed expert's w1, w3, w2: per-expert factors   (E, in, r) and (E, r, out)
    router   the router's gate weight                              (unmerged path)
    embed    the token embedding (and the output head tied to it): ``E + s (B A)^T``, factors
             (r, V) and (D, r) as PEFT stores embedding adapters   (unmerged path)

On nn.Linear targets the update runs beside the frozen weight (``y = W x + s B A drop(x)``), so
no gradient of W is ever formed. Routed experts are stored stacked and run by a dispatch kernel
(`kernels.dispatch`), so their update is folded into the stacked weights for the forward pass:
``W_e + s A_e B_e``, a few small batched matmuls per layer, exact, and valid for every dispatch
path. (Input dropout, which needs a separate branch, applies to the nn.Linear targets only.)

Every adapter also owns a copy of each MoE layer's routing state (selection bias and dynamic
threshold): balancing keeps working while an adapter trains, without touching the base model's
state, and an adapter's routing is restored with it.

Several adapters can live on one model. Which one each sequence of a batch uses is set with
`use_adapters(model, ["med", None, "fin"])` (None = the base model): sequences with different
adapters share the batch, and each gets exactly the result it would get alone.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.config import field
from lightseek.errors import ConfigError
from lightseek.kernels.linear import Linear
from lightseek.model.moe import MoE, Router, SwiGLU
from lightseek.model.transformer import Transformer
from lightseek.model.variants import Selection, apply_updates

TARGETS = ("attn", "experts", "shared", "dense", "router", "embed")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class LoraConfig:
    rank: int = field(8, help="Rank r of every low-rank update.")
    alpha: float = field(16.0, help="Scale numerator: updates are multiplied by alpha / rank.")
    dropout: float = field(0.0, help="Dropout on the adapter's input (nn.Linear targets), training only.")
    targets: list[str] = field(default_factory=lambda: ["attn", "experts", "shared", "dense"], help=(
        f"What gets adapters: any of {', '.join(TARGETS)}."))
    expert_rank: int = field(0, help="Rank of the routed experts' updates (0 = same as rank).")
    embed_rank: int = field(0, help="Rank of the embedding's update (0 = same as rank).")

    def __post_init__(self) -> None:
        if self.rank <= 0 or self.expert_rank < 0 or self.embed_rank < 0:
            raise ConfigError(f"lora.rank must be positive and lora.expert_rank, lora.embed_rank >= 0, got "
                              f"{self.rank}, {self.expert_rank}, {self.embed_rank}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"lora.targets: unknown {unknown} (choose from {', '.join(TARGETS)})"
                              if unknown else "lora.targets must name at least one target")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def rank_for(self, target: str) -> int:
        special = {"experts": self.expert_rank, "embed": self.embed_rank}.get(target, 0)
        return special or self.rank


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"adapter name {name!r}: use 1-64 letters, digits, '-' or '_'")
    return name


# --- which adapter each sequence uses ------------------------------------------------------
def _selection(model: Transformer) -> Selection:
    sel = getattr(model, "lora_selection", None)
    if sel is None:
        sel = Selection()
        model.lora_selection = sel
    return sel


def adapter_names(model: Transformer) -> list[str]:
    return list(getattr(model, "lora_adapters", {}))


@contextlib.contextmanager
def use_adapters(model: Transformer, choice: str | None | Sequence[str | None]) -> Iterator[None]:
    """Run the enclosed forward passes with one adapter (a name), the base model (None), or one
    choice per sequence of the batch (a list). Restores the previous choice on exit."""
    sel = _selection(model)
    known = set(adapter_names(model))
    names = [choice] if choice is None or isinstance(choice, str) else list(choice)
    for n in names:
        if n is not None and n not in known:
            raise ConfigError(f"adapter {n!r} is not loaded (loaded: {', '.join(sorted(known)) or 'none'})")
    if choice is None or isinstance(choice, str):
        groups = [(choice, None)]
    else:
        device = next(model.parameters()).device
        order = list(dict.fromkeys(names))
        groups = [(n, torch.tensor([i for i, m in enumerate(names) if m == n], device=device)) for n in order]
        if len(groups) == 1:
            groups = [(groups[0][0], None)]
    previous = sel.groups, sel.rows
    sel.groups, sel.rows = groups, (None if choice is None or isinstance(choice, str) else len(names))
    try:
        yield
    finally:
        sel.groups, sel.rows = previous


# --- adapted modules ---------------------------------------------------------------------------
def _new_factors(n_in: int, n_out: int, r: int, stack: int | None, like: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
    """A with PEFT's default init (Kaiming-uniform, a=sqrt(5)), B zeros: the update starts at 0."""
    shape_a = (r, n_in) if stack is None else (stack, n_in, r)
    shape_b = (n_out, r) if stack is None else (stack, r, n_out)
    a = torch.empty(shape_a, device=like.device, dtype=torch.float32)
    bound = 1.0 / math.sqrt(n_in)  # kaiming_uniform_(a=sqrt(5)) on fan_in = n_in
    nn.init.uniform_(a, -bound, bound)
    b = torch.zeros(shape_b, device=like.device, dtype=torch.float32)
    return nn.Parameter(a), nn.Parameter(b)


class LoraLinear(nn.Module):
    """An nn.Linear with per-adapter low-rank updates beside it (unmerged)."""

    def __init__(self, base: nn.Linear, selection: Selection):
        super().__init__()
        self.base = base
        self.selection = selection
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scale: dict[str, float] = {}
        self.drop = nn.ModuleDict()

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects the wrapped layer
        return self.base.weight

    def add(self, name: str, cfg: LoraConfig) -> int:
        w = self.base.weight
        self.lora_A[name], self.lora_B[name] = _new_factors(w.shape[1], w.shape[0], cfg.rank, None, w)
        self.scale[name] = cfg.scale
        self.drop[name] = nn.Dropout(cfg.dropout)
        return self.lora_A[name].numel() + self.lora_B[name].numel()

    def has(self, name: str) -> bool:
        return name in self.lora_A

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.drop[name](x), self.lora_A[name]), self.lora_B[name]) * self.scale[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_updates(self.base(x), x, self.selection.groups, self)

    def merged_weight(self, name: str) -> torch.Tensor:
        w = self.base.weight
        delta = (self.lora_B[name].float() @ self.lora_A[name].float()) * self.scale[name]
        return (w.float() + delta).to(w.dtype)


class ExpertLora(nn.Module):
    """Per-expert low-rank factors for the stacked routed-expert weights of one MoE layer."""

    WEIGHTS = ("w1_EDH", "w3_EDH", "w2_EHD")

    def __init__(self) -> None:
        super().__init__()
        self.lora_A = nn.ModuleDict()  # name -> ParameterDict {w1, w3, w2}
        self.lora_B = nn.ModuleDict()
        self.scale: dict[str, float] = {}
        self._folded: dict[str, tuple[tuple, list[torch.Tensor]]] = {}  # inference cache

    def add(self, name: str, moe: MoE, cfg: LoraConfig) -> int:
        r = cfg.rank_for("experts")
        a, b = nn.ParameterDict(), nn.ParameterDict()
        for w in self.WEIGHTS:
            stacked = getattr(moe, w)
            E, n_in, n_out = stacked.shape
            a[w[:2]], b[w[:2]] = _new_factors(n_in, n_out, r, E, stacked)
        self.lora_A[name], self.lora_B[name] = a, b
        self.scale[name] = cfg.alpha / r
        return sum(p.numel() for p in (*a.values(), *b.values()))

    def has(self, name: str) -> bool:
        return name in self.lora_A

    def weights(self, moe: MoE, name: str | None) -> list[torch.Tensor]:
        """The stacked (w1, w3, w2) with adapter ``name``'s update folded in (None: the base)."""
        base = [getattr(moe, w) for w in self.WEIGHTS]
        if name is None or name not in self.lora_A:
            return base
        a, b, s = self.lora_A[name], self.lora_B[name], self.scale[name]
        if torch.is_grad_enabled():
            return [w + torch.bmm(a[k[:2]], b[k[:2]]).to(w.dtype) * s for w, k in zip(base, self.WEIGHTS)]
        # inference (decoding calls this every token): fold once, refold when any weight changes
        key = tuple((t.data_ptr(), t._version) for t in (*base, *a.values(), *b.values()))
        cached = self._folded.get(name)
        if cached is None or cached[0] != key:
            cached = (key, [w + torch.bmm(a[k[:2]], b[k[:2]]).to(w.dtype) * s for w, k in zip(base, self.WEIGHTS)])
            self._folded[name] = cached
        return cached[1]


class RouterLora(nn.Module):
    """Per-adapter low-rank update of a router's gate (E, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scale: dict[str, float] = {}

    def add(self, name: str, router: Router, cfg: LoraConfig) -> int:
        w = router.weight
        self.lora_A[name], self.lora_B[name] = _new_factors(w.shape[1], w.shape[0], cfg.rank, None, w)
        self.scale[name] = cfg.scale
        return self.lora_A[name].numel() + self.lora_B[name].numel()

    def has(self, name: str) -> bool:
        return name in self.lora_A

    def delta(self, name: str, x_TD: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x_TD, self.lora_A[name].float()), self.lora_B[name].float()) * self.scale[name]


class RoutingState(nn.Module):
    """An adapter's own copy of a router's balance bias and dynamic threshold."""

    def __init__(self, router: Router) -> None:
        super().__init__()
        self.register_buffer("bias_E", router.bias_E.detach().clone())
        self.register_buffer("threshold", router.threshold.detach().clone())


class LoraEmbedding(nn.Module):
    """An nn.Embedding with per-adapter low-rank updates; when the output head is tied to it,
    `LoraTiedHead` applies the same update there, so tying survives adaptation and merging."""

    def __init__(self, base: nn.Embedding, selection: Selection):
        super().__init__()
        self.base = base
        self.selection = selection
        self.lora_embedding_A = nn.ParameterDict()  # (r, V), zeros: the update starts at 0
        self.lora_embedding_B = nn.ParameterDict()  # (D, r)
        self.scale: dict[str, float] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def add(self, name: str, cfg: LoraConfig) -> int:
        V, D = self.base.weight.shape
        r = cfg.rank_for("embed")
        dev = self.base.weight.device
        self.lora_embedding_A[name] = nn.Parameter(torch.zeros(r, V, device=dev))
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(D, r, device=dev) / math.sqrt(r))
        self.scale[name] = cfg.alpha / r
        return (V + D) * r

    def has(self, name: str) -> bool:
        return name in self.lora_embedding_A

    def delta(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_embedding_A[name], self.lora_embedding_B[name]
        return F.embedding(idx, a.t()) @ b.t() * self.scale[name]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return apply_updates(self.base(idx), idx, self.selection.groups, self)

    def delta_weight(self, name: str) -> torch.Tensor:
        """The (V, D) update of adapter ``name``."""
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).t() * self.scale[name]


class LoraTiedHead(nn.Module):
    """The output head tied to a `LoraEmbedding`: logits use the adapted embedding too."""

    def __init__(self, base: nn.Linear, embedding: LoraEmbedding):
        super().__init__()
        self.base = base
        self.embedding = [embedding]  # a plain list: not a second registration of its parameters

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def has(self, name: str) -> bool:
        return self.embedding[0].has(name)

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:  # x B A: logits of the adapted embedding
        emb = self.embedding[0]
        a, b = emb.lora_embedding_A[name], emb.lora_embedding_B[name]
        return F.linear(F.linear(x, b.t()), a.t()) * emb.scale[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_updates(self.base(x), x, self.embedding[0].selection.groups, self)


# --- attaching, merging, reporting ----------------------------------------------------------
@dataclass
class AdaptedModule:
    module: str      # dotted path in the model
    target: str      # attn | experts | shared | dense | router
    shape: str       # what the update covers
    rank: int
    params: int


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attr


def _linear_targets(model: Transformer, targets: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(module path, target) of every nn.Linear (or already-wrapped one) to adapt."""
    for i, block in enumerate(model.layers):
        if "attn" in targets:
            for p in block.attn.PROJECTIONS:
                yield f"layers.{i}.attn.{p}", "attn"
        ffn = block.ffn
        if isinstance(ffn, MoE):
            if "shared" in targets and ffn.shared is not None:
                for p in ("w1", "w3", "w2"):
                    yield f"layers.{i}.ffn.shared.{p}", "shared"
        elif "dense" in targets and isinstance(ffn, SwiGLU):
            for p in ("w1", "w3", "w2"):
                yield f"layers.{i}.ffn.{p}", "dense"


def store_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Hold the frozen weight matrices of the projections (`Linear`), the embedding and the head
    in ``dtype`` while adapters train, and return the bytes this saves. Norms, biases, routers,
    stacked experts and every trainable parameter keep their dtype. Products with fp32 inputs
    still compute in fp32, the stored weights upcast for each product and only the stored ones
    kept for backward (`kernels.linear.stored_low_precision`), so an adapter trains against the
    base's weights rounded to ``dtype``, with fp32 arithmetic, in about half their memory for bf16."""
    saved = 0
    for p in (p for m in model.modules() if isinstance(m, (Linear, nn.Embedding)) for p in m.parameters(recurse=False)):
        if not p.requires_grad and p.is_floating_point() and p.dim() == 2 and p.dtype != dtype:
            before = p.numel() * p.element_size()
            p.data = p.data.to(dtype)
            saved += before - p.numel() * p.element_size()
    return saved


def apply_lora(model: Transformer, cfg: LoraConfig, name: str = "default") -> list[AdaptedModule]:
    """Attach adapter ``name`` (B = 0, so the model is unchanged) to the targets of ``cfg``, freeze
    every base weight, and make the new adapter's factors the only trainable parameters.
    Several adapters can be attached in turn; returns the adapted modules of this one."""
    check_name(name)
    registry: dict[str, LoraConfig] = getattr(model, "lora_adapters", None) or {}
    if name in registry:
        raise ConfigError(f"adapter {name!r} is already attached to this model")
    sel = _selection(model)
    report: list[AdaptedModule] = []
    for path, target in _linear_targets(model, cfg.targets):
        parent, attr = _parent(model, path)
        layer = getattr(parent, attr)
        if not isinstance(layer, LoraLinear):
            layer = LoraLinear(layer, sel)
            setattr(parent, attr, layer)
        n = layer.add(name, cfg)
        out_f, in_f = layer.base.weight.shape
        report.append(AdaptedModule(path, target, f"{in_f}->{out_f}", cfg.rank, n))
    for i, block in enumerate(model.layers):
        moe = block.ffn
        if not isinstance(moe, MoE):
            continue
        if "experts" in cfg.targets:
            if moe.lora is None:
                moe.lora = ExpertLora()
            n = moe.lora.add(name, moe, cfg)
            E, D, H = moe.w1_EDH.shape
            report.append(AdaptedModule(f"layers.{i}.ffn.experts", "experts",
                                        f"{E} experts x (w1, w3: {D}->{H}; w2: {H}->{D})",
                                        cfg.rank_for("experts"), n))
        if "router" in cfg.targets:
            if moe.router.lora is None:
                moe.router.lora = RouterLora()
            n = moe.router.lora.add(name, moe.router, cfg)
            E, D = moe.router.weight.shape
            report.append(AdaptedModule(f"layers.{i}.ffn.router", "router", f"{D}->{E}", cfg.rank, n))
        moe.router.adapter_states[name] = RoutingState(moe.router)
        moe.router.selection = moe.lora_selection = sel
    if "embed" in cfg.targets:
        if not isinstance(model.embed, LoraEmbedding):
            model.embed = LoraEmbedding(model.embed, sel)
            if model.cfg.tie_embeddings:
                model.head = LoraTiedHead(model.head, model.embed)
        n = model.embed.add(name, cfg)
        V, D = model.embed.weight.shape
        report.append(AdaptedModule("embed", "embed", f"{V} tokens x {D}"
                                    + (" (and the tied output head)" if model.cfg.tie_embeddings else ""),
                                    cfg.rank_for("embed"), n))
    registry[name] = cfg
    model.lora_adapters = registry
    for pname, p in model.named_parameters():
        p.requires_grad = _is_factor_of(pname, name)
    return report


def remove_adapter(model: Transformer, name: str) -> None:
    """Detach adapter ``name`` from every module (other adapters stay)."""
    for module in model.modules():
        if isinstance(module, (LoraLinear, ExpertLora, RouterLora)) and name in module.lora_A:
            del module.lora_A[name], module.lora_B[name]
            module.scale.pop(name, None)
            if isinstance(module, ExpertLora):
                module._folded.pop(name, None)
            if isinstance(module, LoraLinear):
                del module.drop[name]
        elif isinstance(module, LoraEmbedding) and name in module.lora_embedding_A:
            del module.lora_embedding_A[name], module.lora_embedding_B[name]
            module.scale.pop(name, None)
        elif isinstance(module, Router) and name in module.adapter_states:
            del module.adapter_states[name]
    getattr(model, "lora_adapters", {}).pop(name, None)


def _is_factor_of(param_name: str, adapter: str) -> bool:
    """Whether a parameter is one of adapter ``adapter``'s factors: its path has the adapter's
    name right after ``lora_A`` / ``lora_B`` (``...wq.lora_A.<name>``, ``...lora.lora_A.<name>.w1``)."""
    parts = param_name.split(".")
    return any(p in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B") and parts[i + 1:i + 2] == [adapter]
               for i, p in enumerate(parts))


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def format_report(report: list[AdaptedModule], total_params: int) -> str:
    """One line per kind of adapted module (the same module in every block is one line, its
    blocks counted), then the totals."""
    groups: dict[tuple, list[AdaptedModule]] = {}
    for m in report:
        pattern = re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", m.module)
        groups.setdefault((pattern, m.target, m.rank, m.shape), []).append(m)
    lines = [f"{'module':34} {'target':8} {'rank':>4} {'per block':>9} {'blocks':>6}  covers"]
    for (pattern, target, rank, shape), ms in groups.items():
        name = ms[0].module if len(ms) == 1 else pattern
        lines.append(f"{name:34} {target:8} {rank:>4} {ms[0].params:>9,} {len(ms):>6}  {shape}")
    n = sum(m.params for m in report)
    by_target: dict[str, int] = {}
    for m in report:
        by_target[m.target] = by_target.get(m.target, 0) + 1
    lines.append(f"{len(report)} modules ({', '.join(f'{v} {k}' for k, v in by_target.items())}); "
                 f"{n:,} adapter parameters = {100 * n / total_params:.2f}% of the model's {total_params:,}")
    return "\n".join(lines)


def base_parameters(model: Transformer) -> int:
    """Parameters of the model without any adapter factors (tied head counted once)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


@torch.no_grad()
def merge_lora(model: Transformer, name: str) -> Transformer:
    """Fold adapter ``name`` into the weights (and its routing state into the routers) and remove
    every adapter: the model becomes a plain Transformer again, ready for `save_checkpoint`."""
    if name not in adapter_names(model):
        raise ConfigError(f"adapter {name!r} is not loaded (loaded: {', '.join(adapter_names(model)) or 'none'})")
    for path, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            if name in module.lora_A:
                module.base.weight.copy_(module.merged_weight(name))
            parent, attr = _parent(model, path)
            setattr(parent, attr, module.base)
    if isinstance(model.embed, LoraEmbedding):
        emb = model.embed
        if name in emb.lora_embedding_A:
            emb.base.weight.add_(emb.delta_weight(name).to(emb.base.weight.dtype))
        model.embed = emb.base
        if isinstance(model.head, LoraTiedHead):
            model.head = model.head.base
            model.head.weight = model.embed.weight
    for moe in model.moe_layers():
        if moe.lora is not None:
            for w, merged in zip(ExpertLora.WEIGHTS, moe.lora.weights(moe, name)):
                getattr(moe, w).copy_(merged)
        router = moe.router
        if router.lora is not None and name in router.lora.lora_A:
            delta = (router.lora.lora_B[name] @ router.lora.lora_A[name]) * router.lora.scale[name]
            router.weight.add_(delta.to(router.weight.dtype))
        state = router.adapter_states[name]
        router.bias_E.copy_(state.bias_E)
        router.threshold.copy_(state.threshold)
        moe.lora = router.lora = None
        router.adapter_states = nn.ModuleDict()
    model.lora_adapters = {}
    model.lora_selection = Selection()
    for moe in model.moe_layers():
        moe.router.selection = moe.lora_selection = model.lora_selection
    for p in model.parameters():
        p.requires_grad = True
    return model


PEFT_PREFIX = "base_model.model."


def _live_tensors(model: Transformer, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s parameters and routing-state buffers, by their file keys."""
    out: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        key = f"{PEFT_PREFIX}{path}"
        if isinstance(module, LoraLinear) and name in module.lora_A:
            out[f"{key}.lora_A.weight"] = module.lora_A[name]
            out[f"{key}.lora_B.weight"] = module.lora_B[name]
        elif isinstance(module, LoraEmbedding) and name in module.lora_embedding_A:
            out[f"{key}.lora_embedding_A"] = module.lora_embedding_A[name]
            out[f"{key}.lora_embedding_B"] = module.lora_embedding_B[name]
        elif isinstance(module, MoE):
            if module.lora is not None and name in module.lora.lora_A:
                for k in ("w1", "w3", "w2"):
                    out[f"{key}.experts.{k}.lora_A.weight"] = module.lora.lora_A[name][k]
                    out[f"{key}.experts.{k}.lora_B.weight"] = module.lora.lora_B[name][k]
            router = module.router
            if router.lora is not None and name in router.lora.lora_A:
                out[f"{key}.router.lora_A.weight"] = router.lora.lora_A[name]
                out[f"{key}.router.lora_B.weight"] = router.lora.lora_B[name]
            if name in router.adapter_states:
                out[f"{key}.router.bias_E"] = router.adapter_states[name].bias_E
                out[f"{key}.router.threshold"] = router.adapter_states[name].threshold
    return out


def adapter_state(model: Transformer, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors under PEFT-style keys (``base_model.model.<path>.lora_A.weight``;
    routed experts as ``<moe path>.experts.w1.lora_A.weight`` of shape (E, in, r)), plus its
    routing state (``<router path>.bias_E`` and ``.threshold``)."""
    return {k: v.detach().contiguous().cpu() for k, v in _live_tensors(model, name).items()}


@torch.no_grad()
def load_adapter_state(model: Transformer, name: str, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy tensors made by `adapter_state` into adapter ``name`` (already attached with the same
    config). Every key must be present with its shape; a CheckpointError names what differs."""
    from lightseek.errors import CheckpointError

    live = _live_tensors(model, name)
    missing, unexpected = sorted(set(live) - set(tensors)), sorted(set(tensors) - set(live))
    if missing or unexpected:
        raise CheckpointError(f"adapter {where}: tensors do not match the base model and adapter config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, dst in live.items():
        src = tensors[key]
        if tuple(src.shape) != tuple(dst.shape):
            raise CheckpointError(f"adapter {where}: {key} has shape {tuple(src.shape)}, the model needs "
                                  f"{tuple(dst.shape)} (was it trained on another base model?)")
        dst.copy_(src.to(dst.dtype))
