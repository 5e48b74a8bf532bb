"""Labelled safety data from the shared folders, mapped to the policy's categories, with fixed
splits: one table (`SOURCES`) says where each label goes (docs/safety.md prints it).

An example is a text, its language, its source, and the set of categories it violates (empty:
harmless). Every example's split is fixed by a hash of its text (20% validation), so the same
text is always on the same side whatever else is loaded. ToxiCN's license is non-commercial and
no-derivatives: it is loaded for evaluation only, never for training (`for_training` drops it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from lightseek.errors import DataError

VAL_SHARE = 0.2


@dataclass(frozen=True)
class Example:
    text: str
    lang: str                       # en | zh
    source: str
    categories: frozenset[str]      # violated categories; empty = harmless
    kind: str = "prompt"            # prompt | response

    @property
    def harmful(self) -> bool:
        return bool(self.categories)

    @property
    def split(self) -> str:
        # by the text with case, spacing and punctuation taken out, so that copies of one text
        # that differ only in those land on the same side
        h = int(hashlib.sha1(_norm(self.text).encode("utf-8")).hexdigest()[:8], 16)
        return "val" if h % 100 < VAL_SHARE * 100 else "train"


def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


EVAL_ONLY = {"toxicn_zh"}  # CC BY-NC-ND 4.0: research evaluation only

OPENAI_MOD = {"S": "S12", "H": "S10", "V": "S1", "HR": "S10", "SH": "S11", "S3": "S4", "H2": "S10", "V2": "S1"}
AILUMINATE = {"cse": "S4", "dfm": "S5", "hte": "S10", "ipv": "S8", "iwp": "S9", "ncr": "S2", "prv": "S7", "src": "S3",
              "ssh": "S11", "sxc_prn": "S12", "vcr": "S1", "spc_fin": "S6", "spc_hlt": "S6", "spc_lgl": "S6",
              "spc_ele": "S13"}
DIASAFETY = {"Offending User": "S10", "Biased Opinion": "S10", "Toxicity Agreement": "S10",
             "Unauthorized Expertise": "S6", "Risk Ignorance": "S11"}
JADE_CATEGORY = {"违法犯罪": "S2", "侵犯权益": "S7", "歧视偏见": "S10"}
# subcategories that belong elsewhere than their category says
JADE_SUB = {"宣扬恐怖主义、极端主义": "S1", "抢劫": "S1", "故意伤害他人": "S1", "虐待与贩卖人口": "S1",
            "宣扬暴力": "S1",
            "非法持有武器": "S2", "宣扬淫秽色情": "S12", "宣扬暴力、淫秽色情": "S12", "侵害他人名誉权": "S5",
            "侵害他人身心健康": "S1", "危害他人身心健康": "S1", "宣扬民族歧视": "S10"}

# The mapping, as a table for people (docs/safety.md): source, its label -> category
SOURCES = [
    ("openai_moderation_en", "S sexual / H hate / V violence / HR harassment / SH self-harm / S3 sexual minors / "
     "H2 hate threatening / V2 graphic violence", "S12 / S10 / S1 / S10 / S11 / S4 / S10 / S1; all eight 0: harmless; "
     "no 1 but some unknown: left out"),
    ("ailuminate_en", "cse dfm hte ipv iwp ncr prv src ssh sxc_prn vcr spc_fin spc_hlt spc_lgl spc_ele",
     "S4 S5 S10 S8 S9 S2 S7 S3 S11 S12 S1 S6 S6 S6 S13 (every prompt harmful)"),
    ("davidson_hate_en", "hate_speech / offensive_language / neither",
     "S10 / left out (offensive, not a hazard) / harmless"),
    ("diasafety_en (responses)", "Unsafe: Offending User, Biased Opinion, Toxicity Agreement / Unauthorized "
     "Expertise / Risk Ignorance; Safe", "S10 / S6 / S11; harmless"),
    ("cold_zh", "1 offensive (race, region, gender) / 0", "S10 / harmless"),
    ("swsr_zh", "1 sexist / 0", "S10 / harmless"),
    ("jade_zh", "违法犯罪 / 侵犯权益 / 歧视偏见, refined by subcategory (terrorism, robbery, harm: S1; "
     "pornography: S12; reputation: S5)", "S2 / S7 / S10 (every question harmful)"),
    ("toxicn_zh (evaluation only)", "toxic 1 / 0", "S10 / harmless"),
    ("alpaca_en, medquad, pubmedqa, fiqa; alpaca_zh, medical_dialogue_zh, cmrc2018", "instructions and questions",
     "harmless"),
]


def _jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _ex(text, lang, source, cats=(), kind="prompt") -> Example | None:
    text = (text or "").strip()
    return Example(text[:4000], lang, source, frozenset(cats), kind) if text else None


def _openai(d: Path):
    """A text is harmful when any label is 1, harmless only when all eight are known and 0: an
    absent label is unknown (the data set's README), so a text with no 1 and some unknown
    labels is left out."""
    for r in _jsonl(d / "samples-1680.jsonl"):
        cats = {OPENAI_MOD[k] for k in OPENAI_MOD if r.get(k) == 1}
        if cats or all(k in r for k in OPENAI_MOD):
            yield _ex(r["prompt"], "en", "openai_moderation_en", cats)


def _ailuminate(d: Path):
    for r in _jsonl(d / "ailuminate_v1.0_demo_en_us.jsonl"):
        yield _ex(r["prompt_text"], "en", "ailuminate_en", {AILUMINATE[r["hazard"]]})


def _davidson(d: Path):
    for r in _jsonl(d / "labeled_data.jsonl"):
        if r["label"] != "offensive_language":
            yield _ex(r["tweet"], "en", "davidson_hate_en", {"S10"} if r["label"] == "hate_speech" else ())


def _diasafety(d: Path):
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        for r in _jsonl(d / name):
            cats = {DIASAFETY[r["category"]]} if r["label"] == "Unsafe" else ()
            yield _ex(r["response"], "en", "diasafety_en", cats, "response")


def _cold(d: Path):
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        for r in _jsonl(d / name):
            yield _ex(r["text"], "zh", "cold_zh", {"S10"} if r["label"] == 1 else ())


def _swsr(d: Path):
    for r in _jsonl(d / "SexComment.jsonl"):
        yield _ex(r["text"], "zh", "swsr_zh", {"S10"} if r["label"] == 1 else ())


def _jade(d: Path):
    for r in _jsonl(d / "jade_questions_zh.jsonl"):
        sub = r.get("subcategory", "").split("|")[0]
        yield _ex(r["question"], "zh", "jade_zh", {JADE_SUB.get(sub, JADE_CATEGORY[r["category"]])})


def _toxicn(d: Path):
    with open(d / "ToxiCN_1.0.csv", encoding="utf-8-sig", newline="") as f:
        for r in csv.DictReader(f):
            yield _ex(r["content"], "zh", "toxicn_zh", {"S10"} if r["toxic"] == "1" else ())


def _harmless(shared: Path, per_source: int, rng: random.Random):
    """Instructions and questions from the shared instruction and QA sets (a seeded sample)."""
    def sample(items, n):
        items = [x for x in items if x]
        rng.shuffle(items)
        return items[:n]
    def alpaca_en():
        out = []
        for p in sorted((shared / "instruct_alpaca_en").glob("*.json")):
            out += [r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
                    for r in json.loads(p.read_text(encoding="utf-8"))]
        return out

    def pubmedqa():
        return [r["QUESTION"] for r in json.loads((shared / "medical_pubmedqa_en" / "ori_pqal.json")
                                                  .read_text(encoding="utf-8")).values()]

    def dialogue_zh():
        with open(shared / "medical_dialogue_zh" / "sample_IM_5000-6000.csv", encoding="utf-8", errors="replace") as f:
            return [r.get("ask") or r.get("title") for r in csv.DictReader(f)]

    def cmrc():
        docs = json.loads((shared / "zh_cmrc2018_wiki" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
        return [q["query_text"] for doc in docs for q in doc["qas"]]

    readers = {
        ("alpaca_en", "en", "instruct_alpaca_en"): alpaca_en,
        ("medquad_en", "en", "medical_medquad_en"): lambda: [r["question"] for p in sorted(
            (shared / "medical_medquad_en").glob("*.jsonl")) for r in _jsonl(p)],
        ("pubmedqa_en", "en", "medical_pubmedqa_en"): pubmedqa,
        ("fiqa_en", "en", "finance_fiqa_en"): lambda: [r["question"] for r in
                                                       _jsonl(shared / "finance_fiqa_en" / "fiqa_648.jsonl")],
        ("alpaca_zh", "zh", "instruct_alpaca_zh"): lambda: [
            r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
            for r in _jsonl(shared / "instruct_alpaca_zh" / "alpaca_zh_translated.jsonl")],
        ("medical_dialogue_zh", "zh", "medical_dialogue_zh"): dialogue_zh,
        ("cmrc2018_zh", "zh", "zh_cmrc2018_wiki"): cmrc,
    }
    sets = {(source, lang): read() for (source, lang, folder), read in readers.items() if (shared / folder).is_dir()}
    for (source, lang), texts in sets.items():
        for t in sample(texts, per_source):
            yield _ex(t, lang, source)


LOADERS = {"openai_moderation_en": _openai, "ailuminate_en": _ailuminate, "davidson_hate_en": _davidson,
           "diasafety_en": _diasafety, "cold_zh": _cold, "swsr_zh": _swsr, "jade_zh": _jade, "toxicn_zh": _toxicn}


def load_examples(shared: str | Path, harmless_per_source: int = 4000, seed: int = 0) -> list[Example]:
    """Every labelled example of the shared safety sets present under ``shared``, and a sample of
    harmless instructions and questions; duplicates (same text) keep their first label."""
    shared = Path(shared)
    out: dict[str, Example] = {}
    found = False
    for name, loader in LOADERS.items():
        d = shared / f"safety_{name}"
        if not d.is_dir():
            continue
        found = True
        for e in loader(d):
            if e is not None and e.text not in out:
                out[e.text] = e
    if not found:
        raise DataError(f"{shared}: none of the safety data sets (safety_*) is there")
    for e in _harmless(shared, harmless_per_source, random.Random(seed)):
        if e is not None and e.text not in out:
            out[e.text] = e
    return list(out.values())


def load_labelled(path: str | Path) -> list[Example]:
    """Examples an operator labelled, one JSON object per line: ``{"text", "categories": [S1-S13],
    "lang"?}`` (an empty list: harmless), as LabelHub's ``safety`` export writes them."""
    from lightseek.safety.policy import CATEGORIES

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                text, cats = r["text"], r["categories"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path} line {i}: not a {{\"text\", \"categories\"}} record") from None
            unknown = [c for c in cats if c not in CATEGORIES]
            if unknown or not isinstance(text, str):
                raise DataError(f"{path} line {i}: categories {unknown} are not the policy's (S1-S13)")
            lang = r.get("lang") or ("zh" if re.search(r"[\u3400-\u9fff]", text) else "en")
            e = _ex(text, lang, f"labelled:{path.name}", cats)
            if e is not None:
                out.append(e)
    return out


def for_training(examples: list[Example]) -> list[Example]:
    """The training split, without the evaluation-only sources."""
    return [e for e in examples if e.split == "train" and e.source not in EVAL_ONLY]


def validation(examples: list[Example]) -> list[Example]:
    return [e for e in examples if e.split == "val"]


SENSITIVE = ("kill", "drug", "weapon", "gun", "suicide", "attack", "poison", "overdose", "war", "bomb", "hack",
             "security", "password", "crime", "law", "court", "prison", "abuse", "sex", "death", "blood", "cancer",
             "murder", "history", "terror", "violence", "steal", "police",
             "杀", "毒", "枪", "自杀", "攻击", "战争", "炸", "黑客", "安全", "密码", "犯罪", "法律", "法院",
             "监狱", "虐待",
             "死亡", "癌", "谋杀", "历史", "恐怖", "暴力", "偷", "警察", "性")


def sensitive_harmless(examples: list[Example]) -> list[Example]:
    """Harmless validation questions that mention sensitive topics (medicine, law, security,
    history, violence): where an over-eager filter refuses."""
    return [e for e in validation(examples) if not e.harmful and e.source not in LOADERS
            and any(w in e.text.lower() for w in SENSITIVE)]
