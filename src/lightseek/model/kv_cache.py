"""Pre-allocated key/value cache for incremental decoding (one tensor pair per layer)."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values for ``batch_size`` sequences up to ``max_len`` tokens.

    ``update`` writes the new keys/values of one layer at ``start_pos`` and returns the keys and
    values of the whole prefix; the model calls ``advance`` once per forward pass.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0  # tokens already cached

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, dtype=None) -> "KVCache":
        cfg = model.cfg
        p = next(model.parameters())
        return cls(cfg.n_layers, batch_size, cfg.n_kv_heads, cfg.head_dim,
                   max_len or cfg.max_seq_len, dtype or p.dtype, p.device)

    def update(self, layer: int, k_BHTd: torch.Tensor, v_BHTd: torch.Tensor, start_pos: int):
        end = start_pos + k_BHTd.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} requested")
        self.k[layer][:, :, start_pos:end] = k_BHTd
        self.v[layer][:, :, start_pos:end] = v_BHTd
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
