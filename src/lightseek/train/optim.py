"""AdamW with decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

import torch

from lightseek.errors import ConfigError
from lightseek.train.config import TrainConfig


def freeze_parameters(model: torch.nn.Module, patterns: list[str], key: str = "freeze") -> int:
    """Freeze every parameter whose name starts with, or matches (fnmatch), one of ``patterns``
    (``embed``, ``*.attn.*``); returns the number of parameters left to train. A pattern that
    matches nothing is a ConfigError naming ``key``."""
    names = [n for n, _ in model.named_parameters()]

    def hit(name: str, pattern: str) -> bool:
        return name.startswith(pattern) or fnmatchcase(name, pattern)

    for pattern in patterns:
        if not any(hit(n, pattern) for n in names):
            raise ConfigError(f"{key}: no parameter name starts with or matches {pattern!r} "
                              f"(e.g. {names[0]}, {names[-1]}; `lightseek info CKPT` lists them)")
    for n, p in model.named_parameters():
        p.requires_grad = not any(hit(n, pattern) for pattern in patterns)
    left = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if left == 0:
        raise ConfigError(f"{key}: every parameter is frozen, nothing would train")
    return left


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine down to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
