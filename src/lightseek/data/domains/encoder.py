"""Sentence embeddings from a local Hugging Face encoder, as a scikit-learn transformer.

`EncoderFeatures(path)` loads ``AutoTokenizer`` and ``AutoModel`` from a local folder only
(``local_files_only=True``: nothing is ever downloaded) and turns each text into the mean of its
last hidden states over real (non-padding) tokens. Pickling keeps the path, not the weights,
so a saved classifier needs the same encoder folder when it is loaded.
"""

from __future__ import annotations

from pathlib import Path

from sklearn.base import BaseEstimator, TransformerMixin

from lightseek.errors import ConfigError
from lightseek.progress import progress


class EncoderFeatures(TransformerMixin, BaseEstimator):
    """Mean-pooled embeddings of texts from the encoder in folder ``path``."""

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 256) -> None:
        self.path = path
        self.batch_size = batch_size
        self.max_length = max_length

    def fit(self, texts, y=None):
        self._load()
        return self

    def transform(self, texts):
        import numpy as np
        import torch

        tokenizer, model = self._load()
        texts = list(texts)
        out = []
        with torch.no_grad(), progress(len(texts), f"embedding with {Path(self.path).name}") as step:
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
                hidden_BTD = model(**batch).last_hidden_state  # (B, T, D)
                mask_BT1 = batch["attention_mask"].unsqueeze(-1).to(hidden_BTD.dtype)  # (B, T, 1)
                mean_BD = (hidden_BTD * mask_BT1).sum(1) / mask_BT1.sum(1).clamp(min=1.0)  # (B, D)
                out.append(mean_BD.float().numpy())
                step(len(out[-1]))
        if not out:
            return np.zeros((0, model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out)

    def _load(self):
        if getattr(self, "_loaded", None) is None:
            self._loaded = load_encoder(self.path)
        return self._loaded

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_loaded", None)  # the weights stay in their folder
        return state


def load_encoder(path: str):
    """(tokenizer, model in eval mode) from a local folder; a clear error when it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"--encoder {path}: no such folder (a local Hugging Face encoder is expected)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--encoder {path}: missing config.json (not a Hugging Face model folder)")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise ConfigError("the --encoder option needs transformers: pip install transformers") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--encoder {path}: cannot load the encoder ({first})") from None
    return tokenizer, model.eval()
