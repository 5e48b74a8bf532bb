"""Quality filters: length, symbol share, digit share, repeated lines and repeated n-grams.

`quality_problem` returns the first failed check as a readable reason ("digit_ratio 0.61 >
0.30") or None. Ratios are over non-space characters; n-grams are words for most languages and
characters for Chinese (which has no spaces between words). The markers of the chat template
(<|user|>, <|end|>, ...) that instruction records are rendered with are not counted.
"""

from __future__ import annotations

import re

from lightseek.data.pipeline.config import QualityConfig
from lightseek.data.pipeline.lang import CHAT_MARKER

_SPACE = re.compile(r"\s")
_DIGIT = re.compile(r"[0-9\uff10-\uff19]")
# anything that is not a letter, digit, space or ordinary (Latin or CJK) punctuation
_SYMBOL = re.compile(r"[^\w\s.,;:!?'\"()\[\]\-\u2010-\u2027\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\u00b7]|_")
_WORD = re.compile(r"\w+")


def symbol_ratio(text: str) -> float:
    chars = len(text) - len(_SPACE.findall(text))
    return len(_SYMBOL.findall(text)) / chars if chars else 0.0


def digit_ratio(text: str) -> float:
    chars = len(text) - len(_SPACE.findall(text))
    return len(_DIGIT.findall(text)) / chars if chars else 0.0


def dup_line_ratio(text: str, min_lines: int) -> float:
    """Share of the characters of non-empty lines that sit in a line repeating an earlier one
    (by characters, so short repeated speaker names in a play weigh little)."""
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    if len(lines) < min_lines:
        return 0.0
    seen: set[str] = set()
    dup = total = 0
    for ln in lines:
        total += len(ln)
        if ln in seen:
            dup += len(ln)
        else:
            seen.add(ln)
    return dup / total if total else 0.0


def dup_ngram_ratio(text: str, n: int, chinese: bool) -> float:
    """Share of n-grams (characters for Chinese, lower-cased words otherwise) that repeat an
    earlier n-gram; 0 for a text with fewer than n units."""
    if chinese:
        units = _SPACE.sub("", text)
        total = len(units) - n + 1
        if total <= 0:
            return 0.0
        grams = {units[i:i + n] for i in range(total)}
    else:
        words = _WORD.findall(text.lower())
        total = len(words) - n + 1
        if total <= 0:
            return 0.0
        grams = set(zip(*(words[i:] for i in range(n))))
    return 1.0 - len(grams) / total


def quality_problem(text: str, chinese: bool, cfg: QualityConfig) -> str | None:
    """The first check ``text`` fails, as a reason, or None when it passes them all."""
    if "<|" in text:
        text = CHAT_MARKER.sub("", text)
    n = len(text)
    if n < cfg.min_chars:
        return f"length {n} < {cfg.min_chars} chars"
    if cfg.max_chars and n > cfg.max_chars:
        return f"length {n} > {cfg.max_chars} chars"
    checks = (
        ("symbol_ratio", lambda: symbol_ratio(text), cfg.max_symbol_ratio),
        ("digit_ratio", lambda: digit_ratio(text), cfg.max_digit_ratio),
        ("dup_line_ratio", lambda: dup_line_ratio(text, cfg.min_lines_for_dup), cfg.max_dup_line_ratio),
        (f"dup_{cfg.char_ngram if chinese else cfg.word_ngram}gram_ratio",
         lambda: dup_ngram_ratio(text, cfg.char_ngram if chinese else cfg.word_ngram, chinese),
         cfg.max_dup_ngram_ratio),
    )
    for name, measure, limit in checks:
        value = measure()
        if value > limit:
            return f"{name} {value:.2f} > {limit:.2f}"
    return None
