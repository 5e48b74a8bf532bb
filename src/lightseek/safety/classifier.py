"""The learned stages of the safety cascade, as one class over two kinds of features:

- ``linear``: word (1-2) and character (2-4) n-gram TF-IDF, in any language, and a logistic
  regression per category plus one for "harmful at all" (the baseline; well under a millisecond
  per text);
- ``model``: the mean of a real model's hidden states at one layer (`classify.features`, cached
  per text) and the same heads: the second stage, asked only about texts the first is unsure of.

A category's score is its head's probability; when the "harmful" head is sure and no category is,
the likeliest category takes the harmful head's score, so that a text that is plainly harmful but
of an unclear kind is still caught. Saved with pickle beside a JSON card (stage, categories,
training sources and counts); the model stage keeps the checkpoint's name, not its weights.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from lightseek.errors import ConfigError
from lightseek.fileio import atomic_write_text, write_bytes_atomic
from lightseek.safety.policy import CATEGORIES

ANY = "any"


class SafetyClassifier:
    def __init__(self, kind: str = "linear", model: str | None = None, layer: int = 15, C: float = 4.0,  # noqa: N803
                 max_features: int = 300_000, char_ngrams: tuple[int, int] = (2, 4),
                 word_ngrams: tuple[int, int] = (1, 2)):
        if kind not in ("linear", "model"):
            raise ConfigError(f"safety classifier kind {kind!r}: linear or model")
        if kind == "model" and not model:
            raise ConfigError("the model stage needs a checkpoint (--model smollm2-135m-instruct)")
        self.kind, self.model, self.layer, self.C, self.max_features = kind, model, layer, C, max_features
        self.char_ngrams, self.word_ngrams = char_ngrams, word_ngrams  # the linear stage's n-gram ranges
        self.heads: dict[str, object] = {}
        self.features = None
        self.card: dict = {}

    def _featurizer(self):
        if self.kind == "model":
            from lightseek.classify.features import ModelFeatures

            return ModelFeatures(self.model, layer=self.layer, max_length=256)
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion

        common = {"sublinear_tf": True, "min_df": 2, "max_features": self.max_features, "dtype": np.float32}
        return FeatureUnion([("char", TfidfVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, **common)),
                             ("word", TfidfVectorizer(analyzer="word", ngram_range=self.word_ngrams,
                                                      token_pattern=r"(?u)\b\w+\b", **common))])

    def fit(self, texts: list[str], labels: list[frozenset[str]]) -> SafetyClassifier:
        from sklearn.linear_model import LogisticRegression

        self.features = self._featurizer()
        x = self.features.fit_transform(texts)
        if self.kind == "model":
            from sklearn.preprocessing import StandardScaler

            self.scaler = StandardScaler().fit(x)
            x = self.scaler.transform(x)
        self.heads = {}
        for cat in (ANY, *CATEGORIES):
            y = np.array([bool(lab) if cat == ANY else cat in lab for lab in labels])
            if y.sum() < 5:  # too few to learn from: the category is left to the rules
                continue
            self.heads[cat] = LogisticRegression(C=self.C, max_iter=2000, class_weight="balanced").fit(x, y)
        self.card = {"kind": self.kind, "model": self.model, "layer": self.layer, "examples": len(texts),
                     "harmful": int(sum(bool(lab) for lab in labels)), "heads": list(self.heads)}
        return self

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        """Per text: each category's score in [0, 1], and ``any`` (harmful at all)."""
        if not self.heads:
            raise ConfigError("the safety classifier is not trained")
        x = self.features.transform(texts)
        if self.kind == "model":
            x = self.scaler.transform(x)
        probs = {cat: head.predict_proba(x)[:, 1] for cat, head in self.heads.items()}
        out = []
        for i in range(len(texts)):
            s = {cat: float(p[i]) for cat, p in probs.items()}
            cats = {c: v for c, v in s.items() if c != ANY}
            if ANY in s and cats and s[ANY] > max(cats.values()):
                top = max(cats, key=cats.get)
                s[top] = s[ANY]
            out.append(s)
        return out

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(folder / f"{self.kind}.pkl", pickle.dumps(self))
        atomic_write_text(folder / f"{self.kind}.json", json.dumps({**self.card, **(extra or {})}, indent=1) + "\n")
        return folder / f"{self.kind}.pkl"


def load_stage(folder: str | Path, kind: str) -> SafetyClassifier | None:
    """The ``kind`` stage saved in ``folder``, or None if it was never trained there."""
    path = Path(folder) / f"{kind}.pkl"
    if not path.is_file():
        return None
    try:
        obj = pickle.loads(path.read_bytes())
    except Exception as e:  # noqa: BLE001 -- a truncated or foreign file
        raise ConfigError(f"{path}: not a lightseek safety classifier ({type(e).__name__})") from None
    if not isinstance(obj, SafetyClassifier):
        raise ConfigError(f"{path}: not a lightseek safety classifier")
    return obj
