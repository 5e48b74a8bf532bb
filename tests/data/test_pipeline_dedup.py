"""Exact and near-duplicate removal: planted duplicates in English and Chinese are found,
distinct texts are kept, and saved state restores the same index."""

from __future__ import annotations

from _pipeline_corpus import en_text, zh_text

from lightseek.data.pipeline.config import DedupConfig
from lightseek.data.pipeline.dedup import ExactDedup, NearDedup, content_key, shingles


def near(texts: list[str], zh: bool, cfg: DedupConfig | None = None) -> list[str | None]:
    cfg = cfg or DedupConfig()
    d = NearDedup(cfg)
    return [d.check(content_key(t), shingles(t, zh, cfg)) for t in texts]


def test_exact_dedup_ignores_case_and_whitespace_only():
    d = ExactDedup()
    a = en_text(1)
    assert d.check(content_key(a)) is None
    assert d.check(content_key("  " + a.upper().replace(" ", "\n  "))).startswith("exact duplicate of")
    assert d.check(content_key(a + "!")) is None  # one more character is another text


def test_near_dedup_english():
    a = en_text(1, 200)
    edited = a.replace("the", "a", 1)
    reasons = near([a, en_text(2, 200), edited, en_text(3, 200)], zh=False)
    assert reasons[0] is None and reasons[1] is None and reasons[3] is None
    assert reasons[2] is not None and reasons[2].startswith(f"near-duplicate of {content_key(a)[:16]} (jaccard~")
    assert float(reasons[2].split("~")[1].rstrip(")")) >= 0.8


def test_near_dedup_chinese_uses_character_shingles():
    a = zh_text(5, 300)
    edited = a[:100] + "天" + a[101:200] + "地" + a[201:]
    reasons = near([a, zh_text(6, 300), edited], zh=True)
    assert reasons[:2] == [None, None] and reasons[2] is not None
    assert shingles("你好世界", True, DedupConfig(char_shingle=2)) == {"你好".encode(), "好世".encode(), "世界".encode()}


def test_distinct_texts_sharing_a_topic_are_kept():
    cfg = DedupConfig(threshold=0.8)
    base = en_text(7, 100)
    half = base.split(" ")[:50]
    other = " ".join(half + en_text(8, 100).split(" ")[50:])  # shares half its words
    assert near([base, other], zh=False, cfg=cfg) == [None, None]


def test_state_round_trip():
    cfg = DedupConfig()
    a, b = en_text(11, 150), en_text(12, 150)
    first = NearDedup(cfg)
    exact = ExactDedup()
    for t in (a, b):
        assert first.check(content_key(t), shingles(t, False, cfg)) is None
        assert exact.check(content_key(t)) is None
    state = {**first.take_added(), **exact.take_added()}
    assert len(state["near_keys"]) == 2 and state["near_signatures"].shape == (2, cfg.num_perm)
    restored, exact2 = NearDedup(cfg), ExactDedup()
    restored.restore(state)
    exact2.restore(state)
    edited = a.replace("the", "a", 1)
    assert restored.check(content_key(edited), shingles(edited, False, cfg)) is not None
    assert exact2.check(content_key(b)) is not None
    assert first.take_added()["near_keys"].size == 0  # taken once
