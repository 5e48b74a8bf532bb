"""The safety policy, rules, data mapping, classifier, cascade and audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightseek.errors import ConfigError
from lightseek.safety.cascade import Moderator, language
from lightseek.safety.policy import Policy, Rule, load_policy
from lightseek.safety.rules import Rules, load_rules

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_policy_yaml_is_checked_and_the_strongest_action_wins(tmp_path) -> None:
    p = tmp_path / "policy.yaml"
    p.write_text("categories:\n  S6: {threshold: 0.9, action: flag}\n  S7: {action: redact}\nlog_text: true\n")
    pol = load_policy(p)
    assert pol.categories["S6"] == Rule(0.9, "flag") and pol.categories["S1"] == Rule(0.5, "block") and pol.log_text
    assert pol.action({"S6": 0.95, "S7": 0.6}) == ("redact", ["S6", "S7"])
    assert pol.action({"S6": 0.95, "S1": 0.5}) == ("block", ["S6", "S1"])
    assert pol.action({"S6": 0.5}) == ("allow", [])
    for text, err in (("categories:\n  S99: {}\n", "unknown category 'S99'"),
                      ("categories:\n  S1: {action: shout}\n", "categories.S1.action 'shout'"),
                      ("categories:\n  S1: {threshold: 2}\n", "outside \\[0, 1\\]"),
                      ("colour: red\n", "unknown key\\(s\\) colour")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=err):
            load_policy(p)


def test_rules_match_english_words_and_chinese_substrings(tmp_path) -> None:
    r = Rules({"S9": {"terms": ["nerve agent", "制造炸弹"], "patterns": [r"build (a )?bomb"]}})
    assert r.match("where to buy a NERVE AGENT") == {"S9": "NERVE AGENT"}
    assert r.match("nerve agents") == {} and r.match("我想制造炸弹") == {"S9": "制造炸弹"}
    assert r.match("how to build a bomb") == {"S9": "build a bomb"}
    with pytest.raises(ConfigError, match=r"S9.patterns\[0\]"):
        Rules({"S9": {"patterns": ["(unclosed"]}})
    with pytest.raises(ConfigError, match="unknown category"):
        Rules({"violence": {"terms": ["x"]}})
    assert "S4" in load_rules().compiled  # the package's own rules load
    assert language("这是中文。") == "zh" and language("plain English") == "en"


@pytest.mark.skipif(not (SHARED / "safety_openai_moderation_en").is_dir(), reason="needs ../shared/data")
def test_the_shared_sets_map_to_the_policy_with_fixed_splits() -> None:
    from lightseek.safety.data import EVAL_ONLY, for_training, load_examples, sensitive_harmless, validation

    ex = load_examples(SHARED, harmless_per_source=200)
    by = {}
    for e in ex:
        by.setdefault(e.source, []).append(e)
    assert all(e.harmful for e in by["ailuminate_en"]) and all(e.harmful for e in by["jade_zh"])
    assert {c for e in by["ailuminate_en"] for c in e.categories} == {f"S{i}" for i in range(1, 14)}
    assert not any(e.harmful for e in by["alpaca_zh"]) and all(e.lang == "zh" for e in by["cold_zh"])
    train = for_training(ex)
    assert not any(e.source in EVAL_ONLY for e in train) and "toxicn_zh" in {e.source for e in validation(ex)}
    share = len(validation(ex)) / len(ex)
    assert 0.18 < share < 0.22 and {e.text for e in train}.isdisjoint(e.text for e in validation(ex))
    again = {e.text: e.split for e in load_examples(SHARED, harmless_per_source=50)}
    assert all(again[e.text] == e.split for e in ex if e.text in again)  # splits depend on the text alone
    sens = sensitive_harmless(ex)
    assert sens and not any(e.harmful for e in sens)


def test_the_cascade_decides_records_and_audits(tiny_classifier, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    mod = Moderator(tiny_classifier, Policy(), audit_log=audit)
    d = mod.check(["I will kill Tom tonight and make it hurt", "how do I make soup for Anna this weekend?",
                   "where can I get sarin for the subway"], request_id="r1", key_id=7)
    assert d[0].action == "block" and "S1" in d[0].categories and d[0].stage == "linear"
    assert d[1].action == "allow" and not d[1].flagged
    assert d[2].stage == "rules" and "S9" in d[2].categories and d[2].stages["rules"]["S9"] == "sarin"
    res = d[0].openai()
    assert res["flagged"] and res["categories"]["violence"] and res["category_scores"]["violence"] >= 0.5
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [x["action"] for x in lines] == ["block", "allow", "block"] and lines[0]["key_id"] == 7
    assert "text" not in lines[0] and len(lines[0]["sha256"]) == 64
    assert "kill Tom" not in audit.read_text()
    metrics = mod.metrics.exposition()
    assert 'lightseek_moderation_decisions_total{action="block",category="S9",direction="input"' in metrics
    logged = Moderator(tiny_classifier, Policy(log_text=True), audit_log=tmp_path / "with_text.jsonl")
    logged.check(["hello there"])
    assert json.loads((tmp_path / "with_text.jsonl").read_text())["text"] == "hello there"
    with pytest.raises(ConfigError, match="no safety classifier"):
        Moderator(tmp_path)


def test_safety_cli_trains_and_checks(tiny_shared, tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "clf"
    env_cmd = [sys.executable, "-m", "lightseek", "safety"]
    r = subprocess.run([*env_cmd, "train", "--out", str(out), "--data", str(tiny_shared), "--harmless", "50"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*env_cmd, "check", str(out), "all jews are vermin and should be wiped out",
                        "Give me 5 tips for rice."], capture_output=True, text=True, timeout=120)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["action"] for x in rows] == ["block", "allow"] and rows[0]["categories"] == ["S10"]
    r = subprocess.run([*env_cmd, "check", str(tmp_path / "none"), "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "no safety classifier" in r.stderr and "Traceback" not in r.stderr
