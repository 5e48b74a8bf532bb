"""RunConfig: everything a training run needs, as YAML-able dataclasses with help texts.

A recipe (``recipes/NAME.yaml``) names a model ``preset`` and overrides any field; dotted
command-line overrides (``--train.lr=3e-4``) come last. Unknown keys and wrong types are errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightseek.config import deep_merge, field, from_dict, load_yaml, parse_overrides
from lightseek.errors import ConfigError
from lightseek.model.config import PRESETS, ModelConfig
from lightseek.model.sampling import SamplingParams


@dataclass
class DataConfig:
    inputs: list[str] = field(default_factory=list, help=(
        "Files or folders of .txt/.md/.jsonl text to prepare (used when 'prepared' is empty)."))
    prepared: str = field("", help="A folder made by `lightseek data prepare` (token shards + tokenizer).")
    text_field: str = field("text", help="JSONL field holding the text.")
    val_fraction: float = field(0.02, help="Share of documents held out for validation.")
    max_bytes: int = field(0, help="Read at most this many bytes of text (0 = all).")

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class TokenizerConfig:
    path: str = field("", help="An existing tokenizer.json (empty = train one on the data).")
    vocab_size: int = field(4096, help="Vocabulary size when training a tokenizer.")
    train_bytes: int = field(20_000_000, help="Train the tokenizer on at most this many bytes.")

    def __post_init__(self) -> None:
        from lightseek.data.tokenizer import SPECIAL_TOKENS

        if self.vocab_size <= 256 + len(SPECIAL_TOKENS):
            raise ConfigError(f"tokenizer.vocab_size must be > {256 + len(SPECIAL_TOKENS)} (256 bytes + "
                              f"{len(SPECIAL_TOKENS)} special tokens), got {self.vocab_size}")


@dataclass
class TrainConfig:
    steps: int = field(500, help="Optimizer steps.")
    batch_size: int = field(8, help="Sequences per micro-batch per process.")
    seq_len: int = field(256, help="Tokens per training sequence.")
    grad_accum: int = field(1, help="Micro-batches accumulated per optimizer step.")
    lr: float = field(3e-3, help="Peak learning rate (AdamW).")
    min_lr_ratio: float = field(0.1, help="Final learning rate as a fraction of the peak.")
    balance_settle_steps: int = field(
        0, help="After the last step, forward passes (no weight change) over fresh training windows that let the "
                "routers' balance bias settle against the final router, with a step shrinking to 0 (0 = off).")
    warmup_steps: int = field(50, help="Linear warmup steps before the cosine decay.")
    weight_decay: float = field(0.1, help="AdamW weight decay (matrices only).")
    beta1: float = field(0.9, help="AdamW beta1.")
    beta2: float = field(0.95, help="AdamW beta2.")
    grad_clip: float = field(1.0, help="Clip the global gradient norm to this (0 = off).")
    eval_every: int = field(100, help="Validation every N steps (and at the end).")
    eval_batches: int = field(20, help="Validation batches per evaluation (0 = the whole split).")
    ckpt_every: int = field(100, help="Checkpoint every N steps (and at the end).")
    log_every: int = field(10, help="Write a metrics line every N steps.")
    seed: int = field(0, help="Seed for initialisation and for the batch order.")
    dtype: Literal["auto", "fp32", "bf16"] = field(
        "auto", help="Autocast dtype: 'auto' = bf16 on a GPU that supports it, else fp32.")
    device: str = field("auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dispatch: Literal["auto", "grouped_mm", "segments", "reference"] = field(
        "auto", help="Expert dispatch: 'auto' (best for the device), 'grouped_mm', 'segments' or 'reference'.")
    grad_checkpoint: bool = field(
        False, help="Gradient checkpointing: keep only each block's input and recompute the block in backward "
                    "(less activation memory for about a third more compute).")
    stop_after: int = field(0, help="Stop (with a checkpoint) after this step; resume later (0 = off).")
    plots: bool = field(True, help="Write PNG plots of loss curves and expert load at the end.")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "ckpt_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.eval_batches < 0 or self.stop_after < 0 or self.balance_settle_steps < 0:
            raise ConfigError("train.warmup_steps, eval_batches, stop_after and balance_settle_steps must be >= 0")


@dataclass
class RunConfig:
    preset: str = field("tiny", help=f"Model preset the 'model' section starts from ({', '.join(PRESETS)}).")
    out_dir: str = field("runs/default", help="Run folder: checkpoint, metrics.jsonl, plots.")
    model: ModelConfig = field(default_factory=ModelConfig, help="Model shape and routing.")
    data: DataConfig = field(default_factory=DataConfig, help="Training data.")
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, help="Tokenizer.")
    train: TrainConfig = field(default_factory=TrainConfig, help="Optimisation and schedule.")
    generate: SamplingParams = field(default_factory=SamplingParams, help="Sampling for `generate`.")

    def __post_init__(self) -> None:
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")


def load_run_config(config_path: str | Path | None = None, overrides: list[str] | None = None,
                    base: dict | None = None) -> RunConfig:
    """Defaults <- ``base`` <- recipe YAML <- dotted overrides, with the model preset applied
    underneath the 'model' section."""
    data = dict(base or {})
    if config_path:
        data = deep_merge(data, load_yaml(config_path))
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    name = data.get("preset", "tiny")
    if name not in PRESETS:
        raise ConfigError(f"config key 'preset': unknown preset {name!r} (known: {', '.join(PRESETS)})")
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("config key 'model' must be a section (mapping)")
    data["model"] = {**PRESETS[name], **model}
    train = data.get("train") or {}
    if isinstance(train, dict) and "seq_len" not in train:  # fit the default to the model's context
        max_len = data["model"].get("max_seq_len", ModelConfig.max_seq_len)
        if isinstance(max_len, int):
            data["train"] = {**train, "seq_len": min(TrainConfig.seq_len, max_len)}
    return from_dict(RunConfig, data)
