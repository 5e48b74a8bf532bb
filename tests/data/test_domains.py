"""Tests for the domain classifier: training on synthetic English and Chinese text, the
`general` threshold, save/load, malformed data, metrics against scikit-learn, the local encoder
option, data building, and the `lightseek domains` commands end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from lightseek.data.domains import DomainClassifier, DomainConfig, read_labelled
from lightseek.data.domains.metrics import evaluate, plot_confusion
from lightseek.errors import CheckpointError, ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def words(text: str) -> list[str]:
    return text.split()


WORDS = {
    "medical": words("patient doctor symptoms diagnosis treatment hospital blood pressure fever infection "
                     "患者 医生 症状 诊断 治疗 医院 血压 发烧 感染 药物"),
    "finance": words("stock market shares profit revenue bank interest loan dividend investor "
                     "股票 市场 利润 收入 银行 利率 贷款 股息 投资 基金"),
    "legal": words("contract court law clause party agreement liability plaintiff statute judge "
                   "合同 法院 法律 条款 当事人 协议 责任 原告 法规 判决"),
}
FILLER = words("the a of and to in is was it that 的 了 和 是 在 有 这 我们")


def synthetic(n_per_domain: int, seed: int) -> tuple[list[str], list[str]]:
    """Sentences mixing domain words and shared filler, half English-leaning, half Chinese."""
    rng = random.Random(seed)
    texts, labels = [], []
    for domain, words in WORDS.items():
        en, zh = words[:10], words[10:]
        for i in range(n_per_domain):
            vocab = en if i % 2 == 0 else zh
            sep = " " if i % 2 == 0 else ""
            tokens = rng.choices(vocab, k=4) + rng.choices(FILLER[:10] if i % 2 == 0 else FILLER[10:], k=6)
            rng.shuffle(tokens)
            texts.append(sep.join(tokens))
            labels.append(domain)
    return texts, labels


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained() -> DomainClassifier:
    texts, labels = synthetic(40, seed=0)
    return DomainClassifier.fit(texts, labels, DomainConfig(threshold=0.0))


def test_predicts_held_out_english_and_chinese(trained: DomainClassifier) -> None:
    texts, labels = synthetic(15, seed=1)
    predicted = [d for d, _ in trained.predict(texts)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels)])
    assert accuracy >= 0.95
    assert trained.domains == ["finance", "legal", "medical"]
    assert trained.predict(["患者在医院接受治疗，医生诊断为感染"])[0][0] == "medical"
    assert trained.predict(["The bank raised the interest rate on the loan"])[0][0] == "finance"
    assert trained.predict(["法院判决合同条款无效，原告承担责任"])[0][0] == "legal"
    proba = trained.predict_proba(texts[:5])
    assert proba.shape == (5, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert trained.predict([]) == []


def test_threshold_sends_unsure_text_to_general(trained: DomainClassifier) -> None:
    texts = ["patient doctor hospital fever treatment", "the of and to in it"]
    proba = trained.predict_proba(texts)
    sure, unsure = proba.max(axis=1)
    assert sure > unsure  # a domain-word text is surer than filler
    clf = DomainClassifier(trained.pipeline, DomainConfig(threshold=float((sure + unsure) / 2)))
    (d1, c1), (d2, c2) = clf.predict(texts)
    assert d1 == "medical" and c1 == pytest.approx(sure)
    assert d2 == "general" and c2 == pytest.approx(unsure)
    clf.threshold = 1.0
    assert [d for d, _ in clf.predict(texts)] == ["general", "general"]


def test_save_load_round_trip(trained: DomainClassifier, tmp_path: Path) -> None:
    texts, _ = synthetic(5, seed=2)
    folder = trained.save(tmp_path / "clf")
    meta = json.loads((folder / "domains.json").read_text(encoding="utf-8"))
    assert meta["domains"] == trained.domains and meta["threshold"] == 0.0
    assert meta["counts"] == {"finance": 40, "legal": 40, "medical": 40}
    loaded = DomainClassifier.load(folder)
    assert np.array_equal(loaded.predict_proba(texts), trained.predict_proba(texts))
    assert loaded.predict(texts) == trained.predict(texts)
    assert DomainClassifier.load(folder, threshold=0.99).threshold == 0.99


def test_load_errors_say_what_is_wrong(trained: DomainClassifier, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        DomainClassifier.load(tmp_path / "nowhere")
    folder = trained.save(tmp_path / "clf")
    (folder / "model.joblib").unlink()
    with pytest.raises(CheckpointError, match="missing model.joblib"):
        DomainClassifier.load(folder)
    folder = trained.save(tmp_path / "clf2")
    (folder / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="model.joblib: cannot be loaded"):
        DomainClassifier.load(folder)
    (folder / "domains.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(CheckpointError, match="domains.json: not readable JSON"):
        DomainClassifier.load(folder)


def test_malformed_training_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "domain": "x"}\n{"text": "b", "domain": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_labelled(bad)
    nolabel = write_jsonl(tmp_path / "nolabel.jsonl", [{"text": "a", "domain": "x"}, {"text": "b", "domain": "y"},
                                                       {"text": "c"}])
    with pytest.raises(DataError, match=r"nolabel\.jsonl:3: field 'domain' \(the domain label\) is missing"):
        read_labelled(nolabel)
    numeric = write_jsonl(tmp_path / "num.jsonl", [{"text": "a", "domain": 3}])
    with pytest.raises(DataError, match=r"num\.jsonl:1: field 'domain' must be a non-empty string"):
        read_labelled(numeric)
    notext = write_jsonl(tmp_path / "notext.jsonl", [{"body": "a", "domain": "x"}])
    with pytest.raises(DataError, match=r"notext\.jsonl:1: field 'text'"):
        read_labelled(notext)
    single = write_jsonl(tmp_path / "single.jsonl", [{"text": f"t{i}", "domain": "medical"} for i in range(5)])
    texts, labels, files = read_labelled(single)
    with pytest.raises(DataError, match=r"single\.jsonl: every record has domain 'medical'; .*at least two"):
        DomainClassifier.fit(texts, labels, data=files)


def test_custom_field_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "x y", "label": "a"}, {"body": "   ", "label": "b"}])
    texts, labels, files = read_labelled(path, text_field="body", label_field="label")
    assert (texts, labels) == (["x y"], ["a"])
    assert files[0]["records"] == 1 and len(files[0]["sha256"]) == 64
    with pytest.raises(ConfigError, match="threshold"):
        DomainConfig(threshold=1.5)


def test_metrics_match_sklearn_and_plot(tmp_path: Path) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    truth = ["a", "a", "a", "b", "b", "c", "c", "c", "c", "a"]
    pred = ["a", "b", "a", "b", "c", "c", "c", "a", "b", "a"]
    report = evaluate(truth, pred)
    labels = ["a", "b", "c"]
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    for i, d in enumerate(labels):
        m = report["per_domain"][d]
        assert (m["precision"], m["recall"], m["f1"], m["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert report["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert report["confusion"]["matrix"] == confusion_matrix(truth, pred, labels=labels).tolist()
    assert report["per_domain"]["a"]["precision"] == pytest.approx(3 / 4)  # by hand: 3 of 4 "a" are right
    png = plot_confusion(report, tmp_path / "plots" / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000


def test_local_random_encoder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    words = sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    chars = sorted({c for w in words for c in w if ord(c) > 0x2E80})  # BERT splits CJK into characters
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars
    tokenizer = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))})
    assert "[UNK]" not in tokenizer.tokenize("patient 患者 bank")
    tokenizer.save_pretrained(tmp_path / "enc")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(tmp_path / "enc")
    texts, labels = synthetic(20, seed=3)
    cfg = DomainConfig(encoder=str(tmp_path / "enc"), threshold=0.0, encoder_batch_size=16)
    clf = DomainClassifier.fit(texts, labels, cfg)
    accuracy = np.mean([d == t for (d, _), t in zip(clf.predict(texts), labels)])
    assert accuracy >= 0.8  # random weights, but token identity survives mean pooling
    loaded = DomainClassifier.load(clf.save(tmp_path / "clf"))
    assert np.allclose(loaded.predict_proba(texts[:6]), clf.predict_proba(texts[:6]), atol=1e-6)
    assert json.loads((tmp_path / "clf" / "domains.json").read_text())["features"] == "encoder"
    with pytest.raises(ConfigError, match="no such folder"):
        DomainClassifier.fit(texts, labels, DomainConfig(encoder=str(tmp_path / "missing")))


def test_model_features_from_a_lightseek_checkpoint(debug_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """A lightseek checkpoint's pooled hidden states as features: the forward stops at the chosen
    block, each text is embedded once (the cache), a saved classifier reloads with the same
    probabilities, and bad settings are clear errors."""
    from lightseek.classify.features import ModelFeatures

    texts, labels = synthetic(20, seed=3)
    cache = tmp_path / "features"
    cfg = DomainConfig(model=str(debug_checkpoint), model_layer=0, model_tfidf=False, threshold=0.0,
                       feature_cache=str(cache))
    clf = DomainClassifier.fit(texts, labels, cfg)
    accuracy = np.mean([d == t for (d, _), t in zip(clf.predict(texts), labels)])
    assert accuracy >= 0.8  # a barely trained model, but token identity survives mean pooling
    assert len(list(cache.rglob("*.npy"))) == len(set(texts))

    # the cached features are what the model computes, and a second pass runs no model at all
    embed = ModelFeatures(str(debug_checkpoint), layer=0, cache=str(cache))
    fresh = ModelFeatures(str(debug_checkpoint), layer=0, cache="off").transform(texts[:5])
    assert np.allclose(embed.transform(texts[:5]), fresh, atol=1e-5)
    calls = []
    embed._load()["block"].register_forward_hook(lambda *a: calls.append(1))
    embed.transform(texts)
    assert not calls
    embed.set_params(layer=-1)  # another block after a fit: the features follow it
    assert not np.allclose(embed.transform(texts[:5]), fresh, atol=1e-3)
    # another block gives other features; the blocks after the chosen one never run
    other = ModelFeatures(str(debug_checkpoint), layer=-1, cache="off")
    state = other._load()
    ran = []
    state["model"].layers[0].register_forward_hook(lambda *a: ran.append(0))
    assert not np.allclose(other.transform(texts[:5]), fresh, atol=1e-3) and ran
    last = ModelFeatures(str(debug_checkpoint), layer=0, cache="off")
    after = []
    last._load()["model"].layers[-1].register_forward_hook(lambda *a: after.append(1))
    last.transform(texts[:3])
    assert not after

    loaded = DomainClassifier.load(clf.save(tmp_path / "clf"))
    assert np.allclose(loaded.predict_proba(texts[:6]), clf.predict_proba(texts[:6]), atol=1e-6)
    assert json.loads((tmp_path / "clf" / "domains.json").read_text())["features"] == "model"
    both = DomainClassifier.fit(texts, labels, DomainConfig(model=str(debug_checkpoint), threshold=0.0,
                                                            feature_cache=str(cache)))
    assert both.metadata()["features"] == "model+tfidf"
    assert np.mean([d == t for (d, _), t in zip(both.predict(texts), labels)]) >= 0.9

    with pytest.raises(ConfigError, match="has 2 blocks"):
        DomainClassifier.fit(texts, labels, DomainConfig(model=str(debug_checkpoint), model_layer=5))
    with pytest.raises(ConfigError, match="domains.model"):
        DomainClassifier.fit(texts, labels, DomainConfig(model=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="choose one"):
        DomainConfig(model=str(debug_checkpoint), encoder=str(tmp_path))


def test_zero_shot_asks_the_model_behind_the_same_interface(debug_checkpoint: Path, tmp_path: Path) -> None:
    """The zero-shot mode scores each domain's name as the model's whole answer: the scores equal
    a plain forward pass over prompt + answer (the answers run as one padded batch), calibration
    subtracts the content-free texts' scores, and the classifier saves, loads and predicts like a
    trained one."""
    import torch

    from lightseek.classify.zero_shot import CONTENT_FREE, QUESTION, ZeroShotDomains, _answer_scores
    from lightseek.data.chat import encode_chat

    texts, labels = synthetic(3, seed=5)
    clf = DomainClassifier.fit(texts, labels, DomainConfig(zero_shot=str(debug_checkpoint), threshold=0.0))
    assert clf.domains == sorted(set(labels)) and clf.metadata()["features"] == "zero-shot"
    proba = clf.predict_proba(texts[:4])
    assert proba.shape == (4, 3) and np.allclose(proba.sum(1), 1.0) and (proba > 0).all()

    zs = ZeroShotDomains(str(debug_checkpoint))
    model, tok = zs._load()
    messages = [{"role": "user", "content": QUESTION.format(domains="finance, legal, medical", text=texts[0])}]
    prompt = encode_chat(tok, messages, add_generation_prompt=True)[0]
    answers = [encode_chat(tok, [*messages, {"role": "assistant", "content": d}]) for d in clf.domains]
    with torch.no_grad():
        fast = _answer_scores(model, prompt, answers)
        for (ids, learn), got in zip(answers, fast):  # the cached continuation = a full forward pass
            logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
            want = sum(float(logp[i - 1, ids[i]]) for i in range(len(prompt), len(ids)) if learn[i])
            assert got == pytest.approx(want, abs=1e-4)
    zs.classes_ = np.array(clf.domains)
    assert len({len(ids) for ids, _ in answers}) > 1   # the batch is padded: answers of different lengths
    content_free = np.mean([zs.scores(t) for t in CONTENT_FREE], axis=0)
    assert np.allclose(zs.scores(texts[0]), fast)

    def softmax(x):
        return np.exp(x - np.max(x)) / np.exp(x - np.max(x)).sum()

    assert np.allclose(softmax(np.array(fast) - content_free), proba[0], atol=1e-6)
    plain = DomainClassifier.fit(texts, labels, DomainConfig(zero_shot=str(debug_checkpoint), threshold=0.0,
                                                             zero_shot_calibrate=False))
    assert np.allclose(softmax(np.array(fast)), plain.predict_proba(texts[:1])[0], atol=1e-6)

    loaded = DomainClassifier.load(clf.save(tmp_path / "zs"))
    assert np.allclose(loaded.predict_proba(texts[:4]), proba, atol=1e-6)
    with pytest.raises(ConfigError, match="choose one"):
        DomainConfig(zero_shot=str(debug_checkpoint), model=str(debug_checkpoint))
    with pytest.raises(ConfigError, match="needs {text} and {domains}"):
        ZeroShotDomains(str(debug_checkpoint), question="Which domain?").fit(texts, labels)
    with pytest.raises(ConfigError, match="domains.zero_shot"):
        DomainClassifier.fit(texts, labels, DomainConfig(zero_shot=str(tmp_path / "missing")))


def test_passages_and_share() -> None:
    from lightseek.data.domains.build import passages, share

    text = "First para.\n\n" + " ".join(f"Sentence number {i} is here." for i in range(100)) + "\n\nshort"
    out = passages(text, min_chars=10, max_chars=200)
    assert all(10 <= len(p) <= 200 for p in out) and len(out) > 5
    assert "".join(out).replace(" ", "") == text.replace("\n", "").replace(" ", "")  # nothing lost or reordered
    assert share({"a": 10, "b": 1000, "c": 1000}, 500) == {"a": 10, "b": 245, "c": 245}
    assert share({"a": 5, "b": 3}, 100) == {"a": 5, "b": 3}
    assert sum(share({"a": 100, "b": 100, "c": 100}, 10).values()) == 10


def fake_shared(root: Path) -> Path:
    """A tiny ../shared/data look-alike: four corpora, one per domain."""
    rng = random.Random(0)

    def sentence(domain: str) -> str:
        return " ".join(rng.choices(WORDS[domain][:10], k=8) + rng.choices(FILLER[:10], k=6)) + "."

    write_jsonl(root / "medical_medquad_en" / "m.jsonl", [
        {"id": f"q{i}", "question": f"What is condition {i} and its treatment ?",
         "answer": " ".join(sentence("medical") for _ in range(12))} for i in range(60)])
    write_jsonl(root / "finance_fiqa_en" / "f.jsonl", [
        {"question": f"How do I invest {i} dollars in stock ?", "answer": " ".join(sentence("finance") for _ in range(12))}
        for i in range(60)])
    (root / "legal_laws_zh" / "刑法").mkdir(parents=True)
    for i in range(30):
        body = "\n\n".join(f"第{k}条 " + "".join(rng.choices(WORDS["legal"][10:], k=40)) for k in range(8))
        (root / "legal_laws_zh" / "刑法" / f"law{i}.md").write_text(
            f"# 中华人民共和国某法第{i}号\n\n<!-- INFO END -->\n\n## 第一章 总则\n\n{body}\n", encoding="utf-8")
    (root / "en_tinyshakespeare").mkdir()
    (root / "en_tinyshakespeare" / "input.txt").write_text(
        "\n\n".join(f"ROMEO {i}:\n" + " ".join(rng.choices(FILLER[:10] + ["love", "night", "thou"], k=60))
                    for i in range(300)), encoding="utf-8")
    return root


def test_build_splits_by_document(tmp_path: Path) -> None:
    from lightseek.data.domains.build import build
    from lightseek.data.domains.config import BuildConfig

    cfg = BuildConfig(shared=str(fake_shared(tmp_path / "shared")), per_domain=120, questions_per_domain=20,
                      section_chars=2000, max_chars=400, heldout_fraction=0.25)
    manifest = build(cfg, tmp_path / "data")
    rows = {s: [json.loads(line) for line in (tmp_path / "data" / f"{s}.jsonl").open(encoding="utf-8")]
            for s in ("train", "heldout", "questions")}
    train_docs = {(r["source"], r["doc"]) for r in rows["train"]}
    held_docs = {(r["source"], r["doc"]) for r in rows["heldout"]}
    assert train_docs and held_docs and not train_docs & held_docs
    assert {r["domain"] for r in rows["train"]} == {"medical", "finance", "legal", "general"}
    assert all(len(r["text"]) <= 400 for r in rows["train"])
    assert max(manifest["counts"]["train"]["domains"].values()) <= 120
    train_text = "\x00".join(r["text"] for r in rows["train"])
    assert rows["questions"] and all(r["text"] not in train_text for r in rows["questions"])
    assert {r["source"] for r in rows["questions"]} >= {"medical_medquad_en", "legal_laws_zh"}
    qdocs = {(r["source"], r["doc"]) for r in rows["questions"] if r["source"] != "legal_laws_zh"}
    assert qdocs <= held_docs  # questions only of held-out documents
    assert "第一章" not in train_text and "# " not in train_text  # headings are not training text
    assert manifest["counts"]["questions"]["total"] == len(rows["questions"])
    assert "| train | medical | medical_medquad_en |" in (tmp_path / "data" / "README.md").read_text(encoding="utf-8")
    assert manifest["missing_sources"]  # the other corpora are reported, not silently ignored


def test_cli_end_to_end(tmp_path: Path, capsys, monkeypatch) -> None:
    from lightseek.cli import main

    data = tmp_path / "data"
    for split, seed in (("train", 0), ("heldout", 1)):
        texts, labels = synthetic(30 if split == "train" else 8, seed)
        write_jsonl(data / f"{split}.jsonl", [{"text": t, "domain": d} for t, d in zip(texts, labels)])
    model = tmp_path / "model"
    assert main(["domains", "train", "--data", str(data), "--out", str(model), "--threshold", "0.4",
                 "--domains.C=5"]) == 0
    out = capsys.readouterr().out
    assert "heldout" in out and "| **macro** |" in out
    meta = json.loads((model / "domains.json").read_text(encoding="utf-8"))
    assert meta["threshold"] == 0.4 and meta["config"]["C"] == 5.0
    assert meta["metrics"]["heldout"]["macro_f1"] >= 0.9
    assert meta["data"][0]["path"].endswith("train.jsonl")
    png, js = tmp_path / "cm.png", tmp_path / "m.json"
    assert main(["domains", "eval", str(model), "--data", str(data / "heldout.jsonl"), "--plot", str(png),
                 "--json", str(js)]) == 0
    assert "confusion matrix" in capsys.readouterr().out and png.stat().st_size > 0
    assert json.loads(js.read_text())["macro_f1"] == pytest.approx(meta["metrics"]["heldout"]["macro_f1"])
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "患者 医生 诊断 治疗 发烧", "id": 1},
                                              {"text": "bank loan interest dividend stock", "id": 2}])
    assert main(["domains", "classify", str(model), str(src), "--out", str(tmp_path / "out.jsonl")]) == 0
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["domain"]) for r in got] == [(1, "medical"), (2, "finance")]
    assert all(0.4 <= r["confidence"] <= 1 for r in got)
    lines = tmp_path / "in.txt"
    lines.write_text("contract court clause liability judge\n\n法院 判决 合同 条款\n", encoding="utf-8")
    assert main(["domains", "classify", str(model), str(lines), "--threshold", "1.0"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["domain"] for r in got] == ["general", "general"] and got[1]["text"] == "法院 判决 合同 条款"
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "stock market bank profit", "k": 7}\n'))
    assert main(["domains", "classify", str(model), "-"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["k"] == 7 and got["domain"] == "finance"
    assert main(["domains", "eval", str(tmp_path / "nowhere"), "--data", str(src)]) == 2
    assert "domain classifier not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "domain": "x"}\nnot json\n', encoding="utf-8")
    assert main(["domains", "train", "--data", str(bad), "--out", str(tmp_path / "m2")]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "finance_fiqa_en").is_dir(), reason="../shared/data is absent")
def test_shared_sources_read() -> None:
    from lightseek.data.domains.sources import read_source

    docs = read_source(SHARED, "finance_fiqa_en", 20_000)
    assert len(docs) == 648 and all(d.questions and d.text for d in docs[:50])
    laws = read_source(SHARED, "legal_laws_zh", 20_000)
    assert len(laws) == 147 and not any(line.startswith("#") for d in laws for line in d.text.splitlines())
