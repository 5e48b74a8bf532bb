"""`DomainClassifier`: tells which domain (medical, finance, legal, general, ...) a text is from.

Features are TF-IDF character n-grams (char_wb, so Chinese needs no word segmenter) in union
with word n-grams; or, with ``DomainConfig.model``, the mean-pooled hidden states of one block
of a lightseek checkpoint (by default beside the n-grams); or, with ``DomainConfig.encoder``,
mean-pooled embeddings of a local Hugging Face encoder. The model on top is a logistic
regression, so every prediction has a probability. With ``DomainConfig.zero_shot`` an instruct
model is asked instead (`lightseek.classify.zero_shot`), behind the same interface.
A text whose top probability is below ``threshold`` is labelled ``fallback`` (``general``).

A saved classifier is a folder: ``model.joblib`` (the scikit-learn pipeline) and
``domains.json`` (domains, threshold, training data sha256 and counts, metrics, versions).
joblib files are pickles: loading one runs code from it, so only load classifiers you trust.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import zlib
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from lightseek import __version__
from lightseek.config import from_dict, to_dict
from lightseek.data.corpus import RECORD_SUFFIXES, expand_paths, iter_records, record_text
from lightseek.data.domains.config import DomainConfig
from lightseek.errors import CheckpointError, ConfigError, DataError

MODEL, META = "model.joblib", "domains.json"
FORMAT = "lightseek-domain-classifier"


def require(module: str, what: str = "the domain classifier", extra: str = 'pip install "lightseek[data]"'):
    """Import ``module`` or say which install provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs {module.split('.')[0]}: {extra}") from None


def read_labelled(paths: str | os.PathLike | Iterable, text_field: str = "text",
                  label_field: str = "domain") -> tuple[list[str], list[str], list[dict]]:
    """(texts, labels, files) from labelled record files (.jsonl, .json, .csv) or folders of them.

    ``files`` lists each file with its sha256 and record count. Whitespace-only texts are
    skipped; a missing or non-string label is a DataError naming the file and line."""
    from lightseek.fileio import file_sha256

    texts, labels, files = [], [], []
    for path in expand_paths(paths, suffixes=RECORD_SUFFIXES):
        n = 0
        for _, _, where, record in iter_records(path):
            label = record.get(label_field)
            if label is None:
                raise DataError(f"{where}: field {label_field!r} (the domain label) is missing")
            if not isinstance(label, str) or not label.strip():
                raise DataError(f"{where}: field {label_field!r} must be a non-empty string, got {label!r}")
            text = record_text(record, [text_field], where)
            if text.strip():
                texts.append(text)
                labels.append(label.strip())
                n += 1
        files.append({"path": str(path), "sha256": file_sha256(path), "records": n})
    names = ", ".join(f["path"] for f in files) or str(paths)
    if not texts:
        raise DataError(f"{names}: no labelled records with a non-empty {text_field!r}")
    return texts, labels, files


class DomainClassifier:
    """A trained domain classifier. Build with `fit` or `load`; use `predict`.

    ``domains`` are the trained labels in the column order of `predict_proba`."""

    def __init__(self, pipeline, config: DomainConfig, meta: dict | None = None) -> None:
        self.pipeline = pipeline
        self.config = config
        self.threshold = config.threshold
        self.meta = dict(meta or {})

    @property
    def domains(self) -> list[str]:
        return [str(c) for c in self.pipeline.classes_]

    # --- training -------------------------------------------------------------------------

    @classmethod
    def fit(cls, texts: list[str], labels: list[str], config: DomainConfig | None = None,
            data: list[dict] | None = None) -> DomainClassifier:
        """Train on ``texts`` with their ``labels`` (at least two distinct ones). ``data``
        (files with sha256, as `read_labelled` returns) is recorded in the metadata."""
        config = config or DomainConfig()
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels")
        counts = Counter(labels)
        if len(counts) < 2:
            where = ", ".join(f["path"] for f in data or []) or "training data"
            only = next(iter(counts), None)
            raise DataError(f"{where}: every record has domain {only!r}; training needs at least two domains")
        pipeline = _pipeline(config)
        try:
            pipeline.fit(_clip(texts, config.max_chars), labels)
        except ValueError as e:  # e.g. an empty vocabulary: too little text for min_df
            raise DataError(f"cannot train on {len(texts)} texts: {e}") from None
        meta = {"data": data or [], "counts": dict(sorted(counts.items())), "trained": _now()}
        return cls(pipeline, config, meta)

    # --- prediction -----------------------------------------------------------------------

    def predict_proba(self, texts: list[str]):
        """Probabilities, shape (N, len(domains)), columns in `domains` order."""
        import numpy as np

        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.domains)), dtype=np.float64)
        return self.pipeline.predict_proba(_clip(texts, self.config.max_chars))

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(domain, confidence) per text; confidence is the top class probability. A text whose
        confidence is below `threshold` gets the fallback domain (``general``), with that
        (low) confidence."""
        proba = self.predict_proba(texts)
        domains = self.domains
        out = []
        for row in proba:
            top = int(row.argmax())
            conf = float(row[top])
            out.append((domains[top] if conf >= self.threshold else self.config.fallback, conf))
        return out

    # --- files ----------------------------------------------------------------------------

    def metadata(self) -> dict:
        sklearn = require("sklearn")
        return {"format": FORMAT, "format_version": 1, "lightseek_version": __version__,
                "sklearn_version": sklearn.__version__, "domains": self.domains,
                "threshold": self.threshold, "fallback": self.config.fallback,
                "features": feature_kind(self.config),
                "config": to_dict(self.config), **{k: v for k, v in self.meta.items()}}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the classifier folder atomically (an existing one is replaced whole)."""
        joblib = require("joblib")
        from lightseek.fileio import write_dir_atomic, write_json_atomic

        meta = self.metadata()

        def fill(tmp: Path) -> None:
            joblib.dump(self.pipeline, tmp / MODEL, compress=3)
            write_json_atomic(tmp / META, meta)

        return write_dir_atomic(path, fill)

    @classmethod
    def load(cls, path: str | os.PathLike, threshold: float | None = None) -> DomainClassifier:
        """Load a folder written by `save`. It unpickles model.joblib: only load trusted files."""
        from lightseek.fileio import resolve_folder

        folder = resolve_folder(path, "domain classifier", "model", (META, MODEL),
                                hint=" (write one with `lightseek domains train`)")
        meta = _read_meta(folder / META)
        config = _meta_config(meta, folder / META)
        if threshold is not None:
            config = from_dict(DomainConfig, {**to_dict(config), "threshold": threshold})
        require("sklearn")
        joblib = require("joblib")
        try:
            pipeline = joblib.load(folder / MODEL)
        except (pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, ImportError, zlib.error) as e:  # truncated or foreign: say which, no traceback
            raise CheckpointError(f"{folder / MODEL}: cannot be loaded ({type(e).__name__}: {e})") from None
        classes = [str(c) for c in getattr(pipeline, "classes_", [])]
        if classes != meta["domains"]:
            raise CheckpointError(f"{folder}: model.joblib predicts {classes}, but {META} lists {meta['domains']}")
        keep = {k: v for k, v in meta.items() if k in ("data", "counts", "metrics", "trained")}
        return cls(pipeline, config, keep)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lightseek domain classifier (format {FORMAT!r} expected)")
    for key in ("domains", "config"):
        if key not in meta:
            raise CheckpointError(f"{path}: field {key!r} is missing")
    return meta


def _meta_config(meta: dict, path: Path) -> DomainConfig:
    try:
        cfg = from_dict(DomainConfig, meta["config"], prefix="config.")
        return from_dict(DomainConfig, {**to_dict(cfg), "threshold": meta.get("threshold", cfg.threshold),
                                        "fallback": meta.get("fallback", cfg.fallback)})
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _pipeline(config: DomainConfig):
    """The scikit-learn pipeline: features (TF-IDF union or encoder) -> logistic regression."""
    require("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    if config.zero_shot:
        return Pipeline([("model", domain_mode("zero_shot")(config.zero_shot, config.max_chars,
                                                                calibrate=config.zero_shot_calibrate))])
    if config.model:
        features = _model_features(config)
    elif config.encoder:
        from sklearn.preprocessing import StandardScaler

        from lightseek.data.domains.encoder import EncoderFeatures

        # embedding dimensions differ in scale (position and bias terms dominate a mean): standardise
        features = Pipeline([("embed", EncoderFeatures(config.encoder, config.encoder_batch_size,
                                                       config.encoder_max_length)), ("scale", StandardScaler())])
    else:
        features = _tfidf(config)
    model = LogisticRegression(C=config.C, max_iter=config.max_iter,
                               class_weight="balanced" if config.balanced else None)
    return Pipeline([("features", features), ("model", model)])


def _model_features(config: DomainConfig):
    """A lightseek model's pooled hidden states, standardised; with `model_tfidf`, beside the
    TF-IDF n-grams, the model's part scaled to unit length per text (the n-grams' analyzers are
    each of unit length already), so that neither kind of feature swamps the other."""
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    embed = domain_mode("model")(config.model, config.model_layer, config.encoder_batch_size,
                                 config.encoder_max_length, config.feature_cache)
    steps = [("embed", embed), ("scale", StandardScaler())]
    if not config.model_tfidf:
        return Pipeline(steps)
    return FeatureUnion([("model", Pipeline([*steps, ("unit", Normalizer())])), ("tfidf", _tfidf(config))])


def domain_mode(name: str):
    """The class of a model-backed mode (``model`` features, ``zero_shot``), from the installed
    `lightseek.domain_modes` entry points: they build on the model layer, which this layer is below."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="lightseek.domain_modes") if ep.name == name]
    if not found:
        raise ConfigError(f"the domain classifier's {name!r} mode is not installed (its entry point is missing): "
                          f"reinstall lightseek (pip install -e .)")
    return found[0].load()


def feature_kind(config: DomainConfig) -> str:
    if config.zero_shot:
        return "zero-shot"
    if config.model:
        return "model+tfidf" if config.model_tfidf else "model"
    return "encoder" if config.encoder else "tfidf"


def _tfidf(config: DomainConfig):
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    common = {"min_df": config.min_df, "max_features": config.max_features, "sublinear_tf": True,
              "dtype": np.float32}
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(config.char_ngram_min, config.char_ngram_max),
                           **common)
    if config.word_ngram_max == 0:
        return char
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, config.word_ngram_max), **common)
    return FeatureUnion([("char", char), ("word", word)])


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise DataError("predict takes a list of texts, got a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text {i} is a {type(t).__name__}, not a string")
    return texts


def _clip(texts: list[str], max_chars: int) -> list[str]:
    return [t[:max_chars] for t in texts]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
