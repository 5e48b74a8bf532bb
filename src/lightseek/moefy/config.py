"""MoefyConfig: how `lightseek moefy` turns a dense checkpoint into a routed MoE checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightseek.config import build_section, field
from lightseek.data.calib import CalibConfig
from lightseek.errors import ConfigError

SplitMethod = Literal["coactivation", "weights", "random"]


@dataclass
class MoefyConfig:
    experts: int = field(16, help="Routed experts per FFN; the routed neurons split into equal parts.")
    shared_dim: int = field(0, help=(
        "Neurons of the always-on shared expert (those that contribute for most tokens); 0 = none. "
        "FFN width minus shared_dim must divide by experts."))
    split: SplitMethod = field("coactivation", help=(
        "How neurons group into experts: coactivation (balanced k-means of neurons by how their "
        "contributions rise and fall together on calibration text), weights (by similarity of their "
        "gate/up weight rows; no activations needed) or random (the baseline)."))
    router: Literal["dynamic", "topk"] = field("dynamic", help=(
        "dynamic: per token, the fewest experts whose predicted share of the FFN output reaches a "
        "threshold calibrated to target_k on average; topk: a fixed top_k experts per token."))
    target_k: float = field(8.0, help="dynamic: average routed experts per token (each layer is calibrated to it).")
    top_k: int = field(0, help="topk: experts per token (0 = target_k rounded).")
    min_k: int = field(1, help="dynamic: fewest experts a token may use.")
    max_k: int = field(0, help="dynamic: most experts a token may use (0 = all of them).")
    dense_layers: int = field(0, help="The first n layers keep their dense FFN.")
    router_steps: int = field(300, help="Optimizer steps fitting each layer's router (full batch, Adam).")
    router_lr: float = field(0.01, help="Learning rate of the router fit.")
    cluster_iters: int = field(25, help="coactivation / weights: rounds of balanced k-means.")
    cluster_tokens: int = field(4096, help="coactivation: calibration tokens that describe each neuron.")
    seed: int = field(0, help="Seed of the clustering start and the random split.")
    calib: CalibConfig = field(default_factory=lambda: CalibConfig(samples=64, seq_len=256), help=(
        "Calibration text (default without files: this Python's standard-library documentation)."))

    def __post_init__(self) -> None:
        if self.experts < 2:
            raise ConfigError(f"moefy.experts must be >= 2, got {self.experts}")
        if self.shared_dim < 0 or self.dense_layers < 0:
            raise ConfigError("moefy.shared_dim and moefy.dense_layers must be >= 0")
        if self.min_k < 1 or self.top_k < 0 or self.max_k < 0:
            raise ConfigError("moefy.min_k must be >= 1, moefy.top_k and moefy.max_k >= 0")
        if self.router_steps < 0 or self.router_lr <= 0 or self.cluster_iters < 1 or self.cluster_tokens < 16:
            raise ConfigError("moefy.router_steps >= 0, router_lr > 0, cluster_iters >= 1, cluster_tokens >= 16")

    def resolved_k(self) -> tuple[int, int, int]:
        """(top_k, min_k, max_k) with their defaults filled in, checked against ``experts``."""
        top_k = self.top_k or max(1, round(self.target_k))
        max_k = self.max_k or self.experts
        if self.router == "topk" and not 1 <= top_k <= self.experts:
            raise ConfigError(f"moefy.top_k ({top_k}) must be in [1, experts = {self.experts}]")
        if self.router == "dynamic" and not self.min_k <= self.target_k <= max_k <= self.experts:
            raise ConfigError(f"moefy needs min_k ({self.min_k}) <= target_k ({self.target_k}) <= max_k ({max_k}) "
                              f"<= experts ({self.experts})")
        return top_k, self.min_k, max_k


@dataclass
class MoefyRunConfig:
    moefy: MoefyConfig = field(default_factory=MoefyConfig, help="Dense-to-MoE conversion settings.")


def load_moefy_config(config_path: str | Path | None = None, overrides: list[str] | None = None) -> MoefyConfig:
    """The ``moefy`` section of a YAML file, then dotted overrides (``--moefy.experts=32``)."""
    return build_section(MoefyRunConfig, "moefy", config_path, overrides)
