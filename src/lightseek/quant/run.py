"""`lightseek quant`: quantize a checkpoint into a new one, with calibration windows from a corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightseek.config import deep_merge, field, from_dict, load_yaml, parse_overrides
from lightseek.errors import ConfigError, DataError, LightseekError
from lightseek.quant.config import CalibConfig, QuantConfig


@dataclass
class QuantRunConfig:
    quant: QuantConfig = field(default_factory=QuantConfig, help="Quantization settings.")


def load_quant_config(config_path: str | Path | None = None, overrides: list[str] | None = None) -> QuantConfig:
    """The ``quant`` section of a YAML file, then dotted overrides (``--quant.group_size=32``)."""
    data: dict = {}
    if config_path:
        data = {"quant": load_yaml(config_path).get("quant") or {}}
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return from_dict(QuantRunConfig, data).quant


def calibration_windows(tokenizer, cfg: CalibConfig, max_seq_len: int, batch_size: int = 8) -> list[torch.Tensor]:
    """``cfg.samples`` windows of ``cfg.seq_len`` tokens (capped at the model's context), spread
    evenly over the first tokens of the corpus (up to four times what the windows need), in
    batches of (b, T) token ids."""
    from lightseek.data.corpus import iter_documents

    if not cfg.files:
        raise ConfigError("quant.calib.files: the gptq method needs calibration text (--calib FILES)")
    seq_len = min(cfg.seq_len, max_seq_len)
    want = 4 * cfg.samples * seq_len
    ids: list[int] = []
    for doc in iter_documents(cfg.files, text_field=cfg.text_field):
        ids += tokenizer.encode(doc.text) + [tokenizer.eot_id]
        if len(ids) >= want:
            break
    if len(ids) < seq_len:
        raise DataError(f"quant.calib.files: {len(ids)} tokens of calibration text; one window needs {seq_len}")
    tokens = np.asarray(ids, dtype=np.int64)
    starts = np.linspace(0, len(tokens) - seq_len, num=min(cfg.samples, len(tokens) // seq_len)).astype(np.int64)
    windows = torch.from_numpy(np.stack([tokens[s:s + seq_len] for s in starts]))  # (n, T)
    return list(windows.split(batch_size))


def quantize_checkpoint(checkpoint: str | Path, cfg: QuantConfig, out: str | Path, overwrite: bool = False,
                        show_progress: bool = True) -> dict:
    """Quantize ``checkpoint`` by ``cfg`` into a new checkpoint folder ``out``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lightseek.adapters.store import base_fingerprint
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import TOKENIZER, load_model, read_checkpoint_config, resolve_checkpoint
    from lightseek.quant.apply import bits_per_weight, plan, quantize
    from lightseek.quant.checkpoint import save_quantized

    src = resolve_checkpoint(checkpoint)
    meta = read_checkpoint_config(src)
    if "quantization" in meta:
        raise LightseekError(f"checkpoint {src} is already quantized; quantize its full-precision source "
                             f"({meta['quantization'].get('source', {}).get('path', '?')})")
    _check_out(Path(out), src, overwrite)
    model = load_model(src)
    tokenizer = Tokenizer.load(src)
    n_layers = len(plan(model, cfg))  # checks the whole plan before calibrating
    calib = calibration_windows(tokenizer, cfg.calib, model.cfg.max_seq_len) if cfg.method == "gptq" else None
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} layers"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        what = f"{cfg.method} ({sum(len(b) for b in calib)} calibration windows)" if calib else cfg.method
        task = progress.add_task(f"quantizing, {what}", total=n_layers)
        quantize(model, cfg, calib, on_layer=lambda path: progress.advance(task))
    source = base_fingerprint(src)
    save_quantized(out, model, tokenizer_file=src / TOKENIZER, run_config=meta.get("run"), source=source)
    from lightseek.model.checkpoint import WEIGHTS

    return {"out": str(out), "layers": len(model.quant_layers), "bits_per_weight": bits_per_weight(model),
            "size_bytes": (Path(out) / WEIGHTS).stat().st_size, "source_bytes": (src / WEIGHTS).stat().st_size}


def _check_out(out: Path, src: Path, overwrite: bool) -> None:
    out, keep = out.resolve(), src.resolve()
    if out == keep or out in keep.parents or keep in out.parents:
        raise LightseekError(f"--out {out} overlaps the source checkpoint {src}: choose a new folder")
    is_checkpoint = (out / "config.json").is_file()
    if out.exists() and not (overwrite and is_checkpoint):
        raise LightseekError(f"--out {out} exists{'' if is_checkpoint else ' and is not a checkpoint'}; choose a new "
                             f"folder{' (or pass --overwrite to replace that checkpoint)' if is_checkpoint else ''}")
