"""Exact and near-duplicate removal, global across shards.

`ExactDedup` keys each text by the sha256 of its case-folded, whitespace-collapsed form.
`NearDedup` keeps a MinHash (datasketch) of every kept text in an LSH index; a text whose
estimated Jaccard similarity to a kept one reaches the threshold is dropped. Shingles are word
n-grams, or character n-grams for Chinese. Both remember what each shard added
(`take_added`), so the runner can save that beside the shard and rebuild the exact state
when a killed run resumes (`restore`).
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

from lightseek.data.pipeline.config import DedupConfig
from lightseek.errors import ConfigError

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def content_key(text: str) -> str:
    """sha256 hex of the text case-folded with all whitespace runs made one space."""
    return hashlib.sha256(_SPACE.sub(" ", text.casefold()).strip().encode("utf-8")).hexdigest()


def shingles(text: str, chinese: bool, cfg: DedupConfig) -> set[bytes]:
    """Character n-grams (Chinese, whitespace removed) or lower-cased word n-grams."""
    if chinese:
        units, n = _SPACE.sub("", text.casefold()), cfg.char_shingle
        return {units[i:i + n].encode("utf-8") for i in range(max(1, len(units) - n + 1))} if units else set()
    words, n = _WORD.findall(text.casefold()), cfg.word_shingle
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(max(1, len(words) - n + 1))} if words else set()


class ExactDedup:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.added: list[str] = []

    def check(self, key: str) -> str | None:
        """A reason when ``key`` was seen before; otherwise remember it and return None."""
        if key in self.seen:
            return f"exact duplicate of {key[:16]}"
        self.seen.add(key)
        self.added.append(key)
        return None

    def take_added(self) -> dict[str, np.ndarray]:
        added, self.added = self.added, []
        return {"exact_keys": np.array(added, dtype="U64")}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.seen.update(str(k) for k in state["exact_keys"])


class NearDedup:
    def __init__(self, cfg: DedupConfig) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            raise ConfigError('the near_dedup step needs datasketch: pip install "lightseek[data]"') from None
        import inspect

        self.cfg = cfg
        self._minhash = MinHash
        # datasketch >= 2 has several hashing schemes: pin one, so saved signatures stay comparable
        self._scheme = {"scheme": "affine32"} if "scheme" in inspect.signature(MinHash.__init__).parameters else {}
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        self.signatures: dict[str, np.ndarray] = {}
        # drawing the permutations is most of a new MinHash's cost: draw them once
        self._scheme["permutations"] = self._minhash(num_perm=cfg.num_perm, seed=cfg.seed, **self._scheme).permutations
        self.added: list[str] = []

    def signature(self, grams: set[bytes]):
        m = self._minhash(num_perm=self.cfg.num_perm, seed=self.cfg.seed, hashfunc=zlib.crc32, **self._scheme)
        m.update_batch(list(grams))  # a minimum: the order does not matter
        return m

    def check(self, key: str, grams: set[bytes]) -> str | None:
        """A reason when the shingle set is close to a kept text's; otherwise index it."""
        if not grams:
            return None
        if key in self.signatures:
            return f"near-duplicate of {key[:16]} (jaccard~1.00)"
        m = self.signature(grams)
        best, best_key = -1.0, ""
        for other in sorted(self.lsh.query(m)):
            j = float(np.mean(self.signatures[other] == m.hashvalues))
            if j > best:
                best, best_key = j, other
        if best >= self.cfg.threshold:
            return f"near-duplicate of {best_key[:16]} (jaccard~{best:.2f})"
        self._add(key, m)
        self.added.append(key)
        return None

    def _add(self, key: str, m) -> None:
        self.lsh.insert(key, m)
        self.signatures[key] = m.hashvalues

    def take_added(self) -> dict[str, np.ndarray]:
        added, self.added = self.added, []
        sig = np.stack([self.signatures[k] for k in added]) if added else np.zeros((0, self.cfg.num_perm), np.uint64)
        return {"near_keys": np.array(added, dtype="U64"), "near_signatures": sig.astype(np.uint64)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        for key, hv in zip(state["near_keys"], state["near_signatures"]):
            m = self._minhash(num_perm=self.cfg.num_perm, seed=self.cfg.seed, hashvalues=hv, **self._scheme)
            self._add(str(key), m)
