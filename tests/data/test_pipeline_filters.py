"""Pipeline text steps on positive and negative examples, English and Chinese: normalisation,
language identification, quality filters, the phrase filter and domain tagging."""

from __future__ import annotations

import pytest
from _pipeline_corpus import en_text, zh_text

from lightseek.config import from_dict
from lightseek.data.pipeline.config import NormalizeConfig, PipelineConfig, QualityConfig
from lightseek.data.pipeline.lang import LanguageId
from lightseek.data.pipeline.normalize import normalize_text
from lightseek.data.pipeline.quality import quality_problem
from lightseek.data.pipeline.readers import Record
from lightseek.data.pipeline.steps import build_steps
from lightseek.errors import ConfigError

ZH_PROSE = ("北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心。这座城市有三千多年的建城史，"
            "故宫、天坛和长城等名胜古迹吸引着来自世界各地的游客。近年来，北京在科技创新方面发展迅速，"
            "中关村聚集了大量高新技术企业，许多年轻人在这里开始创业。")
EN_PROSE = ("The river ran quietly past the village, and in the morning the fishermen pushed their boats "
            "into the water while the children watched from the bridge. It was a small place, but it had "
            "a school, a market and a library that the whole valley was proud of.")


def run_step(name: str, text: str, **cfg) -> tuple[str | None, Record]:
    step = build_steps(from_dict(PipelineConfig, {"steps": [name], **cfg}))[0]
    rec = Record("t.txt", 0, 0, text)
    return step.apply_batch([rec])[0], rec


# --- normalisation ---------------------------------------------------------------------------

def test_normalize_nfc_keeps_fullwidth_punctuation_nfkc_folds_it():
    text = "Cafe\u0301，你好！ＡＢＣ"
    assert normalize_text(text, NormalizeConfig()) == "Café，你好！ＡＢＣ"
    assert normalize_text(text, NormalizeConfig(form="NFKC")) == "Café,你好!ABC"


def test_normalize_controls_spaces_and_blank_lines():
    text = "a\x00b\u200bc  \t d \r\nline2   \n\n\n\n\nline3\x07\u3000end  "
    assert normalize_text(text, NormalizeConfig()) == "abc d\nline2\n\nline3 end"
    assert normalize_text(text, NormalizeConfig(max_blank_lines=0)) == "abc d\nline2\nline3 end"
    reason, _ = run_step("normalize", " \u200b\x00 \n\n ")
    assert reason is not None and "length 0" in reason


# --- language --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, lang", [(ZH_PROSE, "zh"), (EN_PROSE, "en"), (en_text(3), "en"),
                                        ("這是一個繁體中文的句子，用來測試語言識別是否正確。", "zh")])
def test_language_shortcuts(text, lang):
    assert LanguageId(0.3, 600, 0.3).identify(text)[0] == lang


def test_language_other_and_keep_list():
    fr = ("Le chat est sur la table et il mange une souris que la femme a laissée dans la cuisine pendant que "
          "les enfants jouaient dehors avec le chien du voisin.")
    ja = "これは日本語の文章です。東京は日本の首都であり、多くの人々が住んでいます。"
    assert LanguageId(0.3, 600, 0.3).identify(fr)[0] == "fr"
    assert LanguageId(0.3, 600, 0.3).identify(ja)[0] != "zh"
    reason, rec = run_step("lang", fr)
    assert rec.meta["lang"] == "fr" and reason.startswith("language fr")
    reason, rec = run_step("lang", ZH_PROSE)
    assert reason is None and rec.meta["lang"] == "zh"
    assert run_step("lang", fr, lang={"keep": []})[0] is None


# --- quality ---------------------------------------------------------------------------------

Q = QualityConfig(min_chars=50)


@pytest.mark.parametrize("text, zh", [(EN_PROSE, False), (ZH_PROSE, True), (en_text(5, 400), False),
                                      (zh_text(5, 600), True)])
def test_quality_keeps_ordinary_text(text, zh):
    assert quality_problem(text, zh, Q) is None


@pytest.mark.parametrize("text, zh, kind", [
    ("Hello there.", False, "length"),
    ("你好，世界。", True, "length"),
    (EN_PROSE + " {{#|@@}} ### <<>> ^^ ~~ $$ %% && ** ++ == \\\\ // ## @@ {{}} || ## $$ %% ^^ ~~ <> ** ++ ==",
     False, "symbol_ratio"),
    (ZH_PROSE + "★★★★★◆◆◆◆◆■■■■■※※※※※♥♥♥♥♥★★★★★◆◆◆◆◆■■■■■", True, "symbol_ratio"),
    ("Totals 2023: 1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 1234 5678 9012 and more", False,
     "digit_ratio"),
    ("电话号码统计：123456789012345678901234567890123456789012345678901234567890", True, "digit_ratio"),
    ("\n".join(["Buy the best watches today at our store!"] * 8 + ["Contact us."]), False, "dup_line_ratio"),
    ("\n".join(["欢迎光临本店，全场商品八折优惠！"] * 8 + [ZH_PROSE]), True, "dup_line_ratio"),
    ("click here to win a free prize " * 15, False, "dup_5gram_ratio"),
    ("我爱北京天安门，天安门上太阳升。" * 15, True, "dup_10gram_ratio"),
])
def test_quality_removes(text, zh, kind):
    reason = quality_problem(text, zh, Q)
    assert reason is not None and reason.split(" ")[0] == kind, reason


def test_quality_reason_names_value_and_limit():
    text = "Numbers: " + " ".join(str(1000 + i) for i in range(30))
    assert quality_problem(text, False, QualityConfig(min_chars=10, max_digit_ratio=0.3)) == "digit_ratio 0.94 > 0.30"  # 120 digits of 128 non-space characters


def test_play_with_repeated_speaker_names_is_kept():
    lines = []
    for i in range(20):
        lines += ["HAMLET.", en_text(100 + i, 20), "HORATIO.", en_text(200 + i, 20)]
    assert quality_problem("\n".join(lines), False, Q) is None


def test_phrase_filter():
    assert run_step("phrases", "As an AI language model, I cannot help with that.")[0] is not None
    assert run_step("phrases", "作为一个人工智能模型，我无法回答。")[0] is not None
    assert run_step("phrases", EN_PROSE)[0] is None


# --- domain ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, domain", [
    ("The patient reported symptoms of fever; the doctor began treatment after the diagnosis.", "medical"),
    ("患者出现发热症状，医生诊断后开始治疗，并开具了药物。", "medical"),
    ("根据本法第一条，法院认为被告违反了合同约定，原告的请求应予支持。", "legal"),
    ("Shares rose as investors cheered the bank's profit and a higher dividend; the stock market gained.", "finance"),
    (EN_PROSE, "general"),
    (ZH_PROSE, "general"),
])
def test_keyword_domain_tagger(text, domain):
    reason, rec = run_step("domain", text)
    assert reason is None and rec.meta["domain"] == domain
    assert 0.0 <= rec.meta["domain_confidence"] <= 1.0


def test_domain_keep_list_removes_other_domains():
    reason, rec = run_step("domain", EN_PROSE, domain={"keep": ["medical"]})
    assert rec.meta["domain"] == "general" and reason.startswith("domain general")


def test_domain_step_uses_a_trained_classifier(tmp_path):
    """With domain.classifier the step tags records with `lightseek domains`' model."""
    from lightseek.data.domains import DomainClassifier, DomainConfig

    legal = ["the court held that the contract was void and the defendant must pay damages",
             "the plaintiff filed a lawsuit alleging breach of the agreement under state law"]
    other = ["the garden was full of roses and the children played in the afternoon sun",
             "she walked along the river and watched the boats drift slowly towards the sea"]
    DomainClassifier.fit(legal * 5 + other * 5, ["legal"] * 10 + ["general"] * 10,
                         DomainConfig(min_df=1, threshold=0.0)).save(tmp_path / "clf")
    reason, rec = run_step("domain", "The court ruled the contract void; the defendant owes damages under the law.",
                           domain={"classifier": str(tmp_path / "clf")})
    assert reason is None and rec.meta["domain"] == "legal" and 0.5 < rec.meta["domain_confidence"] <= 1.0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="quality.max_digit_ratio"):
        from_dict(PipelineConfig, {"quality": {"max_digit_ratio": 1.5}})
    with pytest.raises(ConfigError, match="unknown step 'dedupe'"):
        from_dict(PipelineConfig, {"steps": ["normalize", "dedupe"]})
    with pytest.raises(ConfigError, match="pii.types"):
        from_dict(PipelineConfig, {"pii": {"types": ["EMAIL", "SSN"]}})
