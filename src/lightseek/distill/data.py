"""Domain-labelled token streams for distillation: ``DOMAIN=PATH`` sources, each split into
train and validation by the project's one document hash rule (`data.shards.split_of`), so a
document the base model held out stays held out here when the seeds and val_fraction agree.

Training rows are windows at seeded positions of a seeded domain choice: a step's rows depend
on (seed, step) alone, so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightseek.config import field
from lightseek.errors import ConfigError, DataError


@dataclass
class DistillDataConfig:
    sources: list[str] = field(default_factory=list, help=(
        "DOMAIN=PATH items (files, folders or glob patterns of text or record files); a domain may repeat."))
    text_field: str = field("text", help="Record field(s) holding the text (comma-separated candidates).")
    val_fraction: float = field(0.1, help="Share of each domain's documents held out for validation.")
    split_seed: int = field(-1, help="Seed of the document split (-1 = the student's base run seed, else train.seed).")
    weights: dict[str, float] = field(default_factory=dict, help=(
        "Sampling weight per domain for training rows (default: equal weights)."))
    cache: str = field("", help="Folder caching the tokenized streams between runs (empty: none).")

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for d, w in self.weights.items():
            if not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"data.weights.{d} must be a number >= 0, got {w!r}")


def parse_sources(items: list[str]) -> dict[str, list[str]]:
    """``DOMAIN=PATH`` items -> {domain: [paths]} in order of first appearance."""
    out: dict[str, list[str]] = {}
    for item in items:
        domain, sep, path = item.partition("=")
        if not sep or not domain.strip() or not path.strip():
            raise ConfigError(f"data.sources: {item!r} is not DOMAIN=PATH")
        out.setdefault(domain.strip(), []).append(path.strip())
    if not out:
        raise ConfigError("data.sources is empty: give DOMAIN=PATH items (e.g. medical=data/med.jsonl)")
    return out


@dataclass
class DomainStreams:
    """Per-domain token streams (int32) of each split."""

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    documents: dict[str, dict[str, int]]  # domain -> {"train": n, "val": n}

    def describe(self) -> str:
        return ", ".join(f"{d} {len(self.train[d]):,}/{len(self.val[d]):,} tokens" for d in self.train)


def build_streams(dc: DistillDataConfig, tokenizer, split_seed: int) -> DomainStreams:
    """Tokenize every domain's documents (each followed by end-of-text) into train/val streams."""
    from lightseek.data.corpus import iter_documents
    from lightseek.data.shards import split_of

    sources = parse_sources(dc.sources)
    key = _cache_key(sources, dc, tokenizer.sha256, split_seed)
    cached = _load_cache(dc.cache, key)
    if cached is not None:
        return cached
    train, val, docs = {}, {}, {}
    for domain, paths in sources.items():
        ids = {"train": [], "val": []}
        counts = {"train": 0, "val": 0}
        for doc in iter_documents(paths, text_field=dc.text_field):
            split = split_of(hashlib.sha256(doc.text.encode("utf-8")).digest(), dc.val_fraction, split_seed)
            ids[split] += tokenizer.encode(doc.text) + [tokenizer.eot_id]
            counts[split] += 1
        if not counts["train"] or not counts["val"]:
            raise DataError(f"domain {domain}: {counts['train']} training and {counts['val']} validation documents "
                            f"in {', '.join(paths)}; each split needs at least one (more documents or another "
                            f"data.val_fraction)")
        train[domain], val[domain] = (np.asarray(ids[s], dtype=np.int32) for s in ("train", "val"))
        docs[domain] = counts
    streams = DomainStreams(train, val, docs)
    _save_cache(dc.cache, key, streams)
    return streams


def _cache_key(sources: dict[str, list[str]], dc: DistillDataConfig, tokenizer_sha: str, split_seed: int) -> str:
    from lightseek.adapters.store import files_sha256
    from lightseek.data.corpus import expand_paths

    files = {d: files_sha256(sorted(expand_paths(p))) for d, p in sources.items()}
    blob = json.dumps([files, dc.text_field, dc.val_fraction, split_seed, tokenizer_sha], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_cache(folder: str, key: str) -> DomainStreams | None:
    path = Path(folder) / f"streams-{key}.npz" if folder else None
    if path is None or not path.is_file():
        return None
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return DomainStreams({d: z[f"train/{d}"] for d in meta["domains"]}, {d: z[f"val/{d}"] for d in meta["domains"]},
                         meta["documents"])


def _save_cache(folder: str, key: str, s: DomainStreams) -> None:
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"streams-{key}.npz"
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays = {f"train/{d}": a for d, a in s.train.items()} | {f"val/{d}": a for d, a in s.val.items()}
    np.savez(tmp, meta=json.dumps({"domains": list(s.train), "documents": s.documents}), **arrays)
    tmp.replace(path)


def domain_weights(domains: list[str], weights: dict) -> np.ndarray:
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise ConfigError(f"data.weights names {', '.join(unknown)}, which no source has (domains: {', '.join(domains)})")
    w = np.asarray([float(weights.get(d, 1.0)) for d in domains])
    if w.sum() <= 0:
        raise ConfigError("data.weights: at least one domain needs a positive weight")
    return w / w.sum()


def sample_rows(streams: dict[str, np.ndarray], probs: np.ndarray, n: int, seq_len: int, seed: int,
                step: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` windows of seq_len + 1 tokens: (rows (n, seq_len + 1) int64, each row's domain)."""
    rng = np.random.default_rng([seed, step, 7])
    domains = list(streams)
    picks = rng.choice(len(domains), size=n, p=probs)
    rows, names = [], []
    for i in picks:
        s = streams[domains[i]]
        if len(s) < seq_len + 1:
            raise DataError(f"domain {domains[i]}: {len(s)} training tokens, fewer than one window of {seq_len + 1}")
        start = int(rng.integers(0, len(s) - seq_len))
        rows.append(s[start:start + seq_len + 1])
        names.append(domains[i])
    return torch.from_numpy(np.stack(rows).astype(np.int64)), names
