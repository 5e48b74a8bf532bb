"""Smaller students cut from a dense teacher, to start distillation from the teacher's own weights.

- `drop_layers(model, keep)`: a model made of the kept blocks only, in their order; every
  weight is copied from the teacher, embeddings, final norm and head included.
- `block_influence(model, windows)`: how much each block changes the hidden state on
  calibration text, ``1 - mean_t cos(h_in, h_out)`` (the Block Influence of Men et al., 2024,
  "ShortGPT"); ``--layers influence:N`` keeps the N blocks that change it most, and drops the
  ones closest to an identity, which are the cheapest to lose.
- `narrow_ffn(model, windows, width)`: every FFN keeps its ``width`` most important neurons.
  A neuron's importance is its mean contribution to the FFN's output on calibration text,
  ``mean_t |h_i(x_t)| * ||W2[:, i]||`` (the measure `moefy` splits experts by), taken layer by
  layer on the model as it is being narrowed, so each layer is judged on the inputs the
  narrowed layers below it produce. Neurons keep their original order.

Both return a new model and leave the teacher untouched. They work on plain dense SwiGLU models
(imported Llama-family checkpoints, dense models trained here); anything else is refused with a
clear error. `lightseek shrink` is the command; `lightseek distill train --student=...` then
trains the result against the teacher.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from lightseek.errors import ConfigError
from lightseek.model.moe import SwiGLU
from lightseek.model.transformer import Transformer
from lightseek.moefy.convert import check_dense


def parse_layers(spec: str, n_layers: int, influence: list[float] | None = None) -> list[int]:
    """Block indices from ``spec``: ``every-other`` (0, 2, 4, ...), ``influence:N`` (the N blocks
    of highest ``influence``, one figure per block) or a comma list (``0,1,5,-1``)."""
    if spec == "every-other":
        return list(range(0, n_layers, 2))
    if spec.startswith("influence:"):
        n = spec.split(":", 1)[1]
        if not n.isdigit() or not 0 < int(n) <= n_layers:
            raise ConfigError(f"--layers {spec!r}: give influence:N with N blocks to keep, 1..{n_layers}")
        if influence is None or len(influence) != n_layers:
            raise ConfigError(f"--layers {spec!r} needs one influence figure per block (calibration text)")
        return sorted(sorted(range(n_layers), key=lambda i: -influence[i])[: int(n)])
    try:
        picked = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers {spec!r}: give 'every-other', influence:N or block indices such as 0,2,4,-1"
                          ) from None
    keep = sorted({i + n_layers if i < 0 else i for i in picked})
    if not keep or keep[0] < 0 or keep[-1] >= n_layers:
        raise ConfigError(f"--layers {spec!r}: the model has blocks 0..{n_layers - 1}")
    return keep


def drop_layers(model: Transformer, keep: list[int]) -> Transformer:
    """A new model of blocks ``keep`` (indices into ``model.layers``, in order)."""
    check_dense(model, "shrink")
    n = model.cfg.n_layers
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= n:
        raise ConfigError(f"layers to keep must be increasing indices in 0..{n - 1}, got {keep}")
    cfg = dataclasses.replace(model.cfg, n_layers=len(keep), n_dense_layers=min(model.cfg.n_dense_layers, len(keep)))
    small = Transformer(cfg)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            if int(index) in keep:
                state[f"layers.{keep.index(int(index))}.{rest}"] = tensor.clone()
        else:
            state[name] = tensor.clone()
    small.load_state_dict(state)
    return small.to(next(model.parameters()).device)


def ffn_width(inter: int, share: float) -> int:
    """The FFN width that keeps ``share`` of ``inter`` neurons, in kernel-friendly multiples of 8."""
    return max(8, int(inter * share) // 8 * 8)


@torch.no_grad()
def block_influence(model: Transformer, windows: list[torch.Tensor]) -> list[float]:
    """Per block, ``1 - cos(input, output)`` of the hidden state, averaged over every token of
    ``windows``: near 0 for a block that barely changes its input."""
    cfg = model.cfg
    hs = [model.embed(w) * cfg.embed_scale for w in windows]
    T = windows[0].shape[1]
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    out = []
    for block in model.layers:
        nxt = [block(h, cos, sin, None, 0) for h in hs]
        sims = torch.cat([torch.nn.functional.cosine_similarity(a, b, dim=-1).reshape(-1) for a, b in zip(hs, nxt)])
        out.append(float(1.0 - sims.float().mean()))
        hs = nxt
    return out


@torch.no_grad()
def narrow_ffn(model: Transformer, windows: list[torch.Tensor], width: int) -> tuple[Transformer, list[dict]]:
    """A new model whose FFNs keep their ``width`` most important neurons; per layer, the share of
    the calibration output norm the kept neurons carried and the relative output error."""
    from lightseek.moefy.convert import layerwise
    from lightseek.moefy.split import neuron_contributions

    check_dense(model, "shrink")
    inter = model.cfg.dense_inter_dim
    if not 0 < width <= inter:
        raise ConfigError(f"FFN width must be in 1..{inter}, got {width}")
    small = copy.deepcopy(model).eval()
    report = []
    for i, block, u_ND in layerwise(small, windows):
        ffn = block.ffn
        importance_I = neuron_contributions(ffn, u_ND).mean(0)
        kept = importance_I.topk(width).indices.sort().values
        narrow = SwiGLU(ffn.w1.in_features, width).to(ffn.w1.weight)
        narrow.w1.weight.copy_(ffn.w1.weight[kept])
        narrow.w3.weight.copy_(ffn.w3.weight[kept])
        narrow.w2.weight.copy_(ffn.w2.weight[:, kept])
        y, y_small = ffn(u_ND), narrow(u_ND)
        report.append({"layer": i, "importance_kept": float(importance_I[kept].sum() / importance_I.sum()),
                       "rel_error": float((y_small - y).norm() / y.norm().clamp_min(1e-12))})
        block.ffn = narrow  # layerwise carries the hidden states on through the narrowed FFN
    out = Transformer(dataclasses.replace(model.cfg, dense_inter_dim=width))  # a config that says the width
    out.load_state_dict(small.state_dict())
    return out.to(next(model.parameters()).device).eval(), report


def shrink_checkpoint(checkpoint: str, out: str, layers: str | None = None, ffn_share: float | None = None,
                      calib: list[str] | None = None, calib_samples: int = 32, overwrite: bool = False) -> dict:
    """`lightseek shrink`: cut ``checkpoint`` (blocks, then FFN width) into a new checkpoint ``out``."""
    from lightseek.adapters.store import base_fingerprint
    from lightseek.data.calib import CalibConfig, calibration_windows
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.fileio import check_new_checkpoint_dir
    from lightseek.model.checkpoint import (
        TOKENIZER,
        load_model,
        read_checkpoint_config,
        resolve_checkpoint,
        save_checkpoint,
    )
    from lightseek.moefy.run import default_calibration

    if layers is None and ffn_share is None:
        raise ConfigError("shrink needs --layers, --ffn-share or both")
    if ffn_share is not None and not 0 < ffn_share <= 1:
        raise ConfigError(f"--ffn-share must be in (0, 1], got {ffn_share}")
    src = resolve_checkpoint(checkpoint)
    meta = read_checkpoint_config(src)
    if "quantization" in meta:
        raise ConfigError(f"checkpoint {src} is quantized; shrink its full-precision source")
    check_new_checkpoint_dir(out, src, overwrite)
    model = load_model(src).eval()
    check_dense(model, "shrink")
    before = model.num_params()["total"]
    info: dict = {"source": base_fingerprint(src)}
    windows = None
    if ffn_share is not None or (layers or "").startswith("influence:"):
        windows = calibration_windows(Tokenizer.load(src), CalibConfig(files=list(calib or []), samples=calib_samples),
                                      model.cfg.max_seq_len, section="shrink.calib",
                                      default_documents=default_calibration)
        info["calib_tokens"] = sum(w.numel() for w in windows)
    if layers is not None:
        influence = block_influence(model, windows) if layers.startswith("influence:") else None
        keep = parse_layers(layers, model.cfg.n_layers, influence)
        model = drop_layers(model, keep)
        info["layers_kept"] = keep
        if influence is not None:
            info["block_influence"] = influence
    if ffn_share is not None:
        width = ffn_width(model.cfg.dense_inter_dim, ffn_share)
        model, report = narrow_ffn(model, windows, width)
        info.update(ffn_width=width, ffn_layers=report)
    after = model.num_params()["total"]
    info["params"] = {"before": before, "after": after}
    save_checkpoint(out, model, tokenizer_file=src / TOKENIZER, run_config=meta.get("run"), extra={"shrink": info})
    return {"out": str(out), **info}
