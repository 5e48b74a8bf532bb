"""Configs of the domain classifier: how it is trained (`DomainConfig`) and how its labelled
data is built from ../shared/data (`BuildConfig`). Every field's help text is also CLI help."""

from __future__ import annotations

from dataclasses import dataclass

from lightseek.config import field
from lightseek.errors import ConfigError


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"config key 'domains.{name}': must be positive, got {value!r}")


@dataclass
class DomainConfig:
    """How the classifier reads its data, what features it uses and how it decides."""

    text_field: str = field("text", help="record field that holds the text")
    label_field: str = field("domain", help="record field that holds the domain label")
    threshold: float = field(0.5, help="texts whose top probability is below this are labelled `fallback`")
    fallback: str = field("general", help="the label given to texts below `threshold`")
    char_ngram_min: int = field(1, help="shortest character n-gram (char_wb analyzer)")
    char_ngram_max: int = field(4, help="longest character n-gram (char_wb; no word segmenter needed)")
    word_ngram_max: int = field(2, help="longest word n-gram in the union with char n-grams; 0 = char only")
    min_df: int = field(2, help="ignore n-grams seen in fewer training texts than this")
    max_features: int = field(400_000, help="keep at most this many n-grams per analyzer (most frequent)")
    max_chars: int = field(2000, help="only the first max_chars characters of a text are looked at")
    C: float = field(10.0, help="inverse regularisation strength of the logistic regression")
    max_iter: int = field(1000, help="iteration limit of the logistic regression solver")
    balanced: bool = field(True, help="weight classes inversely to their frequency")
    encoder: str = field("", help="local folder of a Hugging Face encoder: mean-pooled embeddings replace TF-IDF")
    encoder_batch_size: int = field(32, help="texts per encoder (or model) forward pass")
    encoder_max_length: int = field(256, help="encoder (or model) tokens per text (longer texts are truncated)")
    model: str = field("", help="a lightseek checkpoint or a fetched model's name (smollm2-135m-instruct): the "
                                "mean of one block's hidden states is the features")
    model_layer: int = field(-1, help="the block of `model` whose output is pooled (0-based; negative counts "
                                      "from the end)")
    model_tfidf: bool = field(True, help="with `model`: keep the TF-IDF n-grams beside its features (rare terms, "
                                         "and Chinese, which an English-first model reads poorly)")
    zero_shot: str = field("", help="an instruct model (checkpoint or fetched name) asked which domain each text "
                                    "is from; nothing is trained but the label set")
    zero_shot_calibrate: bool = field(True, help="with `zero_shot`: subtract each domain's score for content-free "
                                                 "texts (N/A, empty): the model's favourite answers lose their lead")
    feature_cache: str = field("", help="folder caching `model` features per text (empty: "
                                        "$LIGHTSEEK_CACHE/features; off: no cache)")

    def __post_init__(self) -> None:
        for name in ("text_field", "label_field", "fallback"):
            if not getattr(self, name).strip():
                raise ConfigError(f"config key 'domains.{name}': must not be empty")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"config key 'domains.threshold': must be in [0, 1], got {self.threshold!r}")
        if not 1 <= self.char_ngram_min <= self.char_ngram_max:
            raise ConfigError(f"config keys 'domains.char_ngram_min/max': need 1 <= min <= max, got "
                              f"{self.char_ngram_min}..{self.char_ngram_max}")
        if self.word_ngram_max < 0:
            raise ConfigError(f"config key 'domains.word_ngram_max': must be >= 0, got {self.word_ngram_max}")
        if sum(map(bool, (self.encoder, self.model, self.zero_shot))) > 1:
            raise ConfigError("config keys 'domains.encoder', 'domains.model' and 'domains.zero_shot': choose one")
        for name in ("min_df", "max_features", "max_chars", "C", "max_iter", "encoder_batch_size",
                     "encoder_max_length"):
            _positive(name, getattr(self, name))


@dataclass
class BuildConfig:
    """How `lightseek domains build` turns the shared corpora into labelled passages."""

    shared: str = field("../shared/data", help="folder holding the corpora (each with a README.md)")
    min_chars: int = field(40, help="passages shorter than this are dropped")
    max_chars: int = field(1000, help="longer documents are cut into passages of at most this many characters")
    short_fraction: float = field(0.3, help="share of each source's passages taken from documents cut into "
                                            "short passages (at most short_chars), so short texts are seen too")
    short_chars: int = field(200, help="the size limit of short passages")
    section_chars: int = field(20_000, help="books are cut into sections of about this size; a section is "
                                            "the unit of the train/held-out split")
    per_domain: int = field(5000, help="passages per domain (train + held-out), shared among its sources")
    questions_per_domain: int = field(600, help="texts per domain in the second, differently written set")
    heldout_fraction: float = field(0.15, help="fraction of documents (by stable hash) held out")
    alpaca: bool = field(True, help="use the Alpaca instruction sets as general text (outputs to train, "
                                    "instructions to the second set)")

    def __post_init__(self) -> None:
        for name in ("min_chars", "max_chars", "short_chars", "section_chars", "per_domain", "questions_per_domain"):
            _positive(name, getattr(self, name))
        if self.min_chars >= self.max_chars:
            raise ConfigError(f"config keys 'domains.min_chars/max_chars': need min < max, got "
                              f"{self.min_chars} and {self.max_chars}")
        if not 0.0 <= self.short_fraction <= 1.0:
            raise ConfigError(f"config key 'domains.short_fraction': must be in [0, 1], got {self.short_fraction!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"config key 'domains.heldout_fraction': must be in (0, 1), got "
                              f"{self.heldout_fraction!r}")
