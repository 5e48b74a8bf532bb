"""`lightseek moefy`: convert a dense checkpoint into a dynamic-routing MoE checkpoint, or
re-target a converted one (after healing, or for another average k)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from lightseek.config import to_dict
from lightseek.errors import LightseekError
from lightseek.fileio import check_new_checkpoint_dir
from lightseek.moefy.config import MoefyConfig

# Default calibration text: the start of this Python's standard-library documentation, so that a
# conversion needs no data set. Held-out evaluation of converted models reads stdlib text past it.
CALIB_BYTES = 2_000_000


def default_calibration():
    from lightseek.data.corpus import stdlib_documents

    return stdlib_documents(CALIB_BYTES)


def calibration(tokenizer, cfg: MoefyConfig, max_seq_len: int) -> list[torch.Tensor]:
    from lightseek.data.calib import calibration_windows

    return calibration_windows(tokenizer, cfg.calib, max_seq_len, section="moefy.calib",
                               default_documents=default_calibration)


def moefy_checkpoint(checkpoint: str | Path, cfg: MoefyConfig, out: str | Path, overwrite: bool = False,
                     show_progress: bool = True) -> dict:
    """Convert ``checkpoint`` by ``cfg`` into a new MoE checkpoint folder ``out``; the summary.

    A checkpoint that is already a converted MoE (experts combined with unit weights, as
    conversion makes them; healed or not) is re-targeted instead: only its routing changes, to
    ``cfg.router`` at ``cfg.target_k`` (thresholds recalibrated on the calibration text) or
    ``cfg.top_k``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lightseek.adapters.store import base_fingerprint
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import (
        TOKENIZER,
        load_model,
        read_checkpoint_config,
        resolve_checkpoint,
        save_checkpoint,
    )
    from lightseek.moefy.convert import check_dense, moe_config, moefy_model

    src = resolve_checkpoint(checkpoint)
    meta = read_checkpoint_config(src)
    if "quantization" in meta:
        raise LightseekError(f"checkpoint {src} is quantized; moefy its full-precision source, then quantize the "
                             f"MoE checkpoint")
    check_new_checkpoint_dir(out, src, overwrite)
    dense = load_model(src)
    if dense.cfg.is_moe and dense.cfg.expert_weights == "unit":
        return _retarget_checkpoint(src, meta, dense, cfg, out)
    check_dense(dense)
    moe_config(dense.cfg, cfg)  # every setting checked before the calibration pass
    tokenizer = Tokenizer.load(src)
    windows = calibration(tokenizer, cfg, dense.cfg.max_seq_len)
    n_tokens = sum(w.numel() for w in windows)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} layers"),
               TimeElapsedColumn(), TimeRemainingColumn())
    n_moe = dense.cfg.n_layers - cfg.dense_layers
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"moefy ({cfg.split} split, {n_tokens:,} calibration tokens)", total=n_moe)
        model, layers = moefy_model(dense, windows, cfg, on_layer=lambda r: progress.advance(task))
    info = {"source": base_fingerprint(src), "config": to_dict(cfg), "calib_tokens": n_tokens, "layers": layers}
    save_checkpoint(out, model, tokenizer_file=src / TOKENIZER, run_config=meta.get("run"), extra={"moefy": info})
    return {"out": str(out), "layers": layers, "calib_tokens": n_tokens, "params": model.num_params(),
            "ffn_active_share": ffn_active_share(model)}


def _retarget_checkpoint(src: Path, meta: dict, model, cfg: MoefyConfig, out: str | Path) -> dict:
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import TOKENIZER, save_checkpoint
    from lightseek.moefy.convert import retarget, set_routing

    cfg = replace(cfg, experts=model.cfg.n_experts)
    top_k, _, _ = cfg.resolved_k()
    windows = calibration(Tokenizer.load(src), cfg, model.cfg.max_seq_len)
    model.eval()
    with torch.inference_mode():
        if cfg.router == "dynamic":
            retarget(model, windows, cfg.target_k)
        else:
            set_routing(model, router_mode="topk", top_k=top_k, target_k=float(top_k))
        model.reset_routing_stats()
        for w in windows:
            model(w)
    layers = model.routing_report()
    n_tokens = sum(w.numel() for w in windows)
    history = [*meta.get("moefy_retargets", []), {"router": cfg.router, "target_k": cfg.target_k, "top_k": top_k,
                                                   "calib_tokens": n_tokens}]
    extra = {key: meta[key] for key in ("moefy", "distilled") if key in meta}
    save_checkpoint(out, model, tokenizer_file=src / TOKENIZER, run_config=meta.get("run"),
                    extra={**extra, "moefy_retargets": history})
    return {"out": str(out), "layers": layers, "calib_tokens": n_tokens, "params": model.num_params(),
            "ffn_active_share": ffn_active_share(model), "retargeted": True}


def ffn_active_share(model) -> float:
    """Share of a converted layer's FFN weights a token uses: shared expert plus k routed."""
    cfg = model.cfg
    width = cfg.shared_dim + cfg.n_experts * cfg.moe_inter_dim
    return (cfg.shared_dim + model.mean_k() * cfg.moe_inter_dim) / width


def summary_text(r: dict) -> str:
    """What `lightseek moefy` prints: per-layer router recall, error and k, then the totals."""
    if r.get("retargeted"):
        return _retarget_text(r)
    lines = [f"{'layer':>5}  {'recall':>6}  {'rel.err':>7}  {'k':>5}  {'MaxVio':>6}"]
    for x in r["layers"]:
        lines.append(f"{x['layer']:>5}  {x['router_recall']:>6.3f}  {x['rel_error']:>7.3f}  {x['avg_k']:>5.2f}  "
                     f"{x['max_vio']:>6.2f}")
    n = len(r["layers"])
    mean = {key: sum(x[key] for x in r["layers"]) / n for key in ("router_recall", "rel_error", "avg_k")}
    p = r["params"]
    lines.append(f"{n} layers converted on {r['calib_tokens']:,} calibration tokens: router recall "
                 f"{mean['router_recall']:.3f}, FFN output error {mean['rel_error']:.3f}, k {mean['avg_k']:.2f} "
                 f"(held-out calibration tokens); {100 * r['ffn_active_share']:.0f}% of FFN weights active; "
                 f"{p['active'] / 1e6:.1f}M of {p['total'] / 1e6:.1f}M parameters active per token -> {r['out']}")
    return "\n".join(lines)


def _retarget_text(r: dict) -> str:
    lines = [f"{'layer':>5}  {'k':>5}  {'MaxVio':>6}  {'threshold':>9}"]
    for x in r["layers"]:
        threshold = f"{x['threshold']:>9.4f}" if x.get("threshold") is not None else f"{'-':>9}"
        lines.append(f"{x['layer']:>5}  {x['avg_k']:>5.2f}  {x['max_vio']:>6.2f}  {threshold}")
    n, p = len(r["layers"]), r["params"]
    lines.append(f"{n} layers re-targeted on {r['calib_tokens']:,} calibration tokens: k "
                 f"{sum(x['avg_k'] for x in r['layers']) / n:.2f}; {100 * r['ffn_active_share']:.0f}% of FFN weights "
                 f"active; {p['active'] / 1e6:.1f}M of {p['total'] / 1e6:.1f}M parameters active per token -> {r['out']}")
    return "\n".join(lines)
