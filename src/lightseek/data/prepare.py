"""From raw text to a training-ready folder: tokenizer (trained or given) plus token shards.

The folder holds ``manifest.json``, the shard files and a copy of ``tokenizer.json``, so a run
needs only this folder to train.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lightseek.data.corpus import Document, iter_documents
from lightseek.data.shards import prepare_shards
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import DataError

TOKENIZER_FILE = "tokenizer.json"


def take_bytes(documents: Iterable[Document], max_bytes: int) -> Iterator[Document]:
    """Documents until ``max_bytes`` of UTF-8 text have been yielded (0 = no limit)."""
    total = 0
    for doc in documents:
        if max_bytes and total >= max_bytes:
            return
        total += len(doc.text.encode("utf-8"))
        yield doc


def train_tokenizer(documents: Iterable[Document], vocab_size: int, max_bytes: int) -> Tokenizer:
    texts = (d.text for d in take_bytes(documents, max_bytes))
    first = next(texts, None)
    if first is None:
        raise DataError("corpus is empty: no text to train the tokenizer on")
    return Tokenizer.train(itertools.chain([first], texts), vocab_size=vocab_size)


def prepare_dataset(documents: Callable[[], Iterable[Document]], out_dir: str | Path, *,
                    tokenizer: Tokenizer | None = None, vocab_size: int = 4096,
                    tokenizer_bytes: int = 20_000_000, max_bytes: int = 0,
                    val_fraction: float = 0.02, seed: int = 0, overwrite: bool = False) -> dict:
    """Train a tokenizer on the first ``tokenizer_bytes`` (unless one is given), then write
    shards and the tokenizer into ``out_dir``. ``documents`` is called once per pass."""
    out = Path(out_dir)
    if not overwrite and out.is_dir() and any(out.iterdir()):  # fail before the slow part
        raise DataError(f"{out}: directory exists and is not empty (pass --overwrite to replace it)")
    if tokenizer is None:
        tokenizer = train_tokenizer(documents(), vocab_size, min(tokenizer_bytes, max_bytes or tokenizer_bytes))
    manifest = prepare_shards(take_bytes(documents(), max_bytes), tokenizer, out_dir,
                              val_fraction=val_fraction, seed=seed, overwrite=overwrite)
    tokenizer.save(Path(out_dir) / TOKENIZER_FILE)
    return manifest


def documents_from(paths: list[str], text_field: str) -> Callable[[], Iterator[Document]]:
    if not paths:
        raise DataError("no input files given (set data.inputs)")
    return lambda: iter_documents(paths, text_field=text_field)
