"""A tiny mixed corpus for the pipeline tests: English and Chinese prose, planted exact and
near-duplicates (some in later shards than their originals), PII, junk, HTML, CSV and Parquet."""

from __future__ import annotations

import json
import random
from pathlib import Path

EN_WORDS = [
    "river", "mountain", "quiet", "village", "morning", "letter", "garden", "window", "story", "teacher",
    "market", "winter", "summer", "journey", "friend", "harbour", "lantern", "meadow", "orchard", "bridge",
    "candle", "forest", "silver", "field", "stone", "valley", "evening", "whisper", "painter", "island",
    "kitchen", "library"]


def en_text(seed: int, words: int = 120) -> str:
    """English-looking prose: function words between seeded content words, so it reads as English
    to the language shortcut and repeats no 5-gram."""
    rng = random.Random(seed)
    glue = ["the", "of", "and", "to", "was", "with", "that", "in", "for", "his"]
    out = []
    for i in range(words):
        out.append(rng.choice(glue) if i % 2 else f"{rng.choice(EN_WORDS)}{rng.randint(0, 999)}")
    return " ".join(out).capitalize() + "."


def zh_text(seed: int, chars: int = 160) -> str:
    """Seeded common CJK characters with Chinese punctuation every few characters."""
    rng = random.Random(seed)
    out = []
    for i in range(chars):
        out.append(chr(rng.randint(0x4E00, 0x9FA5)))
        if i % 9 == 8:
            out.append(rng.choice("，。；"))
    return "".join(out) + "。"


def make_corpus(root: Path) -> Path:
    """Write the corpus under ``root/corpus`` and return that folder."""
    base = root / "corpus"
    base.mkdir(parents=True)
    original_en, original_zh = en_text(1), zh_text(2)
    near_en = original_en.replace("the", "a", 1)  # one word changed
    records = [
        {"text": original_en},
        {"text": zh_text(3)},
        {"text": "Too short."},
        {"text": "The totals of the year that was and is to be for the rest of the time with the board were "
                 "12 34 56 78 90 11 22 33 44 55 66 77 88 99 00 12 34 56 78 90 13 57 92 46 80 31 64 97 20 53 "
                 "1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 1234 5678"},
        {"text": ("Contact me at jane.doe@example.com or 555-123-4567. " + en_text(4))},
        {"text": ("请联系13812345678，身份证11010519491231002X。" + zh_text(5))},
        {"text": "Le chat est sur la table et il mange une souris que la femme a laissée dans la cuisine "
                 "pendant que les enfants jouaient dehors avec le chien du voisin pendant tout l'après-midi."},
        {"text": "\n".join(["The price of the best watch in the shop is the lowest of all and it is for you"] * 12)},
        {"text": en_text(6)},
        {"text": zh_text(7)},
        {"text": "  " + original_en.upper() + "  "},  # exact duplicate after case folding
        {"text": near_en},  # near-duplicate
        {"text": original_zh},
        {"text": en_text(8)},
        {"text": original_zh[:-3] + "天地人。"},  # near-duplicate (Chinese)
        {"text": en_text(9)},
    ]
    with (base / "a.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (base / "b.txt").write_text(en_text(10) + "\n\n\n\n" + en_text(11), encoding="utf-8")
    (base / "c.md").write_text("# 标题\n\n" + zh_text(12), encoding="utf-8")
    (base / "d.html").write_text(
        "<html><head><title>T</title><style>p{color:red}</style><script>var x = 1;</script></head>"
        f"<body><h1>Heading</h1><p>{en_text(13)}</p><ul><li>{en_text(14, 40)}</li></ul></body></html>",
        encoding="utf-8")
    (base / "e.csv").write_text("label,text\nx,\"" + en_text(15) + "\"\ny,\"" + original_en + "\"\n",
                                encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [en_text(16), zh_text(17), original_zh]}), base / "f.parquet")
    (base / "README.md").write_text("About this corpus: not training text.", encoding="utf-8")
    return base


def recipe(corpus: Path, out: Path, **extra) -> dict:
    """A pipeline config dict for the corpus (small shards, low length floor)."""
    cfg = {"input": {"paths": [str(corpus)]}, "out_dir": str(out),
           "output": {"shard_records": 4, "progress": False}, "quality": {"min_chars": 40}}
    for key, value in extra.items():
        cfg[key] = value
    return cfg
