"""`quantize(model, cfg)`: replace a model's weight matrices by quantized ones, role by role.

Each target is one weight matrix (or, for routed experts, a stack quantized per expert). The
whole plan (roles, bits, group sizes against input dims) is checked before any weight changes,
so a bad configuration stops with an error naming the layer and leaves the model as it was.
After quantization ``model.quant_layers`` describes every quantized target (what
`quant.checkpoint` records in config.json to rebuild the model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lightseek.errors import ConfigError
from lightseek.model.moe import MoE, SwiGLU
from lightseek.model.transformer import Transformer
from lightseek.quant.config import ACT_ROLES, QuantConfig
from lightseek.quant.gptq import Hessian, collect_hessians, gptq_quantize
from lightseek.quant.modules import (
    EXPERT_WEIGHTS,
    QuantEmbedding,
    QuantLinear,
    QuantMoE,
    mark_head,
    tie_head,
    tied_head,
)
from lightseek.quant.schemes import QTensor, padded_dim, quantize_rtn


@dataclass
class Target:
    path: str   # module path: an nn.Linear, the embedding, a router, or a MoE layer (its experts)
    role: str
    kind: str   # linear | embed | router | experts


def targets(model: Transformer) -> list[Target]:
    """Every weight matrix a quantization role covers, in model order."""
    out: list[Target] = []
    for i, block in enumerate(model.layers):
        out += [Target(f"layers.{i}.attn.{p}", "attn", "linear") for p in block.attn.PROJECTIONS]
        ffn = block.ffn
        if isinstance(ffn, MoE):
            out.append(Target(f"layers.{i}.ffn.router", "router", "router"))
            if ffn.shared is not None:
                out += [Target(f"layers.{i}.ffn.shared.{p}", "shared", "linear") for p in ("w1", "w3", "w2")]
            out.append(Target(f"layers.{i}.ffn", "experts", "experts"))
        elif isinstance(ffn, SwiGLU):
            out += [Target(f"layers.{i}.ffn.{p}", "dense", "linear") for p in ("w1", "w3", "w2")]
    out.append(Target("embed", "embed", "embed"))
    if not model.cfg.tie_embeddings:
        out.append(Target("head", "head", "linear"))
    return out


def _params(model: Transformer, t: Target) -> dict[str, nn.Parameter]:
    """The parameters of a target as the model holds them: {'': weight} or, for experts, the
    stacks {'w1': (E, D, H), 'w3': (E, D, H), 'w2': (E, H, D)}."""
    mod = model.get_submodule(t.path)
    if t.kind == "experts":
        return {k: getattr(mod, name) for k, name in EXPERT_WEIGHTS.items()}
    if not isinstance(mod, (nn.Linear, nn.Embedding, MoE)) and t.kind != "router":
        raise ConfigError(f"{t.path}: cannot quantize a {type(mod).__name__} (is the model already "
                          f"quantized, or carrying adapters? quantize the plain model)")
    return {"": mod.weight}


def _matrices(model: Transformer, t: Target) -> dict[str, torch.Tensor]:
    """The (out, in) weights of a target: {'': W} or, for experts, {'w1': (E, H, D), ...}."""
    return {k: (p.transpose(1, 2) if t.kind == "experts" else p).detach() for k, p in _params(model, t).items()}


def plan(model: Transformer, cfg: QuantConfig) -> list[tuple[Target, int]]:
    """(target, bits) of every target to quantize; every group size is checked here."""
    if getattr(model, "lora_adapters", None):
        raise ConfigError("quantize: the model carries LoRA adapters; merge or remove them first "
                          "(adapters can be applied on top of the quantized checkpoint)")
    if getattr(model, "quant_layers", None):
        raise ConfigError("quantize: the model is already quantized")
    chosen = []
    for t in targets(model):
        bits = cfg.role_bits(t.role)
        if bits is None:
            continue
        for name, w in _matrices(model, t).items():
            if bits == 4:
                padded_dim(w.shape[-1], cfg.group_size, cfg.pad_groups, _where(t, name, cfg))
        chosen.append((t, bits))
    return chosen


def _where(t: Target, name: str, cfg: QuantConfig) -> str:
    path = f"{t.path}.{EXPERT_WEIGHTS[name]}" if name else t.path
    return f"layer {path} (role {t.role}, quant.group_size)"


@torch.no_grad()
def quantize(model: Transformer, cfg: QuantConfig, calib: Iterable[torch.Tensor] | None = None,
             on_layer: Callable[[str], None] | None = None) -> Transformer:
    """Quantize ``model`` in place by ``cfg`` and return it. ``calib`` ((b, T) token windows) is
    needed by the gptq method: Hessians of every layer's inputs come from it."""
    chosen = plan(model, cfg)
    biased = next((t.path for t, _ in chosen if t.kind == "linear"
                   and getattr(model.get_submodule(t.path), "bias", None) is not None), None)
    if biased is not None:  # a quantized layer has no bias: it would be dropped without a word
        raise ConfigError(f"{biased} has a bias, which quantized layers do not carry yet; this model "
                          "(attention biases, as in Qwen2) cannot be quantized")
    n_params = sum(p.numel() for p in model.parameters())
    layers: dict[str, dict] = {}
    smooth: dict[str, torch.Tensor] = {}  # W8A8 layers: each input channel's smoothing s

    def apply(t: Target, bits: int, hessians: dict[str, Hessian]) -> None:
        s = smooth.get(t.path)
        qts = {name: _quantize_matrix(w, t, name, bits, cfg, hessians, s)
               for name, w in _matrices(model, t).items()}
        _install(model, t, qts, cfg.kernel, None if s is None else (1.0 / s).to(qts[""].qweight.device))
        some = next(iter(qts.values()))
        layers[t.path] = {"role": t.role, "kind": t.kind, "bits": bits, "group": some.group,
                          "in": {k or "w": q.in_features for k, q in qts.items()},
                          "out": {k or "w": q.out_features for k, q in qts.items()}}
        if s is not None:
            layers[t.path]["activations"] = 8
        if on_layer is not None:
            on_layer(t.path)

    model.eval()
    if cfg.needs_calibration:
        if not calib:  # None, or no windows at all
            what = ("quant.method gptq" if cfg.method == "gptq" else "quant.policy budget" if cfg.policy == "budget"
                    else "quant.activations 8 (smoothing)")
            raise ConfigError(f"{what} needs calibration text (quant.calib.files / --calib)")
        device = next(model.parameters()).device
        calib = [batch.to(device) for batch in calib]
    if cfg.policy == "budget":
        chosen = _budget(model, cfg, chosen, calib)
    if cfg.activations == 8:
        w8a8 = [t.path for t, bits in chosen if bits == 8 and t.kind == "linear" and t.role in ACT_ROLES]
        if not w8a8:
            raise ConfigError(f"quant.activations 8: no 8-bit linear layer of the roles {', '.join(ACT_ROLES)} "
                              "to give 8-bit inputs (give those roles 8 bits)")
        smooth = smoothing(model, w8a8, calib, cfg.smooth_alpha)
    if cfg.method == "gptq":
        if cfg.sequential:
            _quantize_sequentially(model, chosen, calib, apply)
        else:
            hessians = collect_hessians(lambda: [model(batch) for batch in calib], *_watched(model, chosen))
            for t, bits in chosen:
                apply(t, bits, hessians)
    else:
        for t, bits in chosen:
            apply(t, bits, {})
    if cfg.needs_calibration:
        model.reset_routing_stats()  # calibration is not serving traffic
    if model.cfg.tie_embeddings and isinstance(model.embed, QuantEmbedding):
        model.head = tied_head(model.embed, cfg.kernel, cfg.activations)
        tie_head(model.embed, model.head)
    mark_head(model)
    model.quant_layers = layers
    model.quant_config = cfg
    model.quant_params = n_params
    return model.eval()


def _budget(model: Transformer, cfg: QuantConfig, chosen, calib: list[torch.Tensor]):
    """``chosen`` with the budget policy's bits; the sensitivities go to ``model.quant_budget``."""
    from lightseek.quant.budget import choose_bits

    windows = torch.cat(calib)[:cfg.fisher_samples]                       # (n, T)
    bits, sens = choose_bits(model, cfg, chosen, windows)
    model.quant_budget = {"max_bits": cfg.max_bits, "windows": windows.shape[0], "matrices": {
        s.path: {"bits": bits[s.path], "loss_4": s.loss[4], "loss_8": s.loss[8]} for s in sens}}
    return [(t, bits.get(t.path, b)) for t, b in chosen]


def _watched(model: Transformer, chosen) -> tuple[dict[str, nn.Module], dict[str, MoE]]:
    """The modules whose inputs give the Hessians of ``chosen``: (linears by path, MoE layers)."""
    linears, moes = {}, {}
    for t, _ in chosen:
        if t.kind == "experts":
            moes[t.path] = model.get_submodule(t.path)
        elif t.kind == "embed":
            if model.cfg.tie_embeddings:  # the tied head's inputs weigh the shared matrix
                linears["embed"] = model.head
        else:
            linears[t.path] = model.get_submodule(t.path)
    return linears, moes


# A block's targets in the order their inputs are computed (path after ``layers.<i>.``); each
# stage is calibrated on the outputs of the stages before it, already quantized.
STAGES = ({"attn.wq", "attn.wk", "attn.wv"}, {"attn.wo"},
          {"ffn.w1", "ffn.w3", "ffn.router", "ffn.shared.w1", "ffn.shared.w3", "ffn"}, {"ffn.w2", "ffn.shared.w2"})


def _quantize_sequentially(model: Transformer, chosen, calib: list[torch.Tensor],
                           apply: Callable[[Target, int, dict], None]) -> None:
    """GPTQ block by block, stage by stage: the calibration activations are carried through the
    blocks already quantized, so each layer compensates the error of those before it (not only
    its own), as in GPTQ's reference implementation. The (tied) embedding and the head come
    last, on the final hidden states of the quantized blocks."""
    per_block: dict[int, list[list]] = {}
    last = []
    for t, bits in chosen:
        if t.path.startswith("layers."):
            i, _, sub = t.path.removeprefix("layers.").partition(".")
            stage = next(n for n, names in enumerate(STAGES) if sub in names)
            per_block.setdefault(int(i), [[] for _ in STAGES])[stage].append((t, bits))
        else:
            last.append((t, bits))
    xs, rope = _first_block_inputs(model, calib)

    def run_block(block) -> list[torch.Tensor]:
        return [block(x, cos, sin, None, 0) for x, (cos, sin) in zip(xs, rope)]

    for i, block in enumerate(model.layers):
        for stage in per_block.get(i, []):
            if stage:
                hessians = collect_hessians(lambda: run_block(block), *_watched(model, stage))
                for t, bits in stage:
                    apply(t, bits, hessians)
        xs = run_block(block)
    if last:
        hessians = collect_hessians(lambda: [model.head(model.norm(x)) for x in xs], *_watched(model, last))
        for t, bits in last:
            apply(t, bits, hessians)


class _Reached(Exception):
    pass


def _first_block_inputs(model: Transformer, calib: list[torch.Tensor]):
    """What the model's own forward hands its first block for each window: the hidden states
    (b, T, D) and the rotary tables (cos, sin). The forward stops there."""
    xs, rope = [], []

    def grab(block, args):
        xs.append(args[0])
        rope.append((args[1], args[2]))
        raise _Reached

    handle = model.layers[0].register_forward_pre_hook(grab)
    try:
        for batch in calib:
            with contextlib.suppress(_Reached):
                model(batch)
    finally:
        handle.remove()
    return xs, rope


def _quantize_matrix(w: torch.Tensor, t: Target, name: str, bits: int, cfg: QuantConfig,
                     hessians: dict[str, Hessian], smooth: torch.Tensor | None = None) -> QTensor:
    """The codes of one matrix; with ``smooth`` (W8A8), those of ``W * smooth`` (its columns
    scaled), whose inputs are ``x / smooth``: GPTQ's Hessian is scaled to match."""
    where = _where(t, name, cfg)
    key = f"{t.path}.{'w2' if name == 'w2' else 'w1'}" if name else t.path
    h = hessians.get(key)
    h = None if h is None else h.h
    if smooth is not None:
        w = w * smooth.to(w.device, w.dtype)
        if h is not None:
            s = smooth.double()
            h = h / (s[:, None] * s[None, :])
    if h is None:  # rtn, or a matrix without calibration inputs (an untied embedding)
        return quantize_rtn(w, bits, cfg.group_size, cfg.pad_groups, where, cfg.clip)
    stacked = w if w.dim() == 3 else w[None]
    qt = gptq_quantize(stacked, h, bits, cfg.group_size, cfg.damp, cfg.block, cfg.pad_groups, where, cfg.clip,
                       cfg.act_order, cfg.refit)
    if w.dim() == 2:
        qt = QTensor(qt.bits, qt.group, qt.qweight[0], qt.scales[0], None if qt.zeros is None else qt.zeros[0],
                     qt.in_features)
    return qt


def smoothing(model: Transformer, paths: list[str], calib: list[torch.Tensor] | None,
              alpha: float | None) -> dict[str, torch.Tensor]:
    """Per W8A8 layer (by path), each input channel's smoothing s (SmoothQuant): the layer
    computes ``(x / s) @ (W * s)^T``, which moves the range of the inputs' outlier channels into
    the weights, where rounding is per output channel and cheaper. s = max|x|^alpha /
    max|w|^(1 - alpha), per channel, with max|x| over the calibration windows; layers that read
    the same input (the query, key and value projections; the gate and up projections) share
    one s, taken over all their weights, so that they still fuse into one product. ``alpha``
    None: s = 1 (no smoothing)."""
    mods = {p: model.get_submodule(p) for p in paths}
    if alpha is None:
        return {p: torch.ones(m.in_features) for p, m in mods.items()}
    amax: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}  # each layer's first input tensor: which layers share one

    def watch(path: str):
        def pre(mod, args) -> None:
            x = args[0]
            a = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float().cpu()
            amax[path] = a if path not in amax else torch.maximum(amax[path], a)
            first.setdefault(path, x)  # the tensor itself (a detached view would be a new object)
        return pre

    handles = [m.register_forward_pre_hook(watch(p)) for p, m in mods.items()]
    try:
        for batch in calib:
            model(batch)
    finally:
        for h in handles:
            h.remove()
    groups: dict[int, list[str]] = {}
    for p in paths:
        groups.setdefault(id(first[p]), []).append(p)
    out = {}
    for group in groups.values():
        a = torch.stack([amax[p] for p in group]).amax(0)
        w = torch.stack([mods[p].weight.detach().abs().amax(0).float().cpu() for p in group]).amax(0)
        s = a.clamp_min(1e-5) ** alpha / w.clamp_min(1e-5) ** (1 - alpha)
        for p in group:
            out[p] = s.clamp(1e-4, 1e4)
    return out


def _install(model: Transformer, t: Target, qts: dict[str, QTensor], kernel: str,
             act_scale: torch.Tensor | None = None) -> None:
    parent_path, _, attr = t.path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if t.kind == "experts":
        setattr(parent, attr, QuantMoE(getattr(parent, attr), qts, kernel))
    elif t.kind == "router":
        install_router(getattr(parent, attr), qts[""])
    elif t.kind == "embed":
        setattr(parent, attr, QuantEmbedding(qts[""], kernel))
    else:
        setattr(parent, attr, QuantLinear(qts[""], kernel, act_scale))


def install_router(router: nn.Module, qt: QTensor) -> None:
    """Routers are tiny and route in fp32: their weight holds the dequantized values, and the
    codes are kept (``router.quantized``) for the checkpoint."""
    from lightseek.quant.schemes import dequantize

    router.weight.data.copy_(dequantize(qt).to(router.weight.dtype))
    router.quantized = qt


def bits_per_weight(model: Transformer) -> float:
    """Storage of the weights (quantized codes, scales and offsets plus the full-precision
    parameters) in bits per parameter of the original model (the tied head counted once)."""
    n = getattr(model, "quant_params", None) or sum(p.numel() for p in model.parameters())
    return weight_bits(model) / n


def weight_bits(model: Transformer) -> int:
    """Bits the model's weights take in storage."""
    from lightseek.quant.modules import _QuantWeights

    seen: set[int] = set()
    bits = 0
    for m in model.modules():
        if isinstance(m, _QuantWeights):
            for b in (m.qweight, m.scales, m.zeros):
                if b is not None and b.data_ptr() not in seen:
                    seen.add(b.data_ptr())
                    bits += 8 * b.numel() * b.element_size()
    for name, p in model.named_parameters():
        router = name.endswith("router.weight") and hasattr(model.get_submodule(name[:-7]), "quantized")
        if router:
            bits += model.get_submodule(name[:-7]).quantized.storage_bits()
        elif "lora_" not in name:
            bits += 8 * p.numel() * p.element_size()
    return bits
