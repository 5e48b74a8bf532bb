"""Expert specialisation across corpora: the score, the table and the heatmap."""

from __future__ import annotations

import pytest
import torch

from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import DataError
from lightseek.eval.routing import load_shares, specialisation
from lightseek.eval.run import parse_corpora, run_eval
from lightseek.model.checkpoint import save_checkpoint
from lightseek.model.config import preset
from lightseek.model.transformer import Transformer
from lightseek.train.config import load_run_config


def test_specialisation_score_bounds():
    same = {"a": [[0.5, 0.5, 0.0, 0.0]], "b": [[0.5, 0.5, 0.0, 0.0]]}
    own = {"a": [[0.5, 0.5, 0.0, 0.0]], "b": [[0.0, 0.0, 0.5, 0.5]]}
    half = {"a": [[0.5, 0.5, 0.0, 0.0]], "b": [[0.0, 0.5, 0.5, 0.0]]}
    assert specialisation(same)["score"] == pytest.approx(0.0, abs=1e-12)
    assert specialisation(own)["score"] == pytest.approx(1.0)
    assert 0.0 < specialisation(half)["score"] < 1.0
    with pytest.raises(ValueError):
        specialisation({"a": [[1.0]]})


def test_parse_corpora_names():
    assert parse_corpora(["en=/x/en.txt", "/y/zh.jsonl"]) == {"en": "/x/en.txt", "zh": "/y/zh.jsonl"}
    with pytest.raises(DataError, match="twice"):
        parse_corpora(["a=/1", "a=/2"])


def test_eval_by_corpus_reports_every_corpus(tmp_path):
    en = "The court held that the contract was void because the parties never agreed. " * 60
    zh = "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 60
    tok = Tokenizer.train([en, zh], vocab_size=400)
    tok.save(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(preset("debug", vocab_size=tok.vocab_size))
    with torch.no_grad():
        for m in model.moe_layers():
            m.router.weight.normal_(0, 1.0)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer_file=tmp_path / "tokenizer.json")
    (tmp_path / "en.txt").write_text(en, encoding="utf-8")
    (tmp_path / "zh.txt").write_text(zh, encoding="utf-8")
    cfg = load_run_config(None, ["--preset=debug", "--train.seq_len=32", "--train.batch_size=4"])
    out = run_eval(str(tmp_path / "ckpt"), cfg, data=[f"legal={tmp_path / 'en.txt'}", str(tmp_path / "zh.txt")],
                   plot=str(tmp_path / "spec.png"))
    assert set(out["corpora"]) == {"legal", "zh"}
    for r in out["corpora"].values():
        assert r["tokens"] > 0 and sum(r["routing"][0]["tokens_per_expert"]) > 0
    assert 0.0 < out["specialisation"]["score"] <= 1.0  # different text, different experts
    assert "specialisation score" in out["text"] and "legal" in out["text"]
    assert (tmp_path / "spec.png").stat().st_size > 1000


def test_eval_refuses_shards_from_another_tokenizer(tmp_path):
    from lightseek.data.corpus import Document
    from lightseek.data.prepare import prepare_dataset

    text = "alpha beta gamma delta epsilon " * 200
    ours = Tokenizer.train([text], vocab_size=300)
    ours.save(tmp_path / "tokenizer.json")
    save_checkpoint(tmp_path / "ckpt", Transformer(preset("debug", vocab_size=ours.vocab_size)),
                    tokenizer_file=tmp_path / "tokenizer.json")
    docs = [Document("x", i, text[i * 500:(i + 1) * 500] + " zeta eta theta") for i in range(10)]
    prepare_dataset(lambda: iter(docs), tmp_path / "shards", vocab_size=290)  # its own tokenizer
    cfg = load_run_config(None, ["--preset=debug", "--train.seq_len=16"])
    with pytest.raises(DataError, match="another tokenizer"):
        run_eval(str(tmp_path / "ckpt"), cfg, data=[str(tmp_path / "shards")])


def test_many_layers_get_one_compact_panel_per_corpus(tmp_path):
    """A 30-layer MoE's heatmap stays a readable size: one panel per corpus, layers as rows."""
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from lightseek.eval.routing import COMPACT_LAYERS, plot_by_corpus

    layers = list(range(30))
    assert len(layers) > COMPACT_LAYERS

    def routing(skew: int) -> list[dict]:
        return [{"layer": i, "tokens_per_expert": [10 + 30 * ((e + skew) % 16 == i % 16) for e in range(16)]}
                for i in layers]

    results = {name: {"routing": routing(skew)} for skew, name in enumerate(["medical", "code", "zh"])}
    spec = specialisation({n: load_shares(r["routing"]) for n, r in results.items()})
    path = plot_by_corpus(results, spec, layers, tmp_path / "spec.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 300 < height < 1200 and width > height  # one row of panels, not 30 stacked heatmaps
