"""Sentence features from a lightseek checkpoint's own hidden states, as a scikit-learn transformer.

`ModelFeatures(model, layer)` runs a checkpoint (a folder, or a fetched model's name such as
``smollm2-135m-instruct``) over each text and takes the mean of block ``layer``'s output over the
text's tokens. The blocks after that one and the output head never run: the forward stops at
the block. Features are cached on disk per (weights, layer, length limit, text), so each text is
embedded once however many classifiers are fit on it. Pickling keeps the checkpoint's name, not
its weights, so a saved classifier needs the same checkpoint when it is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from sklearn.base import BaseEstimator, TransformerMixin

from lightseek.errors import ConfigError
from lightseek.progress import progress


class _Stop(Exception):
    """Raised by the hook on the chosen block: nothing after it needs to run."""


class ModelFeatures(TransformerMixin, BaseEstimator):
    """Mean-pooled hidden states of block ``layer`` (negative: from the end) of checkpoint ``model``.

    ``cache``: a folder for the features, "" for $LIGHTSEEK_CACHE/features, "off" for none."""

    def __init__(self, model: str, layer: int = -1, batch_size: int = 16, max_length: int = 256,
                 cache: str = "") -> None:
        self.model = model
        self.layer = layer
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache = cache

    def fit(self, texts, y=None):
        self._load()
        return self

    def transform(self, texts):
        import numpy as np

        texts = list(texts)
        state = self._load()
        out = np.zeros((len(texts), state["dim"]), dtype=np.float32)
        todo = []
        for i, text in enumerate(texts):
            hit = self._cached(state, text)
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        if todo:
            self._embed(state, texts, todo, out)
        return out

    # --- internals --------------------------------------------------------------------------

    def _embed(self, state: dict, texts: list[str], todo: list[int], out) -> None:
        import torch

        model, tokenizer, block = state["model"], state["tokenizer"], state["block"]
        limit = min(self.max_length, model.cfg.max_seq_len)
        ids = {i: tokenizer.encode(texts[i])[:limit] or [0] for i in todo}  # an empty text: one token
        order = sorted(todo, key=lambda i: len(ids[i]))  # similar lengths together: little padding
        captured = {}

        def hook(_module, _inputs, output):
            captured["h"] = output
            raise _Stop

        handle = block.register_forward_hook(hook)
        try:
            with torch.inference_mode(), progress(len(order), f"features from {Path(self.model).name}") as step:
                for start in range(0, len(order), self.batch_size):
                    batch = order[start:start + self.batch_size]
                    width = len(ids[batch[-1]])
                    idx_BT = torch.zeros(len(batch), width, dtype=torch.long)
                    mask_BT = torch.zeros(len(batch), width, dtype=torch.bool)
                    for row, i in enumerate(batch):
                        idx_BT[row, :len(ids[i])] = torch.tensor(ids[i])
                        mask_BT[row, :len(ids[i])] = True
                    try:  # right padding: causal attention keeps it out of the real tokens' states
                        model(idx_BT, token_mask_BT=mask_BT)
                    except _Stop:
                        pass
                    m = mask_BT.unsqueeze(-1).float()
                    mean_BD = (captured.pop("h").float() * m).sum(1) / m.sum(1)
                    for row, i in enumerate(batch):
                        out[i] = mean_BD[row].numpy()
                        self._store(state, texts[i], out[i])
                    step(len(batch))
        finally:
            handle.remove()

    def _folder(self, state: dict) -> Path | None:
        if self.cache == "off":
            return None
        from lightseek.known_models import cache_dir

        root = Path(self.cache).expanduser() if self.cache else cache_dir() / "features"
        return root / f"{state['fingerprint'][:16]}-L{state['layer']}-T{self.max_length}"

    def _path(self, state: dict, text: str) -> Path | None:
        folder = self._folder(state)
        if folder is None:
            return None
        key = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
        return folder / key[:2] / f"{key[2:]}.npy"

    def _cached(self, state: dict, text: str):
        import numpy as np

        path = self._path(state, text)
        if path is None or not path.is_file():
            return None
        try:
            vec = np.load(path)
        except (OSError, ValueError):  # a damaged entry is computed again
            return None
        return vec if vec.shape == (state["dim"],) else None

    def _store(self, state: dict, text: str, vec) -> None:
        import numpy as np

        path = self._path(state, text)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as f:
            np.save(f, vec)
        os.replace(tmp, path)  # readers see a whole file or none

    def _load(self) -> dict:
        key = (self.model, self.layer)  # set_params may change either after a fit
        if getattr(self, "_state", None) is None or self._state["key"] != key:
            self._state = {**load_feature_model(self.model, self.layer), "key": key}
        return self._state

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_state", None)  # the weights stay in their checkpoint
        return state


FORMAT = "mean-pooled block output v1"  # part of the cache key: a change of pooling is a new key


def load_feature_model(name: str, layer: int) -> dict:
    """The checkpoint ``name`` (folder or fetched model) in eval mode, its tokenizer, the block
    whose output is pooled, and a fingerprint of everything the features depend on (weights,
    config, tokenizer, the pooling); clear errors for what is wrong."""
    return dict(_feature_model(name, layer))


@functools.lru_cache(maxsize=2)  # classifiers fit one after another on the same model share it
def load_checkpoint(name: str, key: str) -> tuple:
    """(folder, model in eval mode, tokenizer) of checkpoint ``name`` (a folder or a fetched
    model), loaded once; a ConfigError naming config key ``key`` when it cannot be."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.errors import CheckpointError
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    try:
        path = resolve_checkpoint(name)
        return path, load_model(path).eval(), Tokenizer.load(path)
    except CheckpointError as e:
        raise ConfigError(f"{key} {name}: {e}") from None


@functools.lru_cache(maxsize=2)
def _feature_model(name: str, layer: int) -> tuple:
    from lightseek.fileio import file_sha256
    from lightseek.model.checkpoint import CONFIG, TOKENIZER, WEIGHTS

    path, model, tokenizer = load_checkpoint(name, "domains.model")
    n = len(model.layers)
    index = layer + n if layer < 0 else layer
    if not 0 <= index < n:
        raise ConfigError(f"domains.model_layer {layer}: {name} has {n} blocks (0..{n - 1}, or -1..-{n})")
    parts = [FORMAT, file_sha256(path / WEIGHTS), *(file_sha256(path / f) for f in (CONFIG, TOKENIZER)
                                                    if (path / f).is_file())]
    fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return tuple({"model": model, "tokenizer": tokenizer, "block": model.layers[index], "layer": index,
                  "dim": model.cfg.dim, "fingerprint": fingerprint}.items())
