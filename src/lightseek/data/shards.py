"""Token shards: a tokenised corpus on disk, split into train and validation, read by memmap.

Layout of a shard directory:

    manifest.json                  what is here and how it was made (see `prepare_shards`)
    train_00000.bin, ...           raw little-endian uint32 token ids, `eot_id` after each doc
    val_00000.bin, ...

Each split is one token stream cut into shards of at most `shard_tokens` tokens; a document may
continue from one shard into the next. `TokenShards` reads a split as that single stream, so
sampled windows may cross shard (and document) boundaries, just as they cross `eot` tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightseek.data.corpus import Document
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import ConfigError, DataError
from lightseek.fileio import atomic_write_text

MANIFEST = "manifest.json"
FORMAT = "lightseek-token-shards"
FORMAT_VERSION = 1
DTYPE = np.dtype("<u4")
SPLITS = ("train", "val")
ENCODE_CHUNK_DOCS = 256  # documents per encode_batch call: enough to keep all cores busy
ENCODE_CHUNK_BYTES = 1 << 23  # ... unless they are long: bounds the text held in memory


def prepare_shards(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.01,
    shard_tokens: int = 16_777_216,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenise `documents` into train/val shards under `out_dir`; return the manifest.

    A document goes to validation when a hash of (seed, sha256 of its text) falls below
    `val_fraction`, so the split is deterministic and identical texts share a split. With two
    or more documents each split gets at least one (the last document seen moves across if
    one split would be empty); a lone document gives the last `val_fraction` of its tokens
    (at least one) to validation. Everything is built in a temporary sibling directory and
    renamed into place at the end, so a failure leaves `out_dir` as it was.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    _check_positive(shard_tokens=shard_tokens)
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and not overwrite and _non_empty(out):
        raise DataError(f"{out}: directory exists and is not empty (pass overwrite to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise DataError(f"{out}: cannot create output directory: {e.strerror or e}") from None
    try:
        manifest = _build(documents, tokenizer, tmp, val_fraction, shard_tokens, seed)
        _swap_into_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{out}: cannot write shards: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _build(
    documents: Iterable[Document], tokenizer: Tokenizer, tmp: Path,
    val_fraction: float, shard_tokens: int, seed: int,
) -> dict[str, Any]:
    """Write shards and manifest.json into `tmp`; returns the manifest."""
    writers = {split: _ShardWriter(tmp, split, shard_tokens) for split in SPLITS}
    sources: dict[str, dict[str, Any]] = {}
    try:
        total_docs, total_bytes = _tokenise(
            documents, tokenizer, writers, sources, val_fraction, seed
        )
        splits = {split: writers[split].close() for split in SPLITS}
    finally:
        for writer in writers.values():
            writer.abort()
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dtype": "uint32",
        "byte_order": "little",
        "tokenizer": {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                      "eot_id": tokenizer.eot_id},
        "seed": seed,
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "total_documents": total_docs,
        "total_bytes": total_bytes,
        "total_tokens": sum(s["tokens"] for s in splits.values()),
        "splits": splits,
        "sources": [
            {"source": name, **stats, "sha256": stats["sha256"].hexdigest()}
            for name, stats in sources.items()
        ],
    }
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _tokenise(
    documents: Iterable[Document], tokenizer: Tokenizer, writers: dict[str, _ShardWriter],
    sources: dict[str, dict[str, Any]], val_fraction: float, seed: int,
) -> tuple[int, int]:
    """Encode and route every document; returns (documents, bytes)."""
    # The last document of each split is held back one step, so that if the other split is
    # still empty at the end it can move across without rewriting anything.
    pending: dict[str, np.ndarray | None] = {split: None for split in SPLITS}
    total_docs = total_bytes = 0
    with _progress() as advance:
        for chunk in _chunks(documents):
            encoded = tokenizer.encode_batch([doc.text for doc, _ in chunk])
            chunk_bytes = 0
            for (doc, data), ids in zip(chunk, encoded):
                digest = hashlib.sha256(data).digest()
                tokens = np.asarray(ids + [tokenizer.eot_id], dtype=DTYPE)  # (n_doc,)
                split = split_of(digest, val_fraction, seed)
                if pending[split] is not None:
                    writers[split].write(pending[split])
                pending[split] = tokens
                _count_source(sources, doc.source, data, len(tokens))
                chunk_bytes += len(data)
            total_docs += len(chunk)
            total_bytes += chunk_bytes
            advance(len(chunk), chunk_bytes)
    if total_docs == 0:
        raise DataError("corpus is empty: no documents with text were found")
    _balance(pending, writers, total_docs, val_fraction)
    for split in SPLITS:
        if pending[split] is not None:
            writers[split].write(pending[split])
    return total_docs, total_bytes


def _balance(
    pending: dict[str, np.ndarray | None], writers: dict[str, _ShardWriter],
    total_docs: int, val_fraction: float,
) -> None:
    """Make sure neither split ends up empty (see `prepare_shards`)."""
    for empty, full in (("val", "train"), ("train", "val")):
        if pending[empty] is not None or writers[empty].tokens > 0:
            continue
        held = pending[full]
        assert held is not None  # at least one document exists and went to `full`
        if total_docs >= 2:
            pending[empty], pending[full] = held, None
        else:  # one document (>= 2 tokens with its eot): split it, validation gets the tail
            n_val = min(len(held) - 1, max(1, round(len(held) * val_fraction)))
            pending["train"], pending["val"] = held[:-n_val], held[-n_val:]


def _non_empty(directory: Path) -> bool:
    try:
        return any(directory.iterdir())
    except OSError as e:
        raise DataError(f"{directory}: cannot list directory: {e.strerror or e}") from None


def split_of(content_digest: bytes, val_fraction: float, seed: int) -> str:
    """'val' or 'train' for a document whose text has sha256 ``content_digest``.

    The one split rule of the project: token shards use it per document, and instruction data
    (`lightseek lora train`, `lightseek sft`) per rendered conversation, so an instruction record
    held out from pretraining stays held out from fine-tuning when both use the same seed and
    (no larger) val_fraction.
    """
    return "val" if _unit_hash(seed, content_digest) < val_fraction else "train"


def _unit_hash(seed: int, content_digest: bytes) -> float:
    """A number in [0, 1) fixed by the seed and the document's content."""
    h = hashlib.sha256(f"{seed}:".encode() + content_digest).digest()
    return int.from_bytes(h[:8], "little") / 2.0**64


def _chunks(documents: Iterable[Document]) -> Iterator[list[tuple[Document, bytes]]]:
    """Non-empty documents with their UTF-8 bytes, in groups small enough to hold in memory
    and big enough to batch."""
    chunk: list[tuple[Document, bytes]] = []
    size = 0
    for doc in documents:
        if not doc.text.strip():
            continue
        try:
            data = doc.text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"{doc.source}: document {doc.index} is not valid Unicode "
                f"(unpaired surrogate at character {e.start})"
            ) from None
        chunk.append((doc, data))
        size += len(data)
        if len(chunk) == ENCODE_CHUNK_DOCS or size >= ENCODE_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _count_source(sources: dict[str, dict[str, Any]], source: str, data: bytes, n: int) -> None:
    entry = sources.setdefault(
        source, {"documents": 0, "bytes": 0, "tokens": 0, "sha256": hashlib.sha256()}
    )
    entry["documents"] += 1
    entry["bytes"] += len(data)
    entry["tokens"] += n
    entry["sha256"].update(data)  # over the source's documents, concatenated in order


class _ShardWriter:
    """Appends tokens to `{split}_00000.bin`, `{split}_00001.bin`, ... of at most `limit` each."""

    def __init__(self, directory: Path, split: str, limit: int) -> None:
        self.directory, self.split, self.limit = directory, split, limit
        self.shards: list[dict[str, Any]] = []
        self.tokens = 0
        self.documents = 0
        self._file: Any = None
        self._hash: Any = None
        self._in_shard = 0

    def write(self, tokens: np.ndarray) -> None:
        """Append one document's tokens (or the part of one that belongs to this split)."""
        self.documents += 1
        while len(tokens):
            if self._file is None:
                self._open()
            take = min(len(tokens), self.limit - self._in_shard)
            data = tokens[:take].tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._in_shard += take
            self.tokens += take
            tokens = tokens[take:]
            if self._in_shard == self.limit:
                self._finish()

    def close(self) -> dict[str, Any]:
        """Finish the last shard; returns this split's manifest entry."""
        if self._file is not None:
            self._finish()
        return {"documents": self.documents, "tokens": self.tokens, "shards": self.shards}

    def abort(self) -> None:
        """Close an unfinished shard without recording it (after a failure)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self._hash = hashlib.sha256()
        self._in_shard = 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.shards[-1].update(tokens=self._in_shard, sha256=self._hash.hexdigest())
        self._file = None


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, keeping the old `out` until the new one is there."""
    if not out.exists():
        os.replace(tmp, out)
        return
    backup = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, backup / "old")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(backup / "old", out)
        backup.rmdir()
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def _progress() -> Iterator[Any]:
    """Yields `advance(documents, nbytes)`; draws a rich progress bar only on a terminal."""
    if not sys.stderr.isatty():
        yield lambda docs, nbytes: None
        return
    from rich import progress as rp
    from rich.console import Console

    columns = (
        rp.SpinnerColumn(),
        rp.TextColumn("tokenising {task.fields[docs]:,} docs"),
        rp.FileSizeColumn(),
        rp.TransferSpeedColumn(),
        rp.TimeElapsedColumn(),
    )
    with rp.Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("tokenising", total=None, docs=0)
        fields = bar.tasks[0].fields
        yield lambda docs, nbytes: bar.update(task, advance=nbytes, docs=fields["docs"] + docs)


# ---------------------------------------------------------------------------- reading


def manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check `directory/manifest.json`."""
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: not found (is {directory} a prepared shard directory?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: corrupt manifest ({e.msg})") from None
    _check_manifest(data, path)
    return data


def _check_manifest(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a lightseek token-shard manifest")
    if data.get("version") != FORMAT_VERSION or data.get("dtype") != "uint32":
        raise DataError(f"{path}: unsupported version {data.get('version')!r} or dtype")
    tokenizer = data.get("tokenizer")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("vocab_size"), int):
        raise DataError(f"{path}: manifest has no tokenizer vocab_size")
    splits = data.get("splits")
    if not isinstance(splits, dict):
        raise DataError(f"{path}: manifest has no 'splits'")
    for split, entry in splits.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, list) or not all(map(_valid_shard, shards)):
            raise DataError(f"{path}: malformed shard list for split {split!r}")
        if sum(s["tokens"] for s in shards) != entry.get("tokens"):
            raise DataError(f"{path}: split {split!r} token total does not match its shards")


def _valid_shard(s: Any) -> bool:
    """A shard entry names a plain file in the directory and a positive token count."""
    if not isinstance(s, dict) or not isinstance(s.get("file"), str):
        return False
    plain_name = Path(s["file"]).name == s["file"]
    return plain_name and isinstance(s.get("tokens"), int) and s["tokens"] > 0


class TokenShards:
    """One split of a shard directory, memory-mapped and read as a single token stream."""

    def __init__(self, directory: str | os.PathLike[str], split: str) -> None:
        self.directory = Path(directory)
        self.split = split
        self.manifest = manifest(self.directory)
        if split not in self.manifest["splits"]:
            known = ", ".join(self.manifest["splits"])
            raise DataError(f"{self.directory}: no split {split!r} (has {known})")
        self._arrays = [self._open(s) for s in self.manifest["splits"][split]["shards"]]
        sizes = [len(a) for a in self._arrays]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # (n_shards+1,)

    def _open(self, shard: dict[str, Any]) -> np.memmap:
        file = self.directory / shard["file"]
        expected = shard["tokens"] * DTYPE.itemsize
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{file}: shard file is missing") from None
        except OSError as e:
            raise DataError(f"{file}: cannot read shard: {e.strerror or e}") from None
        if size != expected:
            raise DataError(
                f"{file}: shard is {size} bytes, manifest says {shard['tokens']} tokens "
                f"({expected} bytes); the file is truncated or corrupt"
            )
        return np.memmap(file, dtype=DTYPE, mode="r", shape=(shard["tokens"],))

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest (reads all the data)."""
        for shard, array in zip(self.manifest["splits"][self.split]["shards"], self._arrays):
            if hashlib.sha256(array.tobytes()).hexdigest() != shard["sha256"]:
                file = self.directory / shard["file"]
                raise DataError(f"{file}: sha256 does not match the manifest")

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's stream, across shard boundaries."""
        out = np.empty(length, dtype=np.int64)  # (length,)
        filled = 0
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while filled < length:
            offset = start + filled - int(self._starts[shard])
            take = min(length - filled, len(self._arrays[shard]) - offset)
            out[filled : filled + take] = self._arrays[shard][offset : offset + take]
            filled += take
            shard += 1
        return out

    def _check_window(self, seq_len: int) -> None:
        if len(self) < seq_len + 1:
            raise DataError(
                f"{self.directory}: split {self.split!r} has {len(self)} tokens; "
                f"seq_len {seq_len} needs at least {seq_len + 1}"
            )

    def sample_batch(self, batch_size: int, seq_len: int, seed: int, step: int) -> torch.Tensor:
        """Random windows of seq_len + 1 tokens, a function of (seed, step) only.

        Starts are uniform over the split's whole stream, so a window may cross shard and
        document (eot) boundaries. Returns a LongTensor (batch_size, seq_len + 1); inputs are [:, :-1], targets [:, 1:].
        """
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        if seed < 0 or step < 0:
            raise ConfigError(f"seed and step must be non-negative, got seed={seed}, step={step}")
        self._check_window(seq_len)
        rng = np.random.Generator(np.random.PCG64([seed, step]))
        starts = rng.integers(0, len(self) - seq_len, size=batch_size)  # (B,)
        batch = np.stack([self.read(int(s), seq_len + 1) for s in starts])  # (B, L+1)
        return torch.from_numpy(batch)

    def iter_sequential(
        self, batch_size: int, seq_len: int, max_batches: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Windows in stream order for evaluation: LongTensors (b <= batch_size, seq_len + 1).

        Window k covers tokens [k * seq_len, (k + 1) * seq_len], so consecutive windows share
        one token and their targets ([:, 1:]) tile the stream: every token after the first is
        predicted exactly once. A final partial batch is yielded; a tail shorter than a
        window is dropped.
        """
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        self._check_window(seq_len)
        n_windows = (len(self) - 1) // seq_len
        for batch_index, first in enumerate(range(0, n_windows, batch_size)):
            if max_batches is not None and batch_index >= max_batches:
                return
            rows = range(first, min(first + batch_size, n_windows))
            batch = np.stack([self.read(k * seq_len, seq_len + 1) for k in rows])  # (b, L+1)
            yield torch.from_numpy(batch)

    def __repr__(self) -> str:
        return f"TokenShards({str(self.directory)!r}, {self.split!r}, tokens={len(self)})"


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
