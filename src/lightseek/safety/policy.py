"""The safety policy: the hazard categories (the MLCommons taxonomy Llama Guard 3 uses, S1-S13),
their mapping to OpenAI's moderation categories, and per category a threshold and an action.

Actions, from strongest: ``block`` (a prompt is refused before it runs; an output stream stops
with finish_reason "content_filter"), ``redact`` (an output's personal data is replaced by the data
layer's PII scrubber), ``flag`` (allowed, and recorded as flagged), ``allow`` (only recorded). The
operator edits the policy as YAML (recipes/safety_policy.yaml); unknown categories, actions or
thresholds outside [0, 1] are refused with the field named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lightseek.errors import ConfigError

# code -> (name, OpenAI moderation categories it answers for)
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "S1": ("violent crimes", ("violence", "illicit/violent")),
    "S2": ("non-violent crimes", ("illicit",)),
    "S3": ("sex-related crimes", ("sexual", "illicit")),
    "S4": ("child sexual exploitation", ("sexual/minors",)),
    "S5": ("defamation", ("harassment",)),
    "S6": ("specialised advice", ()),
    "S7": ("privacy", ()),
    "S8": ("intellectual property", ()),
    "S9": ("indiscriminate weapons", ("illicit/violent", "violence")),
    "S10": ("hate", ("hate", "hate/threatening", "harassment", "harassment/threatening")),
    "S11": ("suicide and self-harm", ("self-harm", "self-harm/intent", "self-harm/instructions")),
    "S12": ("sexual content", ("sexual",)),
    "S13": ("elections", ()),
}
OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                     "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                     "sexual/minors", "violence", "violence/graphic")
ACTIONS = ("block", "redact", "flag", "allow")


@dataclass
class Rule:
    threshold: float = 0.5
    action: str = "block"


@dataclass
class Policy:
    """Per category: the score at or above which it applies, and what happens then."""
    # specialised advice (S6) is flagged, not refused, by default: refusing every medical, legal
    # or financial question is the over-refusal users complain about
    categories: dict[str, Rule] = field(default_factory=lambda: {c: Rule(action="flag" if c == "S6" else "block")
                                                                 for c in CATEGORIES})
    # scores in [uncertain_low, uncertain_high) from the fast classifier go to the model stage
    uncertain_low: float = 0.2
    uncertain_high: float = 0.8
    redact_pii: list[str] = field(default_factory=list)   # PII types scrubbed from outputs (EMAIL, PHONE, ...)
    log_text: bool = False                                # the audit log keeps texts, not only their hashes

    def __post_init__(self):
        for code, rule in self.categories.items():
            if code not in CATEGORIES:
                raise ConfigError(f"policy: unknown category {code!r} (known: {', '.join(CATEGORIES)})")
            if rule.action not in ACTIONS:
                raise ConfigError(f"policy: categories.{code}.action {rule.action!r}: one of {', '.join(ACTIONS)}")
            if not 0 <= rule.threshold <= 1:
                raise ConfigError(f"policy: categories.{code}.threshold {rule.threshold} is outside [0, 1]")
        if not 0 <= self.uncertain_low <= self.uncertain_high <= 1:
            raise ConfigError("policy: need 0 <= uncertain_low <= uncertain_high <= 1")

    def action(self, scores: dict[str, float]) -> tuple[str, list[str]]:
        """The strongest action any category's score calls for, and the categories at or over
        their threshold."""
        hit = [c for c, s in scores.items() if c in self.categories and s >= self.categories[c].threshold]
        acts = {self.categories[c].action for c in hit}
        return next((a for a in ACTIONS if a in acts), "allow"), hit


def load_policy(path: str | Path | None) -> Policy:
    """The policy in ``path`` (YAML); the defaults (every category blocks at 0.5, S6 flags) when None."""
    if path is None:
        return Policy()
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"policy {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"policy {p}: not valid YAML ({e})") from None
    known = {"categories", "uncertain_low", "uncertain_high", "redact_pii", "log_text"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"policy {p}: unknown key(s) {', '.join(sorted(unknown))}")
    cats = {}
    for code, spec in (raw.get("categories") or {}).items():
        spec = spec or {}
        bad = set(spec) - {"threshold", "action"}
        if bad:
            raise ConfigError(f"policy {p}: categories.{code}: unknown key(s) {', '.join(sorted(bad))}")
        cats[str(code)] = Rule(float(spec.get("threshold", 0.5)), str(spec.get("action", "block")))
    base = Policy()
    return Policy(categories={**base.categories, **cats}, uncertain_low=float(raw.get("uncertain_low", 0.2)),
                  uncertain_high=float(raw.get("uncertain_high", 0.8)), redact_pii=list(raw.get("redact_pii") or []),
                  log_text=bool(raw.get("log_text", False)))
