"""Adapter folders on disk, in the PEFT layout plus lightseek's own metadata::

    adapter_config.json         PEFT LoraConfig fields (peft_type, r, lora_alpha, target_modules, ...)
    adapter_model.safetensors   the factors, keys ``base_model.model.<module>.lora_A.weight`` etc.
    lightseek_adapter.json      name, domain, base checkpoint (path, sha256 of its weights, model
                                config), training data (files, sha256, example counts, split),
                                the lightseek LoRA config, and metrics
    train_state.pt              optimizer state and step (training runs only; for --resume)

A training run keeps its adapter in ``<run dir>/adapter``; every function here accepts either.
Folders are written atomically. Loading checks that the adapter was made for the base model it
is put on and says exactly what differs when it was not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from lightseek.adapters.lora import LoraConfig, adapter_state, apply_lora, check_name, load_adapter_state
from lightseek.config import from_dict, to_dict
from lightseek.errors import CheckpointError, LightseekError
from lightseek.fileio import file_sha256, resolve_folder, write_dir_atomic, write_json_atomic
from lightseek.model.checkpoint import TRAIN_STATE, WEIGHTS, read_tensors, read_train_state, resolve_checkpoint
from lightseek.model.transformer import Transformer

PEFT_CONFIG, PEFT_WEIGHTS, META = "adapter_config.json", "adapter_model.safetensors", "lightseek_adapter.json"
# lightseek target -> module names, for PEFT's target_modules field
TARGET_MODULES = {"attn": ["wq", "wk", "wv", "wo"], "experts": ["w1_EDH", "w3_EDH", "w2_EHD"],
                  "shared": ["shared.w1", "shared.w3", "shared.w2"], "dense": ["w1", "w3", "w2"],
                  "router": ["router"], "embed": ["embed"]}


def base_fingerprint(base: str | Path) -> dict:
    """What identifies a base checkpoint: its folder and the sha256 of its weights file."""
    path = resolve_checkpoint(base)
    return {"path": str(path.resolve()), "sha256": file_sha256(path / WEIGHTS)}


def files_sha256(files: list[str | Path]) -> str:
    """One sha256 over the given files' paths and contents, in order."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def save_adapter(path: str | Path, model: Transformer, name: str, cfg: LoraConfig, meta: dict,
                 train_state: dict | None = None) -> Path:
    """Write adapter ``name`` of ``model`` (its factors and routing state) as a folder."""
    tensors = adapter_state(model, name)
    modules = sorted({m for t in cfg.targets for m in TARGET_MODULES[t]})
    peft = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank, "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout, "target_modules": modules, "bias": "none", "fan_in_fan_out": False,
            "base_model_name_or_path": meta.get("base", {}).get("path", ""), "inference_mode": True,
            "rank_pattern": {m: cfg.rank_for(t) for t in ("experts", "embed") if t in cfg.targets
                             for m in TARGET_MODULES[t]}}
    full_meta = {"format": "lightseek-lora", "name": name, "lora": to_dict(cfg),
                 "trainable_parameters": sum(t.numel() for k, t in tensors.items() if ".lora_" in k), **meta}

    def fill(tmp: Path) -> None:
        write_json_atomic(tmp / PEFT_CONFIG, peft)
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        write_json_atomic(tmp / META, full_meta)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)

    return write_dir_atomic(path, fill)


def resolve_adapter(path: str | Path) -> Path:
    """An adapter folder, or a run folder holding one in ``adapter/``."""
    return resolve_folder(path, "adapter", "adapter", (PEFT_CONFIG, PEFT_WEIGHTS, META),
                          " (not a lightseek adapter folder)")


def read_adapter_meta(path: str | Path) -> dict:
    path = resolve_adapter(path)
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"adapter {path}: {META} is corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "lightseek-lora" or "lora" not in meta:
        raise CheckpointError(f"adapter {path}: {META} is not a lightseek adapter description")
    return meta


@dataclass
class AdapterInfo:
    path: Path
    name: str
    meta: dict


def load_adapter(model: Transformer, path: str | Path, base_sha256: str | None, name: str | None = None,
                 allow_other_base: bool = False) -> AdapterInfo:
    """Attach the adapter in ``path`` to ``model`` under ``name`` (default: its own name).

    ``base_sha256`` is the sha256 of the weights ``model`` was loaded from: an adapter trained on
    other weights is refused (unless ``allow_other_base``), and one made for another model shape
    always is, with a message saying which base it needs."""
    path = resolve_adapter(path)
    meta = read_adapter_meta(path)
    name = check_name(name or meta["name"])
    base = meta.get("base", {})
    if base.get("model") and base["model"] != model.cfg.to_dict():
        differ = sorted(k for k in set(base["model"]) | set(model.cfg.to_dict())
                        if base["model"].get(k) != model.cfg.to_dict().get(k))
        raise CheckpointError(f"adapter {path} was trained on a different model ({base.get('path', '?')}); "
                              f"this base differs in {', '.join(differ)}")
    # a quantized checkpoint records the weights it was made from: adapters trained on those apply
    source = getattr(model, "quant_source", None) or {}
    accepted = [sha for sha in (base_sha256, source.get("sha256")) if sha]
    if base_sha256 is not None and base.get("sha256") not in accepted and not allow_other_base:
        if source.get("sha256"):
            raise CheckpointError(f"adapter {path} was trained on base weights sha256 {str(base.get('sha256'))[:12]}… "
                                  f"({base.get('path', '?')}), but this quantized checkpoint was made from "
                                  f"{source['sha256'][:12]}… ({source.get('path', '?')}); quantize the adapter's "
                                  f"own base (or pass allow_other_base to force it)")
        raise CheckpointError(f"adapter {path} was trained on base weights sha256 {str(base.get('sha256'))[:12]}… "
                              f"({base.get('path', '?')}), but these are {base_sha256[:12]}…; load it on its "
                              f"own base (or pass allow_other_base to force it)")
    try:
        cfg = from_dict(LoraConfig, meta["lora"], prefix="lora.")
    except LightseekError as e:
        raise CheckpointError(f"adapter {path}: {META}: {e}") from None
    tensors = _read_tensors(path, model)
    apply_lora(model, cfg, name)
    try:
        load_adapter_state(model, name, tensors, str(path))
    except CheckpointError:
        from lightseek.adapters.lora import remove_adapter

        remove_adapter(model, name)
        raise
    for p in model.parameters():
        p.requires_grad = False
    return AdapterInfo(path, name, meta)


def _read_tensors(path: Path, model: Transformer) -> dict[str, torch.Tensor]:
    return read_tensors(path / PEFT_WEIGHTS, f"adapter {path}", next(model.parameters()).device)


def load_adapter_state_file(model: Transformer, name: str, path: str | Path) -> None:
    """Load the tensors of adapter folder ``path`` into adapter ``name``, already attached."""
    path = resolve_adapter(path)
    load_adapter_state(model, name, _read_tensors(path, model), str(path))


def load_train_state(path: str | Path) -> dict:
    path = resolve_adapter(path)
    return read_train_state(path, f"adapter {path}", "training run")


def list_adapters(root: str | Path) -> list[AdapterInfo]:
    """Every adapter folder under ``root`` (recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such folder")
    found = []
    for cfg_file in sorted(root.rglob(PEFT_CONFIG)):
        try:
            meta = read_adapter_meta(cfg_file.parent)
        except CheckpointError:
            continue  # a PEFT folder of another tool, or a damaged one: not listed
        found.append(AdapterInfo(cfg_file.parent, meta.get("name", cfg_file.parent.name), meta))
    return found
