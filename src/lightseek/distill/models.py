"""Expert and teacher models named by one spec string, shared by the DataDistiller and
knowledge distillation.

A spec is one of

- ``CKPT``: a lightseek checkpoint (a checkpoint folder or its run folder);
- ``CKPT+ADAPTER``: that checkpoint with a LoRA adapter folded in;
- ``ADAPTER``: an adapter folder alone, on the base checkpoint it records;
- ``http(s)://HOST[:PORT][/v1]#MODEL``: any OpenAI-compatible endpoint (generation only: it
  cannot teach by logits).

Every loaded model carries a version: the sha256 of its weights (and of the adapter's files),
so a generated record or a distilled checkpoint says exactly which expert made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lightseek.errors import ConfigError
from lightseek.model.transformer import Transformer


@dataclass
class LocalModel:
    """A lightseek model loaded from a spec, with its tokenizer and provenance."""

    spec: str
    model: Transformer
    tokenizer: object  # lightseek.data.tokenizer.Tokenizer
    version: dict = field(default_factory=dict)  # {"checkpoint", "sha256", "adapter"?, "adapter_sha256"?}


def is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def split_spec(spec: str) -> tuple[str, str | None]:
    """(checkpoint, adapter or None) of a local spec; an adapter folder alone names its base."""
    from lightseek.adapters.store import META, read_adapter_meta

    spec = spec.strip()
    if not spec:
        raise ConfigError("an empty model spec (expected CKPT, CKPT+ADAPTER, ADAPTER or an http(s) URL#MODEL)")
    ckpt, plus, adapter = spec.partition("+")
    if plus:
        if not ckpt or not adapter:
            raise ConfigError(f"model spec {spec!r}: expected CKPT+ADAPTER with both parts")
        return ckpt, adapter
    folder = Path(spec)
    if (folder / META).is_file() or (folder / "adapter" / META).is_file():
        base = read_adapter_meta(spec).get("base", {}).get("path")
        if not base:
            raise ConfigError(f"model spec {spec!r}: the adapter records no base checkpoint; write CKPT+{spec}")
        return base, spec
    return spec, None


def load_local(spec: str, device: str = "cpu") -> LocalModel:
    """The model a local spec names, adapter merged, in eval mode."""
    from lightseek.adapters.lora import merge_lora
    from lightseek.adapters.store import base_fingerprint, files_sha256, load_adapter, resolve_adapter
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import TOKENIZER, load_model, resolve_checkpoint

    if is_endpoint(spec):
        raise ConfigError(f"{spec}: an OpenAI-compatible endpoint only generates text; this needs a local "
                          f"checkpoint (CKPT, CKPT+ADAPTER or ADAPTER)")
    ckpt, adapter = split_spec(spec)
    ckpt_dir = resolve_checkpoint(ckpt)
    model = load_model(ckpt_dir, device)
    fingerprint = base_fingerprint(ckpt_dir)
    version = {"checkpoint": str(ckpt_dir), "sha256": fingerprint["sha256"]}
    if adapter:
        info = load_adapter(model, adapter, fingerprint["sha256"])
        merge_lora(model, info.name)
        folder = resolve_adapter(adapter)
        version.update(adapter=str(folder), adapter_sha256=files_sha256(sorted(folder.glob("adapter_*"))))
    model.eval()
    return LocalModel(spec, model, Tokenizer.load(ckpt_dir / TOKENIZER), version)


def check_same_tokenizer(models: dict[str, LocalModel], reference_sha256: str, reference: str) -> None:
    """Distillation compares distributions token by token: every model must share one tokenizer."""
    for name, m in models.items():
        if m.tokenizer.sha256 != reference_sha256:
            raise ConfigError(f"teacher {name} ({m.spec}) uses another tokenizer than {reference}; "
                              f"teacher and student must share one tokenizer")
