"""The moderation cascade: rules, then the fast linear classifier, then, for the scores it is
unsure of, the model stage; the policy turns the scores into an action. Each decision records
what every stage said, and goes to the audit log and the metrics.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightseek.errors import ConfigError
from lightseek.safety.classifier import ANY, load_stage
from lightseek.safety.policy import CATEGORIES, OPENAI_CATEGORIES, Policy, load_policy
from lightseek.safety.rules import Rules, load_rules

_CJK = re.compile(r"[\u3400-\u9fff]")
MOD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def language(text: str) -> str:
    """'zh' when a fifth or more of the letters are Chinese characters, else 'en'."""
    letters = sum(ch.isalpha() for ch in text) or 1
    return "zh" if len(_CJK.findall(text)) / letters >= 0.2 else "en"


def combine(policy: Policy, scores: dict[str, float], hits: dict[str, str]) -> tuple[dict, float, str, list]:
    """One text's final category scores, "harmful" score, action and categories over threshold,
    from a learned stage's ``scores`` and the categories whose rules matched (those score 1)."""
    final = {c: 1.0 if c in hits else scores.get(c, 0.0) for c in CATEGORIES}
    action, cats = policy.action(final)
    return final, 1.0 if hits else scores.get(ANY, 0.0), action, cats


@dataclass
class Decision:
    scores: dict[str, float]                 # per category (S1-S13), the final score
    harmful: float                           # the "harmful at all" score
    action: str                              # block | redact | flag | allow
    categories: list[str]                    # categories at or over their threshold
    stage: str                               # the last stage that decided: rules | linear | model
    stages: dict[str, dict] = field(default_factory=dict)  # what each stage said
    lang: str = "en"
    ms: float = 0.0

    @property
    def flagged(self) -> bool:
        return bool(self.categories)

    def openai(self) -> dict:
        """This decision as one result of OpenAI's moderation response."""
        cats = {c: False for c in OPENAI_CATEGORIES}
        scores = {c: 0.0 for c in OPENAI_CATEGORIES}
        for code, s in self.scores.items():
            for oc in CATEGORIES[code][1]:
                scores[oc] = max(scores[oc], s)
                cats[oc] = cats[oc] or code in self.categories
        applied = {c: ["text"] for c in OPENAI_CATEGORIES}
        return {"flagged": self.flagged, "categories": cats, "category_scores": scores,
                "category_applied_input_types": applied,
                "lightseek": {"action": self.action, "hazards": self.categories, "stage": self.stage,
                              "scores": {c: round(s, 4) for c, s in self.scores.items()}}}


class Moderator:
    """Moderation with the classifiers in ``folder`` (`lightseek safety train --out FOLDER`)."""

    def __init__(self, folder: str | Path, policy: Policy | str | Path | None = None,
                 rules: Rules | str | Path | None = None, audit_log: str | Path | None = None,
                 policies: str | Path | None = None):
        self.linear = load_stage(folder, "linear")
        if self.linear is None:
            raise ConfigError(f"{folder}: no safety classifier (train one: lightseek safety train --out {folder})")
        self.model = load_stage(folder, "model")
        # the model stage runs one text batch at a time (its forward hooks are not re-entrant),
        # and keeps no per-text feature files: a server sees each text once
        self._model_lock = threading.Lock()
        if self.model is not None and hasattr(self.model.features, "cache"):
            self.model.features.cache = "off"
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        # named policies that API keys may be given (the platform's keys.safety_policy): NAME.yaml files
        self.policies: dict[str, Policy] = {}
        if policies is not None:
            d = Path(policies)
            if not d.is_dir():
                raise ConfigError(f"safety policies {d}: no such folder")
            self.policies = {p.stem: load_policy(p) for p in sorted(d.glob("*.yaml"))}
        self.rules = rules if isinstance(rules, Rules) else load_rules(rules)
        self.audit = AuditLog(audit_log) if audit_log else None
        self.metrics = ModerationMetrics()

    def policy_for(self, name: str | None) -> Policy:
        """The named policy (a key's), or the server's own for None."""
        if name is None:
            return self.policy
        if name not in self.policies:
            raise ConfigError(f"the content policy {name!r} is not configured on this server "
                              f"(known: {', '.join(self.policies) or 'none'})")
        return self.policies[name]

    def check(self, texts: list[str], direction: str = "input", request_id: str | None = None,
              key_id: int | None = None, policy: str | None = None) -> list[Decision]:
        """One decision per text, under the named policy (None: the server's own)."""
        pol = self.policy_for(policy)
        t0 = time.perf_counter()
        lin = self.linear.scores(texts)
        out = []
        unsure = []
        for i, (text, s) in enumerate(zip(texts, lin)):
            hits = self.rules.match(text)
            stages = {"linear": {k: round(v, 4) for k, v in s.items()}}
            if hits:
                stages["rules"] = hits
            top = max(s.values(), default=0.0)
            if self.model is not None and not hits and pol.uncertain_low <= top < pol.uncertain_high:
                unsure.append(i)
            out.append((text, dict(s), hits, stages))
        model_scores = []
        if unsure:
            with self._model_lock:
                model_scores = self.model.scores([texts[i] for i in unsure])
        ms = 1000 * (time.perf_counter() - t0) / max(1, len(texts))
        second = dict(zip(unsure, model_scores))  # text index -> the model stage's scores
        decisions = []
        for j, (text, s, hits, stages) in enumerate(out):
            stage = "linear"
            if j in second:
                s, stage = second[j], "model"
                stages["model"] = {k: round(v, 4) for k, v in s.items()}
            if hits:
                stage = "rules"
            scores, harmful, action, cats = combine(pol, s, hits)
            d = Decision(scores, harmful, action, cats, stage, stages, language(text), ms)
            decisions.append(d)
            self.metrics.record(d, direction)
            if self.audit is not None:
                self.audit.write(d, text, direction, request_id, key_id, pol.log_text)
        return decisions


class AuditLog:
    """Append-only JSON lines, one per decision: the text's SHA-256 (the text itself only when the
    policy says ``log_text``), language, scores, stage, action, direction, request and key ids."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- held for the server's life

    def write(self, d: Decision, text: str, direction: str, request_id: str | None, key_id: int | None,
              log_text: bool = False) -> None:
        rec = {"time": round(time.time(), 3), "direction": direction, "request_id": request_id, "key_id": key_id,
               "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "chars": len(text), "lang": d.lang,
               "stage": d.stage, "action": d.action, "categories": d.categories,
               "scores": {c: round(s, 4) for c, s in d.scores.items() if s >= 0.01},
               "harmful": round(d.harmful, 4), "ms": round(d.ms, 3)}
        if log_text:
            rec["text"] = text
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self.lock:
            self.f.write(line)
            self.f.flush()

    def close(self) -> None:
        self.f.close()


class ModerationMetrics:
    """Prometheus counters of decisions by stage, category, language and action, and a latency
    histogram by direction, in a registry of their own (added to the server's /metrics)."""

    def __init__(self):
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram
        except ImportError:
            self.registry = None
            return
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter("lightseek_moderation_decisions", "Moderation decisions.",
                                 ["direction", "stage", "category", "language", "action"], registry=self.registry)
        self.latency = Histogram("lightseek_moderation_seconds", "Moderation time per text.", ["direction"],
                                 buckets=MOD_BUCKETS, registry=self.registry)

    def record(self, d: Decision, direction: str) -> None:
        if self.registry is None:
            return
        for cat in d.categories or ["none"]:
            self.decisions.labels(direction, d.stage, cat, d.lang, d.action).inc()
        self.latency.labels(direction).observe(d.ms / 1000)

    def exposition(self) -> str:
        if self.registry is None:
            return ""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
