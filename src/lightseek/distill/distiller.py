"""The DataDistiller (`lightseek distill data`): inputs -> domain -> that domain's expert
writes -> the base model refines or judges -> an instruction dataset.

For every input (a prompt, or a passage the expert explains):

1. classify its domain (a `lightseek domains` classifier, or one fixed domain);
2. the domain's expert answers (`experts`: a checkpoint, checkpoint+adapter, adapter, or an
   OpenAI-compatible endpoint URL#MODEL; ``*`` is the fallback for other domains);
3. the refiner (usually the base model) rewrites the answer (``mode=refine``) or judges it
   (``mode=judge``); empty answers, refusals by the judge and empty rewrites are rejected and
   written to ``rejected.jsonl`` with the stage and the reason, never dropped silently.

Accepted records are written as OpenAI-style ``messages`` (what `lora train` and `sft` read),
each with its provenance: source file, record index and sha256, domain and confidence, expert
and its version (weights sha256), refiner, prompt templates and the record's seed.

Deterministic and resumable: each record's seed derives from the run seed and the input's
hash; every generation is cached under a key of (input, stage configuration), appended and
fsynced as it completes, so a killed run resumes where it stopped, and the outputs are
assembled in input order at the end: the same seed gives byte-identical files, resumed or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightseek.config import field, to_dict
from lightseek.distill.generators import GenerationConfig, make_generator
from lightseek.errors import ConfigError, DataError


@dataclass
class PromptConfig:
    prompt: str = field("{text}", help="What the expert is asked for a prompt input ({text}, {domain}).")
    passage: str = field("Explain the key points of this {domain} text:\n\n{text}", help=(
        "What the expert is asked for a passage input ({text}, {domain})."))
    refine: str = field(
        "Improve this answer so it is correct, clear and complete. Reply with the improved answer only.\n\n"
        "Question: {prompt}\n\nAnswer: {answer}", help="The refiner's task in mode=refine ({prompt}, {answer}, {domain}).")
    judge: str = field(
        "Is this answer correct and helpful? Reply yes or no.\n\nQuestion: {prompt}\n\nAnswer: {answer}",
        help="The refiner's task in mode=judge ({prompt}, {answer}, {domain}).")
    accept: str = field(r"^\W*(yes|accept)", help="Regex (case-insensitive) a judge's verdict must match to accept.")


@dataclass
class DistillerConfig:
    inputs: list[str] = field(default_factory=list, help="Files, folders or globs of inputs (.jsonl/.json/.csv records or .txt/.md).")
    text_field: str = field("text,prompt,question,instruction", help="Record field(s) holding the input text.")
    kind: Literal["prompt", "passage"] = field("prompt", help="Inputs are prompts to answer or passages to explain.")
    classifier: str = field("", help="A `lightseek domains train` model folder (empty: every input is `domain`).")
    domain: str = field("general", help="The domain of every input when no classifier is given.")
    experts: dict[str, str] = field(default_factory=dict, help=(
        "Domain -> expert (CKPT, CKPT+ADAPTER, ADAPTER or http(s)://HOST/v1#MODEL); '*' covers other domains."))
    refiner: str = field("", help="The model that refines or judges the expert's answer (empty: keep it as is).")
    mode: Literal["refine", "judge"] = field("refine", help="refine: the refiner rewrites the answer; judge: it accepts or rejects.")
    prompts: PromptConfig = field(default_factory=PromptConfig, help="Prompt templates.")
    generate: GenerationConfig = field(default_factory=GenerationConfig, help="Generation settings (all models).")
    min_chars: int = field(1, help="Answers shorter than this many characters are rejected.")
    max_chars: int = field(0, help="Answers longer than this many characters are rejected (0 = no limit).")
    max_repetition: float = field(0.5, help=(
        "Answers whose share of repeated 4-grams (of words; of characters in Chinese text) is above this are "
        "rejected as degenerate loops (1 = off)."))
    max_inputs: int = field(0, help="Process at most this many inputs (0 = all).")
    max_per_source: int = field(0, help="Take at most this many inputs from each file (0 = all).")
    scorer: str = field("", help=(
        "A local model (usually the base) that scores each accepted answer by its mean log-probability per token "
        "as the reply to its prompt, recorded as quality.logprob (empty: no score)."))
    min_logprob: float = field(-100.0, help="With a scorer: answers scoring below this are rejected (-100: none).")
    seed: int = field(0, help="Run seed: each record's seed derives from it and the input's hash.")
    out: str = field("runs/distilled", help="Output folder: data.jsonl, rejected.jsonl, manifest.json, cache/.")
    chunk: int = field(64, help="Inputs per unit of work (the cache is written after each).")

    @property
    def expert_template(self) -> str:
        return self.prompts.prompt if self.kind == "prompt" else self.prompts.passage

    @property
    def refiner_template(self) -> str:
        return self.prompts.refine if self.mode == "refine" else self.prompts.judge

    def __post_init__(self) -> None:
        if not self.experts:
            raise ConfigError("experts: map at least one domain (or '*') to an expert model")
        specs = [(f"experts.{d}", spec) for d, spec in self.experts.items()] + [("refiner", self.refiner)]
        for key, spec in specs:
            if spec.startswith(("http://", "https://")) and not spec.partition("#")[2]:
                raise ConfigError(f"{key}: endpoint {spec!r} needs its model after '#', "
                                  f"e.g. http://127.0.0.1:8000/v1#base")
        if self.chunk < 1 or self.min_chars < 0 or self.max_inputs < 0 or self.max_per_source < 0:
            raise ConfigError("chunk must be >= 1, min_chars, max_inputs and max_per_source >= 0")
        if self.scorer.startswith(("http://", "https://")):
            raise ConfigError("scorer: a local checkpoint is needed (an endpoint's log-probabilities are not read)")
        if self.max_chars < 0 or 0 < self.max_chars < self.min_chars:
            raise ConfigError(f"max_chars must be 0 (no limit) or >= min_chars ({self.min_chars}), "
                              f"got {self.max_chars}")
        if not 0.0 <= self.max_repetition <= 1.0:
            raise ConfigError(f"max_repetition must be in [0, 1], got {self.max_repetition}")
        try:
            re.compile(self.prompts.accept)
        except re.error as e:
            raise ConfigError(f"prompts.accept is not a regex: {e}") from None


@dataclass
class Item:
    """One input on its way through the stages."""

    source: str
    index: int
    text: str
    sha256: str
    seed: int  # derived from the run seed and the input's hash: the same wherever the input sits
    domain: str = ""
    confidence: float = 1.0


def read_inputs(dc: DistillerConfig) -> list[Item]:
    from lightseek.data.corpus import iter_documents

    items, per_source = [], {}
    for doc in iter_documents(dc.inputs, text_field=dc.text_field):
        if dc.max_per_source and per_source.get(doc.source, 0) >= dc.max_per_source:
            continue
        per_source[doc.source] = per_source.get(doc.source, 0) + 1
        text = doc.text.strip()
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        seed = int.from_bytes(hashlib.sha256(f"{dc.seed}:{sha}".encode()).digest()[:4], "little")
        items.append(Item(doc.source, doc.index, text, sha, seed))
        if dc.max_inputs and len(items) >= dc.max_inputs:
            break
    if not items:
        raise DataError(f"no inputs with text in {', '.join(dc.inputs) or '(inputs is empty)'} "
                        f"(text fields: {dc.text_field})")
    return items


class StageCache:
    """Append-only JSONL of finished generations, keyed by (input, stage configuration). A line
    cut short by a kill is ignored on reading (and its work is redone)."""

    def __init__(self, path: Path, config: dict):
        self.path = path
        self.tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        self.done: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the unfinished last line of a killed run
                self.done[rec["key"]] = rec["out"]

    def key(self, item: Item, after: str = "") -> str:
        """The item's key; ``after``: the tag of the stage whose output this stage reads."""
        return f"{self.tag}:{after}:{item.sha256}"

    def add(self, entries: list[tuple[str, dict]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if f.tell() and not self.path.read_bytes().endswith(b"\n"):
                f.write("\n")  # end a line a kill cut short, so it stays unreadable alone
            for key, out in entries:
                f.write(json.dumps({"key": key, "out": out}, ensure_ascii=False, sort_keys=True) + "\n")
                self.done[key] = out
            f.flush()
            os.fsync(f.fileno())


def classify(items: list[Item], dc: DistillerConfig) -> dict:
    """Set each item's domain and confidence; returns the classifier's description."""
    if not dc.classifier:
        for it in items:
            it.domain, it.confidence = dc.domain, 1.0
        return {"fixed": dc.domain}
    from lightseek.data.domains import DomainClassifier

    clf = DomainClassifier.load(dc.classifier)
    for it, (domain, conf) in zip(items, clf.predict([it.text for it in items])):
        it.domain, it.confidence = domain, round(float(conf), 6)
    from lightseek.fileio import file_sha256

    files = sorted(p for p in Path(dc.classifier).iterdir() if p.is_file())
    return {"path": dc.classifier, "sha256": hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()}


def expert_for(domain: str, dc: DistillerConfig) -> str | None:
    return dc.experts.get(domain, dc.experts.get("*"))


def _fill(template: str, **values) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"prompt template {template[:40]!r}…: {e!r} (use {{text}}, {{prompt}}, {{answer}}, {{domain}}; "
                          f"double literal braces)") from None


def user_prompt(it: Item, dc: DistillerConfig) -> str:
    return _fill(dc.expert_template, text=it.text, domain=it.domain)


def run_stage(items: list[Item], cache: StageCache, make_prompt: Callable[[Item], str], generator,
              after: str = "") -> int:
    """Generate for the items the cache lacks, in one batch, and cache the answers; returns how
    many were generated."""
    todo = [it for it in items if cache.key(it, after) not in cache.done]
    if todo:
        answers = generator.generate([make_prompt(it) for it in todo], [it.seed for it in todo])
        cache.add([(cache.key(it, after), a) for it, a in zip(todo, answers)])
    return len(todo)


class Models:
    """Generators by spec, loaded once, on first use."""

    def __init__(self, gc: GenerationConfig):
        self.gc, self.loaded = gc, {}

    def __call__(self, spec: str):
        if spec not in self.loaded:
            self.loaded[spec] = make_generator(spec, self.gc)
        return self.loaded[spec]


def distill_data(dc: DistillerConfig, show_progress: bool = True, console=None) -> dict:
    """Run the DataDistiller; returns the manifest (counts, models, files written)."""
    from lightseek.progress import progress

    out = Path(dc.out)
    items = read_inputs(dc)
    classifier = classify(items, dc)
    models = Models(dc.generate)
    routed = [it for it in items if expert_for(it.domain, dc)]
    refiner = models(dc.refiner) if dc.refiner else None
    expert_caches: dict[str, StageCache] = {}
    refine_cache = None
    if refiner is not None:
        refine_cache = StageCache(out / "cache" / "refine.jsonl", {
            "refiner": refiner.version, "mode": dc.mode, "template": dc.refiner_template, "generate": to_dict(dc.generate),
            "seed": dc.seed})

    def expert_cache(spec: str) -> StageCache:
        if spec not in expert_caches:
            gen = models(spec)
            expert_caches[spec] = StageCache(out / "cache" / f"expert-{_slug(spec)}.jsonl", {
                "expert": gen.version, "kind": dc.kind, "templates": [dc.prompts.prompt, dc.prompts.passage],
                "generate": to_dict(dc.generate), "seed": dc.seed})
        return expert_caches[spec]

    def expert_answer(it: Item) -> dict:
        cache = expert_cache(expert_for(it.domain, dc))
        return cache.done[cache.key(it)]

    def refine_prompt(it: Item) -> str:
        return _fill(dc.refiner_template, prompt=user_prompt(it, dc), answer=expert_answer(it)["text"], domain=it.domain)

    generated = 0
    with progress(len(routed) if show_progress else 0, "distilling") as advance:
        for start in range(0, len(routed), dc.chunk):
            chunk = routed[start:start + dc.chunk]
            for spec in sorted({expert_for(it.domain, dc) for it in chunk}):
                mine = [it for it in chunk if expert_for(it.domain, dc) == spec]
                generated += run_stage(mine, expert_cache(spec), lambda it: user_prompt(it, dc), models(spec))
                if refine_cache is not None:
                    usable = [it for it in mine if _reject_answer(expert_answer(it), dc) is None]
                    generated += run_stage(usable, refine_cache, refine_prompt, refiner, after=expert_cache(spec).tag)
            advance(len(chunk))
    score = None
    if dc.scorer:
        from lightseek.distill.generators import answer_logprob

        scorer = models(dc.scorer)

        def score(prompt: str, answer: str) -> float:
            return answer_logprob(scorer.local, prompt, answer)
    kept, rejected = assemble(items, dc, expert_cache, models, refine_cache, score)
    return write_outputs(out, dc, kept, rejected, {
        "classifier": classifier, "experts": {s: c.tag for s, c in expert_caches.items()},
        "models": {s: g.version for s, g in models.loaded.items()}, "generated_now": generated})


def _slug(spec: str) -> str:
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def repetition(text: str, n: int = 4) -> float:
    """Share of the text's n-grams that repeat an earlier one: 0 for text that never repeats
    itself, near 1 for a loop. Units are words, or characters where the text is mostly Chinese
    (which has no spaces between words)."""
    units = list(text.replace(" ", "")) if len(_CJK.findall(text)) > len(text) / 3 else text.lower().split()
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _reject_text(text: str, dc: DistillerConfig, what: str = "answer") -> str | None:
    """Why a generated text cannot be used (too short, too long, a loop), or None."""
    n = len(text)
    if n < max(dc.min_chars, 1):
        return f"{what} of {n} characters (min_chars {max(dc.min_chars, 1)})"
    if dc.max_chars and n > dc.max_chars:
        return f"{what} of {n} characters (max_chars {dc.max_chars})"
    rep = repetition(text)
    if rep > dc.max_repetition:
        return f"{what} repeats itself: {rep:.0%} of its 4-grams are repeats (max_repetition {dc.max_repetition:g})"
    return None


def _reject_answer(answer: dict, dc: DistillerConfig) -> str | None:
    """Why an expert's answer cannot be used, or None."""
    return _reject_text(answer["text"], dc)


def assemble(items: list[Item], dc: DistillerConfig, expert_cache, models: Models, refine_cache: StageCache | None,
             score: Callable[[str, str], float] | None = None) -> tuple[list, list]:
    """Accepted records and rejections, in input order, from the caches (and the scorer)."""
    kept, rejected = [], []
    for it in items:
        base = {"source": {"file": it.source, "index": it.index, "sha256": it.sha256},
                "domain": it.domain, "confidence": it.confidence, "seed": it.seed}
        spec = expert_for(it.domain, dc)
        if spec is None:
            rejected.append({**base, "stage": "route", "reason": f"no expert for domain {it.domain!r}"})
            continue
        cache = expert_cache(spec)
        answer = cache.done[cache.key(it)]
        prompt = user_prompt(it, dc)
        trace = {**base, "expert": models(spec).version,
                 "prompts": {"expert": dc.expert_template}}
        why = _reject_answer(answer, dc)
        if why:
            rejected.append({**trace, "stage": "expert", "reason": why, "prompt": prompt, "answer": answer["text"]})
            continue
        final = answer["text"]
        if refine_cache is not None:
            verdict = refine_cache.done[refine_cache.key(it, cache.tag)]["text"]
            trace.update(refiner={"mode": dc.mode, **models(dc.refiner).version},
                         expert_answer=answer["text"])
            trace["prompts"]["refiner"] = dc.refiner_template
            if dc.mode == "judge":
                trace["verdict"] = verdict
                if not re.search(dc.prompts.accept, verdict, flags=re.IGNORECASE):
                    rejected.append({**trace, "stage": "judge", "prompt": prompt,
                                     "reason": f"verdict {verdict[:60]!r} does not match {dc.prompts.accept!r}"})
                    continue
            elif why := _reject_text(verdict, dc, "rewrite"):
                rejected.append({**trace, "stage": "refine", "prompt": prompt, "reason": why, "rewrite": verdict})
                continue
            else:
                final = verdict
        if score is not None:
            logprob = round(score(prompt, final), 4)
            trace["quality"] = {"logprob": logprob, "scorer": models(dc.scorer).version}
            if not logprob >= dc.min_logprob:  # a NaN score (nothing to score) is rejected too
                rejected.append({**trace, "stage": "score", "prompt": prompt, "answer": final,
                                 "reason": f"mean log-probability {logprob} under the scorer (min_logprob "
                                           f"{dc.min_logprob:g})"})
                continue
        kept.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": final}],
                     **trace})
    return kept, rejected


def write_outputs(out: Path, dc: DistillerConfig, kept: list, rejected: list, info: dict) -> dict:
    """data.jsonl, rejected.jsonl and manifest.json, each written atomically."""
    from lightseek.fileio import atomic_write_text, write_json_atomic

    def jsonl(rows: list) -> str:
        return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "data.jsonl", jsonl(kept))
    atomic_write_text(out / "rejected.jsonl", jsonl(rejected))
    by_domain: dict[str, dict[str, int]] = {}
    for rows, what in ((kept, "kept"), (rejected, "rejected")):
        for r in rows:
            by_domain.setdefault(r["domain"], {"kept": 0, "rejected": 0})[what] += 1
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["stage"]] = reasons.get(r["stage"], 0) + 1
    manifest = {"inputs": len(kept) + len(rejected), "kept": len(kept), "rejected": len(rejected),
                "rejected_by_stage": reasons, "by_domain": by_domain, "config": to_dict(dc),
                "files": {"data": str(out / "data.jsonl"), "rejected": str(out / "rejected.jsonl")},
                **{k: v for k, v in info.items() if k != "generated_now"}}
    write_json_atomic(out / "manifest.json", manifest)
    return {**manifest, "generated_now": info.get("generated_now", 0)}
