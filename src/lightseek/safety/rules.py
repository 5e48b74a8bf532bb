"""Rules the operator edits: per category, terms and regular expressions, in both languages
(the package's default_rules.yaml; `--rules FILE` for your own). A match sets that category's
score to 1: rules are for what must always be caught (or is new, before a classifier has
learned it), so keep them precise.

English terms match as whole words, case-insensitively; Chinese terms match as substrings
(Chinese has no spaces between words); patterns are Python regular expressions.
"""

from __future__ import annotations

import re
from pathlib import Path

from lightseek.errors import ConfigError
from lightseek.safety.policy import CATEGORIES

DEFAULT_RULES = Path(__file__).resolve().parent / "default_rules.yaml"


class Rules:
    def __init__(self, spec: dict[str, dict]):
        self.compiled: dict[str, re.Pattern] = {}
        for cat, body in (spec or {}).items():
            if cat not in CATEGORIES:
                raise ConfigError(f"rules: unknown category {cat!r} (known: {', '.join(CATEGORIES)})")
            body = body or {}
            bad = set(body) - {"terms", "patterns"}
            if bad:
                raise ConfigError(f"rules: {cat}: unknown key(s) {', '.join(sorted(bad))} (terms, patterns)")
            parts = []
            for term in body.get("terms") or []:
                t = re.escape(str(term).strip())
                parts.append(t if re.search(r"[\u4e00-\u9fff]", term) else rf"\b{t}\b")
            for i, pat in enumerate(body.get("patterns") or []):
                try:
                    re.compile(pat)
                except re.error as e:
                    raise ConfigError(f"rules: {cat}.patterns[{i}] {pat!r}: {e}") from None
                parts.append(f"(?:{pat})")
            if parts:
                self.compiled[cat] = re.compile("|".join(parts), re.IGNORECASE)

    def match(self, text: str) -> dict[str, str]:
        """The categories whose rules match ``text``, with the matching text."""
        out = {}
        for cat, rx in self.compiled.items():
            m = rx.search(text)
            if m:
                out[cat] = m.group(0)
        return out


def load_rules(path: str | Path | None = None) -> Rules:
    import yaml

    p = Path(path) if path else DEFAULT_RULES
    if not p.is_file():
        if path:
            raise ConfigError(f"rules {p}: no such file")
        return Rules({})
    try:
        return Rules(yaml.safe_load(p.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as e:
        raise ConfigError(f"rules {p}: not valid YAML ({e})") from None
