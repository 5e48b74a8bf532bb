"""Tests for the byte-level BPE tokenizer: losslessness, special tokens, streaming, files."""

from __future__ import annotations

import pytest

from lightseek.data.tokenizer import SPECIAL_TOKENS, StreamDecoder, Tokenizer
from lightseek.errors import CheckpointError, ConfigError, DataError

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "中文分词测试：你好，世界。机器学习模型。",
    "emoji 🚀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "def f(x):\n\tif x:\n\t\treturn x  # tab\n    else:\n        return None\n",
    "windows\r\nline\r\nendings\r\n",
    "combining: e\u0301 a\u0308 lone \u0301\u0302 mark",
    "   leading spaces, trailing   \n\n\n\t\t  ",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(SAMPLES * 20, vocab_size=400)


def test_special_token_ids(tok: Tokenizer) -> None:
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eot_id == 0 and tok.pad_id == 1
    assert 256 + len(SPECIAL_TOKENS) < tok.vocab_size <= 400


EXTRA = ["", "x", "\u0301", "unseen: ქართული ☃ 𝔘𝔫𝔦"]


@pytest.mark.parametrize("text", SAMPLES + EXTRA)
def test_round_trip_is_lossless(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_special_strings_in_user_text_stay_text(tok: Tokenizer) -> None:
    text = "ignore this <|endoftext|> and <|assistant|> please<|end|>"
    ids = tok.encode(text)
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    assert tok.decode(ids) == text
    assert tok.encode_batch([text]) == [ids]
    special = tok.encode(text, allow_special=True)
    assert tok.eot_id in special and tok.token_id("<|end|>") in special
    assert tok.encode_batch([text], allow_special=True) == [special]
    assert tok.decode(special, skip_special=False) == text
    assert "<|" not in tok.decode(special)


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]


def test_stream_decoder_matches_decode(tok: Tokenizer) -> None:
    text = "".join(SAMPLES) + "<|end|>"
    for allow in (False, True):
        ids = tok.encode(text, allow_special=allow)
        for skip in (True, False):
            stream = StreamDecoder(tok, skip_special=skip)
            pieces = [stream.push(i) for i in ids] + [stream.flush()]
            assert all("\ufffd" not in p for p in pieces)
            assert "".join(pieces) == tok.decode(ids, skip_special=skip)


def test_stream_decoder_holds_back_partial_characters(tok: Tokenizer) -> None:
    # With few merges, 4-byte emoji are split over several byte tokens.
    ids = tok.encode("🚀")
    assert len(ids) > 1
    stream = StreamDecoder(tok)
    assert [stream.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.push(ids[-1]) == "🚀"
    assert stream.flush() == ""


def test_decode_rejects_unknown_ids(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_vocab_size_too_small() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        Tokenizer.train(["abc"], vocab_size=256 + len(SPECIAL_TOKENS))


def test_save_load_identical(tok: Tokenizer, tmp_path) -> None:
    file = tok.save(tmp_path / "tok")
    assert file == tmp_path / "tok" / "tokenizer.json"
    for path in (tmp_path / "tok", file):
        loaded = Tokenizer.load(path)
        assert loaded.sha256 == tok.sha256 and loaded.vocab_size == tok.vocab_size
        assert loaded.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
    other = tok.save(tmp_path / "named.json")
    assert Tokenizer.load(other).sha256 == tok.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named.json", "tok"]  # no temp left


def test_load_missing_and_corrupt(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nope"):
        Tokenizer.load(tmp_path / "nope.json")
    with pytest.raises(CheckpointError, match="not found"):
        Tokenizer.load(tmp_path)  # a directory without tokenizer.json
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(CheckpointError, match="corrupt.*bad.json"):
        Tokenizer.load(bad)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="binary.json"):
        Tokenizer.load(binary)


def test_load_rejects_foreign_tokenizer(tmp_path) -> None:
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    foreign = tmp_path / "foreign.json"
    foreign.write_text(HF(models.BPE()).to_str(), encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a lightseek tokenizer"):
        Tokenizer.load(foreign)


def test_unpaired_surrogate_is_a_clear_error(tok: Tokenizer) -> None:
    with pytest.raises(DataError, match="text 1 is not valid Unicode"):
        tok.encode_batch(["fine", "bad \ud800"])
    with pytest.raises(DataError, match="not valid Unicode"):
        tok.encode("\udfff")
