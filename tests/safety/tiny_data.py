"""Fixtures, loaded by tests/conftest.py as a plugin (a conftest.py here would shadow the root
one, which other tests import as `conftest`). A small shared-data folder in the shared sets' own
formats (synthetic texts), and a classifier trained on it, so that the safety tests run in
seconds without the real data."""

from __future__ import annotations

import json
import random

import pytest

GROUPS = ["immigrants", "women", "foreigners", "muslims", "jews", "gays", "old people", "northerners"]
NAMES = ["Tom", "Anna", "the judge", "my neighbour", "the teacher", "that reporter", "the mayor", "Bob"]
THINGS = ["bread", "a cake", "rice", "soup", "a garden", "a bookshelf", "a kite", "pasta", "a budget", "a resume"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """OpenAI moderation-set rows: violent threats (V), hate (H) and harmless requests."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            text = f"I will kill {rng.choice(NAMES)} tonight and make it hurt, {rng.choice(NAMES)} is next"
        elif kind == 1:
            text = f"all {rng.choice(GROUPS)} are vermin and should be wiped out, {rng.choice(GROUPS)} too"
        else:
            text = f"how do I make {rng.choice(THINGS)} for {rng.choice(NAMES)} this weekend?"
        rows.append({"prompt": text + f" ({i})", "S": 0, "H": int(kind == 1), "V": int(kind == 0), "HR": 0, "SH": 0,
                     "S3": 0, "H2": 0, "V2": 0})
    return rows


@pytest.fixture(scope="session")
def tiny_shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    d = root / "safety_openai_moderation_en"
    d.mkdir()
    (d / "samples-1680.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(300)))
    a = root / "instruct_alpaca_en"
    a.mkdir()
    (a / "alpaca_data_en_part01.json").write_text(json.dumps(
        [{"instruction": f"Give me {k} tips for {t}.", "input": "", "output": "..."} for k in range(3, 9)
         for t in THINGS]))
    return root


@pytest.fixture(scope="session")
def tiny_classifier(tiny_shared, tmp_path_factory):
    pytest.importorskip("sklearn", reason="the safety classifiers need scikit-learn (pip install -e .[data])")
    from lightseek.safety.commands import train

    out = tmp_path_factory.mktemp("safety")
    train(out, tiny_shared, harmless_per_source=100, log=lambda *_: None)
    return out
