"""Quantized checkpoints: the usual folder (config.json, model.safetensors, tokenizer.json) with
packed integer weights and fp16 scales in the safetensors file and a ``quantization`` section
in config.json, which `model.checkpoint.load_model` recognises and rebuilds from.

Keys: a quantized linear or embedding ``<path>.qweight``, ``.scales`` (and ``.zeros`` for 4
bits); routed experts ``<moe path>.qexperts.{w1,w3,w2}.qweight`` ... stacked (E, out, in);
routers ``<router path>.weight.qweight`` and ``.scales``. A head tied to a quantized embedding
is not stored again. The ``quantization`` section holds the QuantConfig, every quantized layer
(role, kind, bits, group, dims), the parameter count and bits per weight, the budget policy's
sensitivities (``budget``, when it chose the bits), and the source
checkpoint (path and the sha256 of its weights, so adapters trained on it still apply).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lightseek import __version__
from lightseek.config import from_dict, to_dict
from lightseek.errors import CheckpointError, LightseekError
from lightseek.fileio import write_dir_atomic, write_json_atomic
from lightseek.model.checkpoint import CONFIG, WEIGHTS, copy_tokenizer, materialize, read_tensors
from lightseek.model.config import ModelConfig
from lightseek.model.transformer import Transformer, rope_tables
from lightseek.quant.apply import bits_per_weight, install_router
from lightseek.quant.config import QuantConfig
from lightseek.quant.modules import QuantEmbedding, QuantLinear, QuantMoE, empty_qtensor, mark_head, tie_head, tied_head
from lightseek.quant.schemes import QTensor

SECTION = "quantization"


def quantized_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The tensors of a quantized model under their checkpoint keys."""
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        for k in [k for k in state if k.startswith("head.")]:
            del state[k]
    for path, mod in model.named_modules():
        qt = getattr(mod, "quantized", None)
        if isinstance(qt, QTensor):
            del state[f"{path}.weight"]
            state[f"{path}.weight.qweight"], state[f"{path}.weight.scales"] = qt.qweight, qt.scales
            if qt.zeros is not None:
                state[f"{path}.weight.zeros"] = qt.zeros
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_quantized(path: str | Path, model: Transformer, *, tokenizer_file: str | Path | None = None,
                   run_config: dict | None = None, source: dict | None = None) -> Path:
    """Write a quantized model as a checkpoint folder, atomically."""
    if not getattr(model, "quant_layers", None):
        raise LightseekError("save_quantized: the model is not quantized (run quantize first)")
    section = {"config": to_dict(model.quant_config), "layers": model.quant_layers,
               "params": model.quant_params, "bits_per_weight": bits_per_weight(model), "source": source or {}}
    if getattr(model, "quant_budget", None):  # the budget policy's sensitivities, for `lightseek quant` to show
        section["budget"] = model.quant_budget
    if getattr(model, "quant_tuning", None):  # what end-to-end tuning of the grids did (quant.tune)
        section["tuning"] = model.quant_tuning
    meta = {"lightseek_version": __version__, "model": model.cfg.to_dict(), SECTION: section}
    if run_config is not None:
        meta["run"] = run_config

    def fill(tmp: Path) -> None:
        write_json_atomic(tmp / CONFIG, meta)
        save_file(quantized_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer_file is not None:
            copy_tokenizer(tokenizer_file, tmp)

    return write_dir_atomic(path, fill)


def _empty(info: dict, name: str, lead: tuple[int, ...] = ()) -> QTensor:
    return empty_qtensor(info["bits"], info["group"], info["out"][name], info["in"][name], lead)


def _build(model: Transformer, layers: dict, kernel: str, activations: int | None = None) -> None:
    """Swap in empty quantized modules (on the meta device) where the checkpoint has them."""
    for path, info in layers.items():
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        kind = info.get("kind")
        if kind == "linear":
            w8a8 = info.get("activations") == 8  # W8A8: the inputs' smoothing is stored as act_scale
            act_scale = torch.empty(info["in"]["w"]) if w8a8 else None
            setattr(parent, attr, QuantLinear(_empty(info, "w"), kernel, act_scale))
        elif kind == "embed":
            setattr(parent, attr, QuantEmbedding(_empty(info, "w"), kernel))
        elif kind == "experts":
            E = model.cfg.n_experts
            setattr(parent, attr, QuantMoE(getattr(parent, attr), {k: _empty(info, k, (E,)) for k in info["out"]}, kernel))
        elif kind != "router":
            raise CheckpointError(f"{CONFIG}: quantized layer {path} has unknown kind {kind!r}")
    if model.cfg.tie_embeddings and isinstance(model.embed, QuantEmbedding):
        model.head = tied_head(model.embed, kernel, activations)


def load_quantized(path: Path, meta: dict, cfg: ModelConfig, device: str | torch.device = "cpu") -> Transformer:
    """Rebuild a quantized model from checkpoint folder ``path`` (config.json already read)."""
    section = meta[SECTION]
    label = f"checkpoint {path}"
    try:
        qcfg = from_dict(QuantConfig, section.get("config", {}), prefix="quant.")
        layers = dict(section["layers"])
        with torch.device("meta"):
            model = Transformer(cfg)
            _build(model, layers, qcfg.kernel, qcfg.activations)
    except (LightseekError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{label}: {CONFIG}: bad {SECTION} section ({e})") from None
    model = materialize(model, device)
    state = read_tensors(path / WEIGHTS, label, device)
    routers = _router_codes(state, layers, label)
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and (v.shape != state[k].shape or v.dtype != state[k].dtype)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{label}: quantized weights do not match {CONFIG} (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, mismatched {wrong[:3]})")
    model.load_state_dict(state, strict=False)
    if cfg.tie_embeddings:
        if isinstance(model.embed, QuantEmbedding):
            tie_head(model.embed, model.head)
        else:
            model.head.weight = model.embed.weight
    for rpath, qt in routers.items():
        install_router(model.get_submodule(rpath), qt)
    mark_head(model)
    cos, sin = rope_tables(cfg)
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    for m in model.moe_layers():
        m.router.reset_stats()
    model.quant_layers, model.quant_config = layers, qcfg
    model.quant_params, model.quant_source = section.get("params"), section.get("source", {})
    model.quant_budget = section.get("budget")
    return model


def _router_codes(state: dict, layers: dict, label: str) -> dict[str, QTensor]:
    """Take the routers' codes out of ``state``, putting their dequantized weights in."""
    from lightseek.quant.schemes import dequantize

    out = {}
    for path, info in layers.items():
        if info.get("kind") != "router":
            continue
        try:
            q, s = state.pop(f"{path}.weight.qweight"), state.pop(f"{path}.weight.scales")
        except KeyError:
            raise CheckpointError(f"{label}: missing the quantized weight of router {path}") from None
        z = state.pop(f"{path}.weight.zeros", None)
        qt = QTensor(info["bits"], info["group"], q, s, z, info["in"]["w"])
        out[path] = qt
        state[f"{path}.weight"] = dequantize(qt)
    return out


def is_quantized(meta: dict) -> bool:
    return SECTION in meta
