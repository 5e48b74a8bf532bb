"""Domain tagging: each text gets a domain and a confidence.

With a saved classifier (``domain.classifier``) the tagger is `lightseek.data.domains`'
``DomainClassifier`` (imported only then). Without one, a transparent keyword-rule tagger:
count each domain's keywords (English as whole words, case-insensitive; Chinese as
substrings, English plurals in -s/-es counted); the domain with the most hits wins when it has at least ``min_hits`` and at least
``min_confidence`` of all hits, otherwise the text is 'general'.
"""

from __future__ import annotations

import re

from lightseek.data.pipeline.config import DomainConfig
from lightseek.errors import ConfigError

GENERAL = "general"


class KeywordTagger:
    """``predict(texts) -> [(domain, confidence)]`` from keyword counts; `hits` explains it."""

    def __init__(self, keywords: dict[str, list[str]], min_hits: int, min_confidence: float) -> None:
        self.min_hits, self.min_confidence = min_hits, min_confidence
        self.patterns: list[tuple[str, re.Pattern | None, re.Pattern | None]] = []
        for domain in sorted(keywords):
            latin = sorted({w.lower() for w in keywords[domain] if w.isascii()}, key=lambda w: (-len(w), w))
            other = sorted({w for w in keywords[domain] if not w.isascii()}, key=lambda w: (-len(w), w))
            self.patterns.append((
                domain,
                re.compile(r"(?<![a-z0-9])(?:" + "|".join(map(re.escape, latin)) + r")(?:e?s)?(?![a-z0-9])")
                if latin else None,
                re.compile("|".join(map(re.escape, other))) if other else None))

    def hits(self, text: str) -> dict[str, int]:
        out = {}
        lower, ascii_only = text.lower(), text.isascii()  # once, rather than case-folding per pattern
        for domain, latin, other in self.patterns:
            n = (len(latin.findall(lower)) if latin else 0) + (len(other.findall(text)) if other and not ascii_only
                                                                else 0)
            if n:
                out[domain] = n
        return out

    def tag(self, text: str) -> tuple[str, float]:
        hits = self.hits(text)
        total = sum(hits.values())
        if not total:
            return GENERAL, 1.0
        domain = max(sorted(hits), key=lambda d: hits[d])  # ties: the first name in sorted order
        share = hits[domain] / total
        if hits[domain] < self.min_hits or share < self.min_confidence:
            return GENERAL, round(1.0 - share if hits[domain] >= self.min_hits else 1.0, 4)
        return domain, round(share, 4)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        return [self.tag(t) for t in texts]


def load_tagger(cfg: DomainConfig):
    """The classifier named by ``cfg.classifier``, else the keyword tagger."""
    if not cfg.classifier:
        return KeywordTagger(cfg.keywords, cfg.min_hits, cfg.min_confidence)
    try:
        from lightseek.data.domains import DomainClassifier
    except ImportError as e:
        raise ConfigError(f"domain.classifier {cfg.classifier!r}: cannot import the domain classifier ({e}); "
                          'pip install "lightseek[data]"') from None
    return DomainClassifier.load(cfg.classifier)
