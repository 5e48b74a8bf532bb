"""SamplingParams: how to pick tokens during generation (also the `generate` config section)."""

from __future__ import annotations

from dataclasses import dataclass

from lightseek.config import field
from lightseek.errors import ConfigError


@dataclass
class SamplingParams:
    max_new_tokens: int = field(128, help="Most tokens to generate.")
    temperature: float = field(0.8, help="Softmax temperature; 0 = greedy.")
    top_k: int = field(0, help="Sample among the k most likely tokens (0 = off).")
    top_p: float = field(0.95, help="Nucleus sampling: smallest set with this much probability (1 = off).")
    seed: int | None = field(None, help="Seed for sampling (same seed, same output).")
    stop: list[str] = field(default_factory=list, help="Stop strings: generation ends before them.")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"generate.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"generate.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"generate.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"generate.top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ConfigError("generate.stop: stop strings must be non-empty")
