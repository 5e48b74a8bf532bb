"""Calibration text: token windows that `lightseek quant` (gptq) and `lightseek moefy` measure
activations on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from lightseek.config import field
from lightseek.errors import ConfigError, DataError


@dataclass
class CalibConfig:
    files: list[str] = field(default_factory=list, help=(
        "Calibration text: files or folders (.txt, .md, .jsonl, ...) cut into token windows; each entry "
        "gives an equal share of the tokens."))
    samples: int = field(64, help="Number of calibration windows.")
    seq_len: int = field(256, help="Tokens per calibration window (capped at the model's context).")
    text_field: str = field("text", help="Record field(s) holding the text of .jsonl/.json/.csv files.")

    def __post_init__(self) -> None:
        if self.samples < 1 or self.seq_len < 2:
            raise ConfigError(f"calib.samples must be >= 1 and calib.seq_len >= 2, got {self.samples}, {self.seq_len}")


def calibration_windows(tokenizer, cfg: CalibConfig, max_seq_len: int, batch_size: int = 8, *,
                        section: str = "quant.calib",
                        default_documents: Callable[[], Iterable] | None = None) -> list[torch.Tensor]:
    """``cfg.samples`` windows of ``cfg.seq_len`` tokens (capped at the model's context), spread
    evenly over the first tokens of the calibration text (up to four times what the windows
    need), in batches of (b, T) token ids. Each entry of ``cfg.files`` (a file, folder or
    pattern) gives an equal share of those tokens, so that every source named is calibrated on,
    not only the first when it is long. Without ``cfg.files`` the documents come from
    ``default_documents`` (an error when there is none)."""
    from lightseek.data.corpus import iter_documents

    if cfg.files:
        sources = [lambda f=f: iter_documents([f], text_field=cfg.text_field) for f in cfg.files]
    elif default_documents is not None:
        sources = [default_documents]
    else:
        raise ConfigError(f"{section}.files: calibration text is needed (--calib FILES)")
    seq_len = min(cfg.seq_len, max_seq_len)
    share = -(-4 * cfg.samples * seq_len // len(sources))
    ids: list[int] = []
    for documents in sources:
        got: list[int] = []
        for doc in documents():
            got += tokenizer.encode(doc.text) + [tokenizer.eot_id]
            if len(got) >= share:
                break
        ids += got[:share]
    if len(ids) < seq_len:
        raise DataError(f"{section}.files: {len(ids)} tokens of calibration text; one window needs {seq_len}")
    tokens = np.asarray(ids, dtype=np.int64)
    starts = np.linspace(0, len(tokens) - seq_len, num=min(cfg.samples, len(tokens) // seq_len)).astype(np.int64)
    windows = torch.from_numpy(np.stack([tokens[s:s + seq_len] for s in starts]))  # (n, T)
    return list(windows.split(batch_size))
