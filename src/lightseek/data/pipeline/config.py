"""PipelineConfig: the data-cleaning pipeline's settings, one dataclass section per step.

A recipe (``recipes/pipeline_TIER.yaml``) sets the inputs, the ordered list of steps and any
threshold; dotted command-line overrides (``--quality.max_digit_ratio=0.2``,
``--input.max_bytes=2000000``) come last.
`result_hash` fingerprints everything that changes the output, so a resumed run can refuse a
changed config.
"""

# ruff: noqa: RUF009  (lightseek.config.field returns a dataclasses.field, which ruff cannot see)
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightseek.config import build, field, to_dict
from lightseek.errors import ConfigError

STEP_NAMES = ("normalize", "lang", "quality", "phrases", "exact_dedup", "near_dedup", "pii", "domain")
PII_TYPES = ("EMAIL", "PHONE", "ID_CARD", "BANK_CARD", "IP")
# bump when a step's behaviour changes, so finished outputs are not silently mixed with new ones
PIPELINE_VERSION = 1


def _check_ratio(section: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{section}.{name} must be in [0, 1], got {value}")


@dataclass
class NormalizeConfig:
    form: Literal["NFC", "NFKC", "none"] = field("NFC", help=(
        "Unicode normal form. NFC keeps CJK full-width punctuation; NFKC folds it to ASCII."))
    strip_control: bool = field(True, help="Remove control and format characters (keeps newline and tab).")
    collapse_spaces: bool = field(True, help="Turn runs of spaces/tabs into one space and trim line ends.")
    max_blank_lines: int = field(1, help="Most consecutive blank lines kept (-1 = no limit).")
    min_chars: int = field(1, help="Drop records shorter than this after normalising (empty text).")

    def __post_init__(self) -> None:
        if self.max_blank_lines < -1:
            raise ConfigError(f"normalize.max_blank_lines must be >= -1, got {self.max_blank_lines}")


@dataclass
class LangConfig:
    keep: list[str] = field(default_factory=lambda: ["en", "zh"], help=(
        "ISO 639-1 codes to keep (empty = keep every language)."))
    cjk_ratio: float = field(0.3, help="Share of CJK ideographs among letters that makes a text 'zh' without langid.")
    en_function_ratio: float = field(0.3, help=(
        "Share of common English function words (the, of, and, ...) that makes a text 'en' without langid (0 = off)."))
    min_confidence: float = field(0.0, help="Drop texts whose langid probability is below this.")
    sample_chars: int = field(600, help="langid reads at most this many characters of each text.")

    def __post_init__(self) -> None:
        _check_ratio("lang", "cjk_ratio", self.cjk_ratio)
        _check_ratio("lang", "en_function_ratio", self.en_function_ratio)
        _check_ratio("lang", "min_confidence", self.min_confidence)
        if self.sample_chars < 16:
            raise ConfigError(f"lang.sample_chars must be >= 16, got {self.sample_chars}")


@dataclass
class QualityConfig:
    min_chars: int = field(50, help="Drop texts with fewer characters.")
    max_chars: int = field(1_000_000, help="Drop texts with more characters (0 = no limit).")
    max_symbol_ratio: float = field(0.10, help="Most share of symbol characters (#, {, |, @, ...) among non-space.")
    max_digit_ratio: float = field(0.30, help="Most share of digits among non-space characters.")
    max_dup_line_ratio: float = field(0.30, help="Most share of non-empty lines that repeat an earlier line.")
    min_lines_for_dup: int = field(5, help="Texts with fewer non-empty lines skip the repeated-line check.")
    max_dup_ngram_ratio: float = field(0.25, help="Most share of n-grams that repeat an earlier n-gram.")
    word_ngram: int = field(5, help="n of word n-grams (non-CJK text).")
    char_ngram: int = field(10, help="n of character n-grams (Chinese text).")

    def __post_init__(self) -> None:
        for name in ("max_symbol_ratio", "max_digit_ratio", "max_dup_line_ratio", "max_dup_ngram_ratio"):
            _check_ratio("quality", name, getattr(self, name))
        if self.min_chars < 0 or self.max_chars < 0:
            raise ConfigError(f"quality.min_chars/max_chars must be >= 0, got {self.min_chars}/{self.max_chars}")
        if self.max_chars and self.max_chars < self.min_chars:
            raise ConfigError(f"quality.max_chars ({self.max_chars}) is below quality.min_chars ({self.min_chars})")
        if self.word_ngram < 1 or self.char_ngram < 1:
            raise ConfigError("quality.word_ngram and quality.char_ngram must be >= 1")


@dataclass
class PhrasesConfig:
    patterns: list[str] = field(default_factory=lambda: [
        r"as an ai language model", r"i'm sorry, but i (?:cannot|can't)", r"作为一个(?:人工智能|AI)(?:语言)?模型",
        r"lorem ipsum"], help="Case-insensitive regular expressions; a text matching any is dropped.")

    def __post_init__(self) -> None:
        import re

        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ConfigError(f"phrases.patterns: {p!r} is not a valid regular expression ({e})") from None


@dataclass
class DedupConfig:
    threshold: float = field(0.8, help="Estimated Jaccard similarity at or above which a text is a near-duplicate.")
    num_perm: int = field(128, help="MinHash permutations (more = more exact, slower).")
    word_shingle: int = field(5, help="Words per shingle (non-CJK text).")
    char_shingle: int = field(5, help="Characters per shingle (Chinese text).")
    seed: int = field(1, help="MinHash seed.")

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"dedup.threshold must be in (0, 1), got {self.threshold}")
        if not 16 <= self.num_perm <= 1024:
            raise ConfigError(f"dedup.num_perm must be in [16, 1024], got {self.num_perm}")
        if self.word_shingle < 1 or self.char_shingle < 1:
            raise ConfigError("dedup.word_shingle and dedup.char_shingle must be >= 1")


@dataclass
class PiiConfig:
    types: list[str] = field(default_factory=lambda: list(PII_TYPES), help=(
        f"PII kinds replaced by <TYPE> placeholders: any of {', '.join(PII_TYPES)}."))

    def __post_init__(self) -> None:
        bad = [t for t in self.types if t not in PII_TYPES]
        if bad:
            raise ConfigError(f"pii.types: {bad[0]!r} is not one of {', '.join(PII_TYPES)}")


def _default_keywords() -> dict[str, list[str]]:
    return {
        "medical": ["patient", "disease", "symptom", "treatment", "clinical", "diagnosis", "doctor", "medication",
                    "health", "infection", "cancer", "therapy", "syndrome", "medical", "drug", "vaccine", "virus",
                    "chronic", "surgery", "blood", "tumor", "hospital", "physician", "disorder", "gene",
                    "患者", "疾病", "症状", "治疗", "医生", "药物", "诊断", "医院", "病人", "感染", "手术", "检查",
                    "血压", "炎症", "服用"],
        "legal": ["court", "statute", "plaintiff", "defendant", "contract", "agreement", "liability", "shall",
                  "hereby", "pursuant", "party", "parties", "law", "legal", "clause", "indemnify", "jurisdiction",
                  "法院", "法律", "条例", "被告", "原告", "合同", "违反", "本法", "规定", "依法", "处罚", "条款",
                  "当事人", "人民法院", "有期徒刑"],
        "finance": ["market", "shares", "stock", "investor", "revenue", "profit", "bank", "dividend", "tax",
                    "earnings", "quarter", "billion", "million", "loan", "interest", "inflation", "trade", "price",
                    "股票", "市场", "投资", "银行", "利润", "金融", "收益", "税", "贷款", "利率", "股份", "财务"],
    }


@dataclass
class DomainConfig:
    classifier: str = field("", help=(
        "A saved DomainClassifier (lightseek.data.domains); empty = the keyword-rule tagger."))
    keywords: dict = field(default_factory=_default_keywords, help=(
        "Keyword-rule tagger: domain -> keywords (English as whole words, case-insensitive, plural -s/-es "
        "allowed; Chinese as substrings)."))
    min_hits: int = field(3, help="Keyword tagger: fewest keyword hits for a domain other than 'general'.")
    min_confidence: float = field(0.5, help="Keyword tagger: least share of all hits the top domain needs.")
    keep: list[str] = field(default_factory=list, help="Domains to keep (empty = keep all; e.g. [medical, legal]).")
    batch_size: int = field(256, help="Texts per classifier call.")

    def __post_init__(self) -> None:
        _check_ratio("domain", "min_confidence", self.min_confidence)
        for name, words in self.keywords.items():
            if not isinstance(name, str) or not isinstance(words, list) or not all(isinstance(w, str) and w
                                                                                   for w in words):
                raise ConfigError(f"domain.keywords.{name}: expected a list of non-empty strings, got {words!r}")
        if self.min_hits < 1 or self.batch_size < 1:
            raise ConfigError("domain.min_hits and domain.batch_size must be >= 1")


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list, help=(
        "Files, folders or globs (.txt .md .jsonl .json .csv .html .parquet); relative paths start at the repo root."))
    exclude: list[str] = field(default_factory=lambda: ["README*", "LICENSE*"], help=(
        "File-name patterns to skip inside input folders (dataset READMEs, licences)."))
    text_field: str = field("text", help="Record field(s) holding the text, comma-separated candidates.")
    chunk_chars: int = field(0, help="Split .txt/.md/.html files at blank lines into ~this many characters (0 = whole file).")
    max_bytes: int = field(0, help="Read at most this many bytes of text (0 = all).")

    def __post_init__(self) -> None:
        for name in ("chunk_chars", "max_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"input.{name} must be >= 0, got {getattr(self, name)}")
        if not [f for f in self.text_field.split(",") if f.strip()]:
            raise ConfigError(f"input.text_field must name at least one field, got {self.text_field!r}")


@dataclass
class OutputConfig:
    shard_records: int = field(1000, help="Input records per shard (the unit of output and of resume).")
    examples: int = field(3, help="Removed examples per step and reason in the stats report.")
    excluded_text_chars: int = field(300, help="Characters of each removed text kept in the exclusion files.")
    progress: bool = field(True, help="Show a progress bar.")

    def __post_init__(self) -> None:
        if self.shard_records < 1:
            raise ConfigError(f"output.shard_records must be >= 1, got {self.shard_records}")
        for name in ("examples", "excluded_text_chars"):
            if getattr(self, name) < 0:
                raise ConfigError(f"output.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class PipelineConfig:
    tier: Literal["general", "domain", "synthetic"] = field("general", help="Which corpus tier this recipe cleans.")
    out_dir: str = field("runs/pipeline/general", help="Output folder (kept shards, exclusions, manifest, stats).")
    steps: list[str] = field(default_factory=lambda: list(STEP_NAMES), help=(
        f"Steps in order, from: {', '.join(STEP_NAMES)}."))
    input: InputConfig = field(default_factory=InputConfig, help="What to read.")
    output: OutputConfig = field(default_factory=OutputConfig, help="Shards and reports.")
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig, help="Unicode and whitespace.")
    lang: LangConfig = field(default_factory=LangConfig, help="Language identification.")
    quality: QualityConfig = field(default_factory=QualityConfig, help="Quality filters.")
    phrases: PhrasesConfig = field(default_factory=PhrasesConfig, help="Boilerplate phrase filter.")
    dedup: DedupConfig = field(default_factory=DedupConfig, help="Near-duplicate removal (MinHash LSH).")
    pii: PiiConfig = field(default_factory=PiiConfig, help="PII scrubbing.")
    domain: DomainConfig = field(default_factory=DomainConfig, help="Domain tagging.")

    def __post_init__(self) -> None:
        bad = [s for s in self.steps if s not in STEP_NAMES]
        if bad:
            raise ConfigError(f"steps: unknown step {bad[0]!r} (choose from {', '.join(STEP_NAMES)})")
        if len(set(self.steps)) != len(self.steps):
            raise ConfigError(f"steps: a step is listed twice in {self.steps}")

    def result_hash(self, input_files: list[tuple[str, int]]) -> str:
        """sha256 over every setting that changes the output, and the input files (path, size)."""
        data = to_dict(self)
        data.pop("out_dir")
        data["output"].pop("progress")
        blob = json.dumps({"config": data, "inputs": input_files, "version": PIPELINE_VERSION},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_pipeline_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults <- recipe YAML <- dotted overrides (``--quality.min_chars=100``, ``--out_dir=...``)."""
    return build(PipelineConfig, path, overrides)
