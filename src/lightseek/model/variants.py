"""How the model runs variants of its own weights per sequence: the interface that adapters
(`lightseek.adapters`) and quantization (`lightseek.quant`) plug into, defined by the model so
that the model never imports them.

A `Selection` says which variant (an adapter's name, or None for the model's own weights) each
sequence of the next forward passes uses; every adapted module of a model shares one. Modules
with an optional per-variant update ask it through two small protocols:

  `LinearUpdate`   ``has(name)`` and ``delta(name, x)``: an additive update of a linear map's
                   output (the router's gate logits);
  `ExpertWeights`  ``has(name)`` and ``weights(moe, name)``: the routed experts' stacked
                   (w1, w3, w2) for one variant, ready for the dispatch kernel.

`apply_updates` adds a `LinearUpdate`'s deltas to the rows each variant owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from lightseek.errors import ConfigError


class Selection:
    """Which variant each sequence of the next forward passes uses. ``groups`` is a list of
    (variant name or None for the model's own weights, the batch rows using it or None for all)."""

    def __init__(self) -> None:
        self.groups: list[tuple[str | None, torch.Tensor | None]] = [(None, None)]
        self.rows: int | None = None  # batch size a per-sequence choice was made for

    def check(self, batch_size: int) -> None:
        if self.rows is not None and self.rows != batch_size:
            raise ConfigError(f"use_adapters: {self.rows} adapter choices for a batch of {batch_size} sequences")

    @property
    def single(self) -> str | None:
        """The variant every row uses, or None (the model's own weights, or a mixed batch)."""
        return self.groups[0][0] if len(self.groups) == 1 else None

    @property
    def mixed(self) -> bool:
        return len(self.groups) > 1


class LinearUpdate(Protocol):
    def has(self, name: str) -> bool: ...

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor: ...


class ExpertWeights(Protocol):
    def has(self, name: str) -> bool: ...

    def weights(self, moe, name: str | None) -> Sequence[torch.Tensor]: ...


def token_rows(rows: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Flattened (b * T + t) token indices of batch rows ``rows``."""
    return (rows[:, None] * seq_len + torch.arange(seq_len, device=rows.device)).reshape(-1)


def apply_updates(y: torch.Tensor, x: torch.Tensor, groups, update: LinearUpdate,
                  seq_len: int | None = None) -> torch.Tensor:
    """``y`` plus ``update.delta(name, x_rows)`` for every group of the selection whose variant
    the update ``has``: on all rows, or on the group's rows only (token rows of a flattened
    (B * T, ...) input when ``seq_len`` is given). The model's own group adds nothing."""
    for name, rows in groups:
        if name is None or not update.has(name):
            continue
        if rows is None:
            y = y + update.delta(name, x)
        else:
            idx = rows if seq_len is None else token_rows(rows, seq_len)
            y = y.index_add(0, idx, update.delta(name, x.index_select(0, idx)).to(y.dtype))
    return y
