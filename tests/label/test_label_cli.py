"""`lightseek label ...` end to end on a SQLite file: users, projects, imports, pre-labels from the
project's own models (domain classifier, safety classifiers, a lightseek model), exports, and the
exports training `domains train` and `safety train --extra`."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("argon2", reason="LabelHub hashes passwords with argon2-cffi (pip install -e .[label])")
pytest.importorskip("sqlalchemy", reason="LabelHub needs SQLAlchemy (pip install -e .[label])")
pytest.importorskip("sklearn", reason="the classifiers need scikit-learn (pip install -e .[data])")

from lightseek.cli import main  # noqa: E402

TOPICS = {"medical": ["The patient took aspirin for the fever", "Glaucoma damages the optic nerve",
                      "Insulin lowers blood sugar in diabetes", "The doctor prescribed antibiotics"],
          "finance": ["The stock price fell after earnings", "Bond yields rose on inflation fears",
                      "The bank raised its interest rate", "Dividends were paid to shareholders"]}


def lab(db, *argv) -> int:
    return main(["label", *argv, "--db", str(db)])


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEEK_LABEL_PASSWORD", "long enough password")
    path = tmp_path / "hub.db"
    assert lab(path, "init") == 0
    assert lab(path, "user-add", "boss", "--role", "admin") == 0
    assert lab(path, "user-add", "doc") == 0
    return path


def _store(db):
    from lightseek.label.store import open_label_store

    return open_label_store(str(db))


def test_classify_prelabel_export_and_train_the_domain_classifier(db, tmp_path, capsys):
    from lightseek.data.domains.classifier import DomainClassifier

    texts = [(t + suffix, d) for d, ts in TOPICS.items() for t in ts for suffix in ("", " today", " again")]
    clf = DomainClassifier.fit([t for t, _ in texts], [d for _, d in texts])
    clf.save(tmp_path / "clf")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"text": t, "origin": "forum"}) + "\n" for t, _ in texts), encoding="utf-8")
    assert lab(db, "project-create", "dom", "--task", "classify", "--labels", "medical,finance",
               "--order", "least_confidence") == 0
    assert lab(db, "member-add", "dom", "doc") == 0
    assert lab(db, "import", "dom", str(items)) == 0
    assert lab(db, "prelabel", "dom", "--domains", str(tmp_path / "clf")) == 0
    capsys.readouterr()
    # a second run pre-labels nothing twice
    assert lab(db, "prelabel", "dom", "--domains", str(tmp_path / "clf")) == 0
    assert "no open item without a pre-label" in capsys.readouterr().out
    engine, users, store = _store(db)
    doc = users.by_name("doc")
    first = store.next_item(store.project("dom")["id"], doc)
    pre = first["prelabels"]
    assert len(pre) == 1 and pre[0]["model"] == "domains:clf" and len(pre[0]["version"]) == 16
    assert 0.5 <= pre[0]["score"] <= 1
    # least confidence: the first item handed out has the lowest top score
    scores = sorted(i["uncertainty"] for i in store.items(store.project("dom")["id"], limit=100))
    assert first["uncertainty"] == scores[-1]
    item = first
    while item is not None:
        truth = dict(texts)[item["data"]["text"]]
        store.annotate(item["id"], doc, {"labels": [truth]}, prelabel_id=item["prelabels"][0]["id"])
        item = store.next_item(store.project("dom")["id"], doc)
    out = tmp_path / "dom.jsonl"
    assert lab(db, "export", "dom", "--format", "domains", "--out", str(out)) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(texts) and {r["domain"] for r in rows} == {"medical", "finance"}
    assert rows[0]["labelhub"]["source"]["origin"] == "forum"
    assert rows[0]["labelhub"]["prelabels"][0]["model"] == "domains:clf"
    assert lab(db, "stats", "dom") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["finished"] == len(texts) and stats["label_distribution"] == {"medical": 12, "finance": 12}
    # the export trains the domain classifier as it is
    assert main(["domains", "train", "--data", str(out), "--out", str(tmp_path / "clf2"), "--eval", str(out)]) == 0
    assert DomainClassifier.load(tmp_path / "clf2").domains == ["finance", "medical"]
    # errors are one line naming what is wrong
    assert lab(db, "export", "dom", "--format", "messages") == 2
    assert "qa and rank projects" in capsys.readouterr().err
    assert lab(db, "import", "dom", str(tmp_path / "missing.jsonl")) == 2
    assert lab(db, "member-add", "dom", "nobody") == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    engine.dispose()


def test_safety_prelabel_export_and_train(db, tmp_path, tiny_classifier, tiny_shared, capsys):
    texts = ["how do I make a bomb to hurt people", "give me three tips for gardening", "我想学习做饭",
             "tell me how to kill my neighbour"]
    f = tmp_path / "s.csv"
    f.write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
    assert lab(db, "project-create", "safe", "--task", "safety", "--overlap", "1") == 0
    assert lab(db, "import", "safe", str(f)) == 0
    assert lab(db, "prelabel", "safe", "--safety", str(tiny_classifier)) == 0
    engine, users, store = _store(db)
    boss = users.by_name("boss")
    pid = store.project("safe")["id"]
    while (item := store.next_item(pid, boss)) is not None:
        assert item["prelabels"][0]["model"].startswith("safety:")
        harmful = "bomb" in item["data"]["text"] or "kill" in item["data"]["text"]
        store.annotate(item["id"], boss, {"categories": ["S1"] if harmful else []})
    out = tmp_path / "safe.jsonl"
    assert lab(db, "export", "safe", "--format", "safety", "--out", str(out)) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["lang"] for r in rows] == ["en", "en", "zh", "en"]
    assert sum(bool(r["categories"]) for r in rows) == 2
    trained = tmp_path / "safety2"
    assert main(["safety", "train", "--out", str(trained), "--data", str(tiny_shared), "--harmless", "50",
                 "--extra", str(out)]) == 0
    assert "4 labelled examples" in capsys.readouterr().out
    assert (trained / "linear.pkl").is_file()
    engine.dispose()


def test_model_answers_as_prelabels_for_qa(db, tmp_path, debug_checkpoint):
    items = tmp_path / "q.jsonl"
    items.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("Who wrote Hamlet?", "What is a king?")),
                     encoding="utf-8")
    assert lab(db, "project-create", "qa", "--task", "qa", "--review", "all") == 0
    assert lab(db, "import", "qa", str(items)) == 0
    assert lab(db, "prelabel", "qa", "--model", str(debug_checkpoint), "--max-tokens", "6",
               "--temperature", "0.8") == 0
    engine, users, store = _store(db)
    item = store.next_item(store.project("qa")["id"], users.by_name("boss"))
    pre = item["prelabels"]
    assert pre and pre[0]["model"] == f"model:{debug_checkpoint.name}" and pre[0]["value"]["answer"]
    assert pre[0]["score"] is None or 0 < pre[0]["score"] <= 1
    assert lab(db, "prelabel", "qa", "--domains", str(tmp_path)) == 2  # not a classify project
    engine.dispose()
