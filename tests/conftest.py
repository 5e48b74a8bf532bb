"""Shared fixtures: a small real text corpus and a prepared debug dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def corpus_text() -> str:
    """About 150 KB of real English: tinyshakespeare when ../shared/data is here, otherwise the
    standard library's documentation (present wherever Python is)."""
    f = SHARED / "en_tinyshakespeare" / "input.txt"
    if f.exists():
        return f.read_text(encoding="utf-8")[:150_000]
    from lightseek.data.corpus import stdlib_documents

    return "\n\n".join(d.text for d in stdlib_documents(150_000))


@pytest.fixture(scope="session")
def debug_data(tmp_path_factory) -> Path:
    """A prepared shard folder (with tokenizer.json) for the debug preset."""
    from lightseek.data.corpus import Document
    from lightseek.data.prepare import prepare_dataset

    text = corpus_text()
    docs = [Document("corpus", i, chunk) for i, chunk in enumerate(text.split("\n\n")) if chunk.strip()]
    out = tmp_path_factory.mktemp("debug_data") / "data"
    prepare_dataset(lambda: iter(docs), out, vocab_size=512, val_fraction=0.1, seed=0)
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA; without it they are skipped with that reason."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
