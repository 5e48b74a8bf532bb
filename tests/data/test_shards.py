"""Tests for token shards: preparation, manifest, atomicity and memory-mapped batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightseek.data.corpus import Document
from lightseek.data.shards import TokenShards, manifest, prepare_shards
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import DataError

WORDS = ["alpha", "beta", "gamma", "delta", "中文", "🚀", "def", "return\tx\n"]


def make_docs(n: int) -> list[Document]:
    rng = np.random.default_rng(0)
    return [
        Document(f"src{i % 3}.txt", i, " ".join(rng.choice(WORDS, size=20 + i % 17)))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([d.text for d in make_docs(40)], vocab_size=300)


@pytest.fixture(scope="module")
def prepared(tok: Tokenizer, tmp_path_factory) -> tuple[Path, dict, list[Document]]:
    out = tmp_path_factory.mktemp("shards") / "out"
    docs = make_docs(60)
    m = prepare_shards(docs, tok, out, val_fraction=0.2, shard_tokens=500, seed=1)
    return out, m, docs


def read_split(out: Path, m: dict, split: str) -> np.ndarray:
    parts = [np.fromfile(out / s["file"], dtype="<u4") for s in m["splits"][split]["shards"]]
    return np.concatenate(parts)


def test_manifest_contents_and_recount(tok: Tokenizer, prepared) -> None:
    out, m, docs = prepared
    assert manifest(out) == m == json.loads((out / "manifest.json").read_text())
    assert m["tokenizer"] == {"sha256": tok.sha256, "vocab_size": tok.vocab_size, "eot_id": 0}
    assert m["dtype"] == "uint32"
    counts = [len(tok.encode(d.text)) + 1 for d in docs]
    assert m["total_tokens"] == sum(counts) == sum(s["tokens"] for s in m["sources"])
    assert m["total_documents"] == len(docs)
    for split in ("train", "val"):
        tokens = read_split(out, m, split)
        assert len(tokens) == m["splits"][split]["tokens"] > 0
        assert int((tokens == tok.eot_id).sum()) == m["splits"][split]["documents"]
        assert all(s["tokens"] <= 500 for s in m["splits"][split]["shards"])
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(docs)
    src0 = next(s for s in m["sources"] if s["source"] == "src0.txt")
    assert src0["documents"] == 20
    assert src0["bytes"] == sum(len(d.text.encode()) for d in docs if d.source == "src0.txt")
    assert not [p for p in out.parent.iterdir() if p.name != "out"]  # no temp dirs left


def test_split_is_deterministic_by_document(tok: Tokenizer, prepared, tmp_path: Path) -> None:
    out, m, docs = prepared
    again = prepare_shards(reversed(docs), tok, tmp_path / "again", val_fraction=0.2,
                           shard_tokens=500, seed=1)
    assert again["splits"]["val"]["tokens"] == m["splits"]["val"]["tokens"]
    repeat = prepare_shards(docs, tok, tmp_path / "repeat", val_fraction=0.2,
                            shard_tokens=500, seed=1)
    assert repeat["splits"] == m["splits"]
    other = prepare_shards(docs, tok, tmp_path / "other", val_fraction=0.2,
                           shard_tokens=500, seed=2)
    assert other["splits"] != m["splits"]


def test_both_splits_non_empty_for_tiny_corpora(tok: Tokenizer, tmp_path: Path) -> None:
    docs = make_docs(2)
    m = prepare_shards(docs, tok, tmp_path / "two", val_fraction=0.001)
    assert m["splits"]["train"]["documents"] == m["splits"]["val"]["documents"] == 1
    m = prepare_shards(docs[:1], tok, tmp_path / "one", val_fraction=0.1)
    n = len(tok.encode(docs[0].text)) + 1
    assert m["splits"]["val"]["tokens"] == max(1, round(n * 0.1))
    assert m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"] == n


def test_batches_are_real_windows(prepared) -> None:
    out, m, _ = prepared
    stream = read_split(out, m, "train").astype(np.int64)
    shards = TokenShards(out, "train")
    assert len(shards) == len(stream)
    batch = shards.sample_batch(batch_size=8, seq_len=64, seed=3, step=7)
    assert batch.shape == (8, 65) and batch.dtype == torch.long
    windows = np.lib.stride_tricks.sliding_window_view(stream, 65)
    for row in batch.numpy():
        assert (windows == row).all(axis=1).any()


def test_same_seed_step_same_batch(prepared) -> None:
    out, _, _ = prepared
    a = TokenShards(out, "train")
    first = a.sample_batch(4, 32, seed=0, step=5)
    a.sample_batch(4, 32, seed=0, step=6)
    b = TokenShards(out, "train")
    assert torch.equal(b.sample_batch(4, 32, seed=0, step=5), first)
    assert not torch.equal(a.sample_batch(4, 32, seed=0, step=6), first)
    assert not torch.equal(a.sample_batch(4, 32, seed=1, step=5), first)


def test_iter_sequential_tiles_the_stream(prepared) -> None:
    out, m, _ = prepared
    stream = read_split(out, m, "val").astype(np.int64)
    val = TokenShards(out, "val")
    seq_len = 16
    batches = list(val.iter_sequential(batch_size=3, seq_len=seq_len))
    rows = torch.cat(batches).numpy()
    assert rows.shape == ((len(stream) - 1) // seq_len, seq_len + 1)
    assert all(b.shape[0] == 3 for b in batches[:-1]) and 1 <= batches[-1].shape[0] <= 3
    targets = rows[:, 1:].reshape(-1)
    assert (targets == stream[1 : 1 + len(targets)]).all()
    assert len(list(val.iter_sequential(3, seq_len, max_batches=1))) == 1


def test_too_few_tokens(prepared) -> None:
    out, _, _ = prepared
    val = TokenShards(out, "val")
    with pytest.raises(DataError, match=f"needs at least {len(val) + 1}"):
        val.sample_batch(2, len(val), seed=0, step=0)
    with pytest.raises(DataError, match="needs at least"):
        next(val.iter_sequential(2, len(val)))


def test_empty_corpus(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="corpus is empty"):
        prepare_shards([], tok, tmp_path / "empty")
    with pytest.raises(DataError, match="corpus is empty"):
        prepare_shards([Document("x", 0, "  \n")], tok, tmp_path / "empty")
    assert list(tmp_path.iterdir()) == []  # neither output nor temp dirs remain


def test_existing_output_is_kept(tok: Tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        prepare_shards(make_docs(5), tok, out)
    with pytest.raises(DataError, match="corpus is empty"):
        prepare_shards([], tok, out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "precious.txt").read_text() == "keep me"

    def failing():
        yield from make_docs(3)
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError):
        prepare_shards(failing(), tok, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    prepare_shards(make_docs(5), tok, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_verify_detects_changed_bytes(tok: Tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = prepare_shards(make_docs(10), tok, out, shard_tokens=100)
    TokenShards(out, "train").verify()
    shard = out / m["splits"]["train"]["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{shard.name}: sha256"):
        TokenShards(out, "train").verify()


def test_truncated_or_missing_shard(tok: Tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = prepare_shards(make_docs(10), tok, out, shard_tokens=100)
    shard = out / m["splits"]["train"]["shards"][0]["file"]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    with pytest.raises(DataError, match=f"{shard.name}.*truncated"):
        TokenShards(out, "train")
    shard.unlink()
    with pytest.raises(DataError, match=f"{shard.name}: shard file is missing"):
        TokenShards(out, "train")


def test_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest.json: not found"):
        manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(DataError, match="corrupt manifest"):
        TokenShards(tmp_path, "train")
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a lightseek token-shard manifest"):
        manifest(tmp_path)


def test_document_that_is_not_unicode(tok: Tokenizer, tmp_path: Path) -> None:
    docs = [Document("fine.txt", 0, "hello"), Document("odd.txt", 4, "x\ud800y")]
    with pytest.raises(DataError, match="odd.txt: document 4 .*surrogate"):
        prepare_shards(docs, tok, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
