"""Text-level generation: streaming, stop strings held back until they cannot match."""

from __future__ import annotations

import pytest

import lightseek.model.generate as gen
from lightseek.data.tokenizer import Tokenizer
from lightseek.model.sampling import SamplingParams


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = "the quick brown fox jumps over the lazy dog. 你好世界 STOP here END\n" * 50
    return Tokenizer.train([text], vocab_size=300)


def _run(monkeypatch, tokenizer, produced: str, stop: list[str]) -> tuple[str, list[str]]:
    ids = tokenizer.encode(produced)
    monkeypatch.setattr(gen, "generate_ids", lambda *a, **k: iter(ids))
    chunks: list[str] = []
    out = gen.generate_text(None, tokenizer, "x", SamplingParams(stop=stop), on_text=chunks.append)
    return out, chunks


def test_stop_string_is_cut_and_never_streamed(monkeypatch, tokenizer):
    out, chunks = _run(monkeypatch, tokenizer, "the lazy dog. 你好 STOP here END", ["STOP", "END"])
    assert out == "the lazy dog. 你好 "
    assert "".join(chunks) == out
    assert all("S" not in c for c in chunks)


def test_without_stop_everything_streams(monkeypatch, tokenizer):
    text = "the quick brown fox 你好世界"
    out, chunks = _run(monkeypatch, tokenizer, text, [])
    assert out == text and "".join(chunks) == text
    assert len(chunks) > 3  # streamed piece by piece, not at the end
    assert all("\ufffd" not in c for c in chunks)


def test_partial_stop_prefix_at_the_end_is_released(monkeypatch, tokenizer):
    out, chunks = _run(monkeypatch, tokenizer, "the dog ST", ["STOP"])
    assert out == "the dog ST" and "".join(chunks) == out
