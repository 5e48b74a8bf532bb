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
    def for_model(cls, model, batch_size: int, max_len: int | None = None, dtype=None) -> KVCache:
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


class SlotCache:
    """Keys and values for continuous batching: ``n_slots`` independent sequences, each in its
    own slot at its own length. A server assigns a slot per request and frees it when done.

    Before a forward pass, `bind` names the slots of the batch rows (all rows advance by the same
    number of tokens T, each from its own slot's length). The model then reads per-row
    ``positions`` (for RoPE) and ``attn_mask`` (row b's query t sees keys 0 .. length_b + t),
    and `advance` moves the bound slots on.
    """

    def __init__(self, n_layers: int, n_slots: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_slots, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.n_slots, self.max_len, self.device = n_slots, max_len, torch.device(device)
        self.lengths = [0] * n_slots
        self._slots: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.attn_mask: torch.Tensor | None = None
        self._read: slice | torch.Tensor | None = None  # how the bound rows read their slots

    @classmethod
    def for_model(cls, model, n_slots: int, max_len: int | None = None, dtype=None) -> SlotCache:
        cfg = model.cfg
        p = next(model.parameters())
        return cls(cfg.n_layers, n_slots, cfg.n_kv_heads, cfg.head_dim, max_len or cfg.max_seq_len,
                   dtype or p.dtype, p.device)

    @staticmethod
    def bytes_per_token(model, dtype=None) -> int:
        """Cache bytes one token of one sequence takes: keys and values of every layer. ``model``
        may be a ModelConfig (before loading weights), with the cache in fp32 unless ``dtype``."""
        cfg = getattr(model, "cfg", model)
        if dtype is None:
            dtype = next(model.parameters()).dtype if hasattr(model, "parameters") else torch.float32
        size = torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * size

    @classmethod
    def slots_within(cls, model, budget_bytes: float, max_len: int, dtype=None) -> int:
        """How many slots of ``max_len`` tokens fit in ``budget_bytes`` (``model``: a model or its
        ModelConfig); a ConfigError naming the budget one slot needs when not even one fits."""
        from lightseek.errors import ConfigError

        per_slot = cls.bytes_per_token(model, dtype) * max_len
        if budget_bytes < per_slot:
            raise ConfigError(f"a KV-cache budget of {budget_bytes / 2**30:.3g} GiB holds no sequence of {max_len} "
                              f"tokens: one needs {per_slot / 2**30:.3g} GiB (raise the budget or lower the "
                              "context length)")
        return int(budget_bytes // per_slot)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def copy_prefix(self, src: int, dst: int, start: int, end: int) -> None:
        """Positions ``start:end`` of slot ``src`` into slot ``dst``, which then holds ``end``
        tokens (the two sequences share their first ``end`` tokens)."""
        for layer in range(len(self.k)):
            self.k[layer][dst, :, start:end] = self.k[layer][src, :, start:end]
            self.v[layer][dst, :, start:end] = self.v[layer][src, :, start:end]
        self.lengths[dst] = end

    def reset(self, slot: int) -> None:
        """Free a slot: its old keys are never read again (they are masked by its length)."""
        self.lengths[slot] = 0

    def bind(self, slots: list[int], n_tokens: int) -> None:
        """The next forward pass runs ``n_tokens`` new tokens for each of ``slots`` (batch rows)."""
        starts = [self.lengths[s] for s in slots]
        if max(starts) + n_tokens > self.max_len:
            raise ValueError(f"slot cache holds {self.max_len} tokens; {max(starts) + n_tokens} requested")
        self._slots = torch.tensor(slots, device=self.device)
        # rows bound to consecutive slots read the cache through a view instead of a gathered copy
        consecutive = slots == list(range(slots[0], slots[0] + len(slots)))
        self._read = slice(slots[0], slots[0] + len(slots)) if consecutive else self._slots
        start_B = torch.tensor(starts, device=self.device)
        self.positions = start_B[:, None] + torch.arange(n_tokens, device=self.device)   # (B, T)
        span = max(starts) + n_tokens
        keys = torch.arange(span, device=self.device)
        self.attn_mask = (keys[None, None, :] <= self.positions[:, :, None])[:, None]    # (B, 1, T, S)
        self._span, self._bound = span, (slots, n_tokens)

    def update(self, layer: int, k_BHTd: torch.Tensor, v_BHTd: torch.Tensor, start_pos: int = 0):
        rows = self._slots[:, None]
        pos = self.positions
        # write row b's T new keys at its own positions, then read each row's slot prefix
        self.k[layer][rows, :, pos] = k_BHTd.transpose(1, 2)                              # (B, T, H, d)
        self.v[layer][rows, :, pos] = v_BHTd.transpose(1, 2)
        return self.k[layer][self._read, :, :self._span], self.v[layer][self._read, :, :self._span]

    def bound_slots(self) -> tuple[list[int], int] | None:
        """(slots, tokens per row) of the pass `bind` prepared, None when nothing is bound."""
        return self._bound if self._slots is not None else None

    def advance(self, n: int) -> None:
        slots, _ = self._bound
        for s in slots:
            self.lengths[s] += n
        self._slots = self._read = self.positions = self.attn_mask = None
