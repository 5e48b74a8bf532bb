"""The pipeline's steps. Each takes a batch of `Record`s, may change their text or metadata,
and says for each one why it is removed (a readable reason) or None to keep it. `build_steps`
makes the configured steps in order; heavy dependencies load only for the steps used."""

from __future__ import annotations

import re

import numpy as np

from lightseek.data.pipeline.config import PipelineConfig
from lightseek.data.pipeline.readers import Record


def _is_chinese(rec: Record) -> bool:
    if "lang" in rec.meta:
        return rec.meta["lang"] == "zh"
    from lightseek.data.pipeline.lang import cjk_share

    return cjk_share(rec.text[:2000]) >= 0.3


class Step:
    name = ""
    stateful = False  # keeps state across shards that a resumed run must restore

    def apply(self, rec: Record) -> str | None:
        raise NotImplementedError

    def apply_batch(self, records: list[Record]) -> list[str | None]:
        return [self.apply(r) for r in records]

    def take_state(self) -> dict[str, np.ndarray]:
        """What this step added to its global state since the last call (dedup only)."""
        return {}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Re-add the state a completed shard saved."""


class Normalize(Step):
    name = "normalize"

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg.normalize

    def apply(self, rec: Record) -> str | None:
        from lightseek.data.pipeline.normalize import normalize_text

        rec.text = normalize_text(rec.text, self.cfg)
        if len(rec.text) < self.cfg.min_chars:
            return f"length {len(rec.text)} < {self.cfg.min_chars} chars after normalising"
        return None


class Lang(Step):
    name = "lang"

    def __init__(self, cfg: PipelineConfig) -> None:
        from lightseek.data.pipeline.lang import LanguageId

        self.cfg = cfg.lang
        self.lid = LanguageId(cfg.lang.cjk_ratio, cfg.lang.sample_chars, cfg.lang.en_function_ratio)

    def apply(self, rec: Record) -> str | None:
        code, prob = self.lid.identify(rec.text)
        rec.meta["lang"], rec.meta["lang_score"] = code, prob
        if self.cfg.keep and code not in self.cfg.keep:
            return f"language {code} ({prob:.2f}) not in [{', '.join(self.cfg.keep)}]"
        if prob < self.cfg.min_confidence:
            return f"language confidence {prob:.2f} < {self.cfg.min_confidence:.2f} ({code})"
        return None


class Quality(Step):
    name = "quality"

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg.quality

    def apply(self, rec: Record) -> str | None:
        from lightseek.data.pipeline.quality import quality_problem

        return quality_problem(rec.text, _is_chinese(rec), self.cfg)


class Phrases(Step):
    name = "phrases"

    def __init__(self, cfg: PipelineConfig) -> None:
        self.patterns = [re.compile(p, re.IGNORECASE) for p in cfg.phrases.patterns]

    def apply(self, rec: Record) -> str | None:
        for p in self.patterns:
            m = p.search(rec.text)
            if m:
                return f"phrase {m.group(0)!r} (pattern {p.pattern!r})"
        return None


class ExactDedupStep(Step):
    name = "exact_dedup"
    stateful = True

    def __init__(self, cfg: PipelineConfig) -> None:
        from lightseek.data.pipeline.dedup import ExactDedup

        self.dedup = ExactDedup()

    def apply(self, rec: Record) -> str | None:
        from lightseek.data.pipeline.dedup import content_key

        return self.dedup.check(content_key(rec.text))

    def take_state(self):
        return self.dedup.take_added()

    def restore(self, state) -> None:
        self.dedup.restore(state)


class NearDedupStep(Step):
    name = "near_dedup"
    stateful = True

    def __init__(self, cfg: PipelineConfig) -> None:
        from lightseek.data.pipeline.dedup import NearDedup

        self.cfg = cfg.dedup
        self.dedup = NearDedup(cfg.dedup)

    def apply(self, rec: Record) -> str | None:
        from lightseek.data.pipeline.dedup import content_key, shingles

        return self.dedup.check(content_key(rec.text), shingles(rec.text, _is_chinese(rec), self.cfg))

    def take_state(self):
        return self.dedup.take_added()

    def restore(self, state) -> None:
        self.dedup.restore(state)


class Pii(Step):
    name = "pii"

    def __init__(self, cfg: PipelineConfig) -> None:
        from lightseek.data.pipeline.pii import PiiScrubber

        self.scrubber = PiiScrubber(cfg.pii.types)

    def apply(self, rec: Record) -> str | None:
        rec.text, counts = self.scrubber.scrub(rec.text)
        rec.meta["pii"] = counts
        return None


class Domain(Step):
    name = "domain"

    def __init__(self, cfg: PipelineConfig) -> None:
        from lightseek.data.pipeline.domain import load_tagger

        self.cfg = cfg.domain
        self.tagger = load_tagger(cfg.domain)

    def apply_batch(self, records: list[Record]) -> list[str | None]:
        out: list[str | None] = []
        for start in range(0, len(records), self.cfg.batch_size):
            batch = records[start:start + self.cfg.batch_size]
            for rec, (domain, conf) in zip(batch, self.tagger.predict([r.text for r in batch])):
                rec.meta["domain"], rec.meta["domain_confidence"] = domain, round(float(conf), 4)
                keep = not self.cfg.keep or domain in self.cfg.keep
                out.append(None if keep else f"domain {domain} ({conf:.2f}) not in [{', '.join(self.cfg.keep)}]")
        return out


STEPS: dict[str, type[Step]] = {s.name: s for s in (
    Normalize, Lang, Quality, Phrases, ExactDedupStep, NearDedupStep, Pii, Domain)}


def build_steps(cfg: PipelineConfig) -> list[Step]:
    return [STEPS[name](cfg) for name in cfg.steps]
