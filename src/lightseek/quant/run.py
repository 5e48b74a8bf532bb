"""`lightseek quant`: quantize a checkpoint into a new one, with calibration windows from a corpus."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

from lightseek.config import build_section, field
from lightseek.data.calib import calibration_windows
from lightseek.errors import LightseekError
from lightseek.fileio import check_new_checkpoint_dir
from lightseek.quant.config import QuantConfig


@dataclass
class QuantRunConfig:
    quant: QuantConfig = field(default_factory=QuantConfig, help="Quantization settings.")


def load_quant_config(config_path: str | Path | None = None, overrides: list[str] | None = None) -> QuantConfig:
    """The ``quant`` section of a YAML file, then dotted overrides (``--quant.group_size=32``)."""
    return build_section(QuantRunConfig, "quant", config_path, overrides)


def quantize_checkpoint(checkpoint: str | Path, cfg: QuantConfig, out: str | Path, overwrite: bool = False,
                        show_progress: bool = True) -> dict:
    """Quantize ``checkpoint`` by ``cfg`` into a new checkpoint folder ``out``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lightseek.adapters.store import base_fingerprint
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import TOKENIZER, load_model, read_checkpoint_config, resolve_checkpoint
    from lightseek.quant.apply import bits_per_weight, plan, quantize
    from lightseek.quant.checkpoint import save_quantized
    from lightseek.quant.tune import tune_grids

    src = resolve_checkpoint(checkpoint)
    meta = read_checkpoint_config(src)
    if "quantization" in meta:
        raise LightseekError(f"checkpoint {src} is already quantized; quantize its full-precision source "
                             f"({meta['quantization'].get('source', {}).get('path', '?')})")
    check_new_checkpoint_dir(Path(out), src, overwrite)
    model = load_model(src)
    tokenizer = Tokenizer.load(src)
    n_layers = len(plan(model, cfg))  # checks the whole plan before calibrating
    calib = calibration_windows(tokenizer, cfg.calib, model.cfg.max_seq_len) if cfg.needs_calibration else None
    tuning = None
    if cfg.tune_steps:  # its own windows, from the same text; and the model as it is now, to tune towards
        tuning = calibration_windows(tokenizer, replace(cfg.calib, samples=cfg.tune_samples), model.cfg.max_seq_len,
                                     batch_size=cfg.tune_batch)
        reference = copy.deepcopy(model)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} {task.fields[unit]}"), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        n_windows = sum(len(b) for b in calib) if calib else 0
        what = f"{cfg.method} ({n_windows} calibration windows)" if calib else cfg.method
        if cfg.policy == "budget":
            what += f", sensitivities on {min(cfg.fisher_samples, n_windows)} windows first"
        task = progress.add_task(f"quantizing, {what}", total=n_layers, unit="layers", note="")
        quantize(model, cfg, calib, on_layer=lambda path: progress.advance(task))
        if tuning is not None:
            task = progress.add_task(f"tuning scales and offsets ({sum(len(b) for b in tuning)} windows)",
                                     total=cfg.tune_steps, unit="steps", note="")
            model.quant_tuning = tune_grids(
                model, reference, tuning, cfg.tune_steps, cfg.tune_lr,
                on_step=lambda i, kl: progress.update(task, advance=1, note=f"KL {kl:.4f}"))
            del reference
    source = base_fingerprint(src)
    save_quantized(out, model, tokenizer_file=src / TOKENIZER, run_config=meta.get("run"), source=source)
    from lightseek.model.checkpoint import WEIGHTS

    eight = sum(info["bits"] == 8 for info in model.quant_layers.values())
    return {"out": str(out), "layers": len(model.quant_layers), "at_8_bits": eight,
            "bits_per_weight": bits_per_weight(model), "tuning": getattr(model, "quant_tuning", None),
            "size_bytes": (Path(out) / WEIGHTS).stat().st_size, "source_bytes": (src / WEIGHTS).stat().st_size}
