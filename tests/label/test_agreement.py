"""lightseek.label.agreement against hand-computed values: the arithmetic is in the comments, so a
wrong expected number can be checked without running any library."""

from __future__ import annotations

import json
import sys

import pytest

from lightseek.errors import ConfigError
from lightseek.label.agreement import (
    cohen_kappa,
    fleiss_kappa,
    item_agreement,
    krippendorff_alpha,
    pairwise_agreement,
    per_annotator,
    per_label,
    span_f1,
    summary,
)

REASON = "the label extra is not installed: pip install -e .[label]"


def _sklearn():
    pytest.importorskip("sklearn", reason=REASON)


def _statsmodels():
    pytest.importorskip("statsmodels", reason=REASON)


def _krippendorff():
    pytest.importorskip("krippendorff", reason=REASON)


# Four raters over six items; r4 shares no item. Used by per_annotator and summary.
UNITS = {
    "i1": {"r1": "a", "r2": "a", "r3": "b"},
    "i2": {"r1": "b", "r2": "b"},
    "i3": {"r1": "a", "r2": "b"},
    "i4": {"r1": "a", "r3": "a"},
    "i5": {"r3": "b", "r2": None},  # None: r2 skipped the item
    "i6": {"r4": "a"},
}


# --- Cohen's kappa ---------------------------------------------------------------------------

def test_cohen_kappa_2x2():
    _sklearn()
    # 2x2 table over 10 items:        b=yes  b=no
    #                        a=yes      4      1
    #                        a=no       2      3
    a = ["yes"] * 4 + ["yes"] * 1 + ["no"] * 2 + ["no"] * 3
    b = ["yes"] * 4 + ["no"] * 1 + ["yes"] * 2 + ["no"] * 3
    # po = (4 + 3) / 10 = 0.7
    # a says yes 5/10, b says yes 6/10: pe = 0.5*0.6 + 0.5*0.4 = 0.3 + 0.2 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_three_labels_and_negative():
    _sklearn()
    a = ["x", "x", "y", "z", "z", "y"]
    b = ["x", "y", "y", "z", "x", "y"]
    # agreements at items 1, 3, 4, 6: po = 4/6 = 2/3
    # a: x 2/6, y 2/6, z 2/6;  b: x 2/6, y 3/6, z 1/6
    # pe = (2*2 + 2*3 + 2*1) / 36 = 12/36 = 1/3
    # kappa = (2/3 - 1/3) / (1 - 1/3) = (1/3) / (2/3) = 0.5
    assert cohen_kappa(a, b) == pytest.approx(0.5)
    # Total disagreement: po = 0, pe = 0.5*0.5 + 0.5*0.5 = 0.5, kappa = (0 - 0.5) / 0.5 = -1
    assert cohen_kappa(["p", "q"], ["q", "p"]) == pytest.approx(-1.0)


def test_cohen_kappa_undefined_and_zero_over_zero():
    _sklearn()
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a"], ["a"]) is None  # fewer than 2 items
    # One label everywhere: po = 1, pe = 1*1 = 1, kappa = 0/0 -> 1.0 by convention
    assert cohen_kappa(["a", "a", "a"], ["a", "a", "a"]) == 1.0
    with pytest.raises(ValueError):
        cohen_kappa(["a", "b"], ["a"])


def test_cohen_kappa_multi_label_ratings_compare_as_sets():
    _sklearn()
    # {"a","b"} == ("b","a") == ["a","b"] and "c" == ("c",): all three items agree.
    a = [{"a", "b"}, ("b", "a"), "c"]
    b = [frozenset({"a", "b"}), ["a", "b"], ("c",)]
    # po = 1; both raters: {a,b} 2/3, c 1/3; pe = 4/9 + 1/9 = 5/9; kappa = (1 - 5/9) / (1 - 5/9) = 1
    assert cohen_kappa(a, b) == pytest.approx(1.0)


# --- Fleiss' kappa ---------------------------------------------------------------------------

def test_fleiss_kappa_two_categories():
    _statsmodels()
    table = [
        ["A", "A", "A"],  # n_A=3 n_B=0: P = (3*2 + 0) / (3*2) = 1
        ["A", "A", "B"],  # n_A=2 n_B=1: P = (2*1 + 1*0) / 6 = 1/3
        ["B", "B", "B"],  # P = 1
        ["A", "B", "B"],  # P = 1/3
        ["A", "B"],       # 2 raters: not the common count (3), ignored
        ["B"],            # ignored
    ]
    # P_bar = (1 + 1/3 + 1 + 1/3) / 4 = (8/3) / 4 = 2/3
    # p_A = (3 + 2 + 0 + 1) / 12 = 1/2, p_B = 1/2: Pe = 1/4 + 1/4 = 1/2
    # kappa = (2/3 - 1/2) / (1 - 1/2) = (1/6) / (1/2) = 1/3
    assert fleiss_kappa(table) == pytest.approx(1 / 3)


def test_fleiss_kappa_three_categories():
    _statsmodels()
    table = [
        ["x", "x", "x", "x"],  # P = 4*3 / 12 = 1
        ["x", "x", "y", "y"],  # P = (2*1 + 2*1) / 12 = 1/3
        ["y", "y", "y", "z"],  # P = (3*2 + 1*0) / 12 = 1/2
        ["z", "z", "z", "z"],  # P = 1
        ["x", "y", "z", "z"],  # P = (0 + 0 + 2*1) / 12 = 1/6
    ]
    # P_bar = (1 + 1/3 + 1/2 + 1 + 1/6) / 5 = 3/5 = 0.6
    # totals over 20 ratings: x 4+2+0+0+1 = 7, y 0+2+3+0+1 = 6, z 0+0+1+4+2 = 7
    # Pe = 0.35^2 + 0.30^2 + 0.35^2 = 0.1225 + 0.09 + 0.1225 = 0.335
    # kappa = (0.6 - 0.335) / (1 - 0.335) = 0.265 / 0.665 = 53/133 = 0.398496...
    assert fleiss_kappa(table) == pytest.approx(53 / 133)


def test_fleiss_kappa_undefined_and_zero_over_zero():
    _statsmodels()
    assert fleiss_kappa([]) is None
    assert fleiss_kappa([["a", "b", "c"]]) is None          # one row of the common count
    assert fleiss_kappa([["a"], ["b"], ["a"]]) is None      # one rater per row
    assert fleiss_kappa([["a", "b"], ["a"], ["b"], ["a"]]) is None  # the common count is 1
    # Every label the same: P_i = 1, Pe = 1^2 = 1, kappa = 0/0 -> 1.0
    assert fleiss_kappa([["a", "a"], ["a", "a"], ["b"]]) == 1.0


def test_fleiss_kappa_tie_uses_more_raters():
    _statsmodels()
    # Two rows of 2 and two rows of 3: the rows of 3 are used.
    table = [["a", "b"], ["a", "b"], ["a", "a", "a"], ["b", "b", "b"]]
    # P = 1, 1: P_bar = 1; p_a = p_b = 3/6: Pe = 1/2; kappa = (1 - 1/2) / (1 - 1/2) = 1
    assert fleiss_kappa(table) == pytest.approx(1.0)


# --- Krippendorff's alpha --------------------------------------------------------------------

def test_krippendorff_alpha_nominal_with_missing_values():
    _krippendorff()
    units = {
        "u1": {"r1": "a", "r2": "a", "r3": "b"},  # m = 3, each ordered pair weighs 1/(m-1) = 1/2
        "u2": {"r1": "b", "r2": "b"},             # m = 2, weight 1 (r3 missing)
        "u3": {"r1": "a", "r3": "a"},             # m = 2, weight 1 (r2 missing)
        "u4": {"r2": "b"},                        # m = 1: not pairable, ignored
    }
    # Coincidence matrix o_ck (ordered pairs of values from different raters in a unit):
    #   u1: a-a 2 pairs * 1/2 = 1; a-b 2 * 1/2 = 1; b-a 2 * 1/2 = 1
    #   u2: b-b 2 pairs * 1 = 2;   u3: a-a 2 * 1 = 2
    #   o_aa = 3, o_ab = 1, o_ba = 1, o_bb = 2
    # n_a = 3 + 1 = 4, n_b = 1 + 2 = 3, n = 7
    # alpha = 1 - (n-1) * (o_ab + o_ba) / (n_a n_b + n_b n_a) = 1 - 6 * 2 / 24 = 0.5
    assert krippendorff_alpha(units) == pytest.approx(0.5)


def test_krippendorff_alpha_complete_data():
    _krippendorff()
    units = {"u1": {"r1": "a", "r2": "a"}, "u2": {"r1": "a", "r2": "b"}, "u3": {"r1": "b", "r2": "b"}}
    # o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = 3, n_b = 3, n = 6
    # alpha = 1 - 5 * 2 / (3*3 + 3*3) = 1 - 10/18 = 4/9
    assert krippendorff_alpha(units) == pytest.approx(4 / 9)


def test_krippendorff_alpha_undefined_and_zero_over_zero():
    _krippendorff()
    assert krippendorff_alpha({}) is None
    assert krippendorff_alpha({"i1": {"r1": "a"}, "i2": {"r2": "b"}}) is None  # no item rated twice
    assert krippendorff_alpha({"i1": {"r1": "a", "r2": None}}) is None        # None is no rating
    # All pairable values "a": n_c n_k sums to 0 and so does o_ab: 0/0 -> 1.0. The lone "b" on
    # i3 pairs with nothing and must not turn this into NaN.
    units = {"i1": {"r1": "a", "r2": "a"}, "i2": {"r1": "a", "r2": "a"}, "i3": {"r1": "b"}}
    assert krippendorff_alpha(units) == 1.0


# --- pairwise agreement and spans ------------------------------------------------------------

def test_pairwise_agreement():
    assert pairwise_agreement([]) is None
    assert pairwise_agreement(["a"]) is None
    assert pairwise_agreement(["a", "a", "b"]) == pytest.approx(1 / 3)      # 3 pairs, a-a equal: 1/3
    assert pairwise_agreement(["a", "a", "a", "b"]) == pytest.approx(0.5)   # 6 pairs, 3 of a-a: 3/6
    assert pairwise_agreement([{"x", "y"}, ("y", "x")]) == 1.0             # sets, order irrelevant
    assert pairwise_agreement([{"x", "y"}, {"x"}]) == 0.0


def test_span_f1_exact_and_partial():
    a = [(0, 2, "PER"), (5, 8, "LOC")]
    b = [(0, 2, "PER"), (5, 9, "LOC"), (10, 12, "ORG")]
    # one exact match: P = 1/3, R = 1/2, F1 = 2PR/(P+R) = (1/3) / (5/6) = 2*1 / (2+3) = 0.4
    assert span_f1(a, b) == pytest.approx(0.4)
    assert span_f1(b, a) == pytest.approx(0.4)
    assert span_f1(a, a) == 1.0
    assert span_f1([], []) == 1.0
    assert span_f1(a, []) == 0.0
    assert span_f1([(0, 2, "PER")], [(0, 2, "ORG")]) == 0.0  # same offsets, other label
    assert span_f1([[0, 2, "PER"]], [(0, 2, "PER")]) == 1.0  # a span read back from JSON is a list


def test_span_f1_chinese_character_offsets():
    text = "张三在北京工作"
    # Character offsets: 张三 = [0, 2), 北京 = [3, 5). (In UTF-8 bytes 北京 would be [9, 15).)
    assert text[0:2] == "张三" and text[3:5] == "北京"
    a = [(0, 2, "PER"), (3, 5, "LOC")]
    b = [(0, 2, "PER"), (3, 6, "LOC")]  # 北京工: one character too long, not an exact match
    assert text[3:6] == "北京工"
    # one match of 2 + 2 spans: F1 = 2*1 / (2+2) = 0.5
    assert span_f1(a, b) == pytest.approx(0.5)
    assert span_f1(a, [(0, 2, "PER"), (3, 5, "LOC")]) == 1.0


def test_item_agreement():
    s1 = [(0, 2, "PER")]
    s2 = [(0, 2, "PER")]
    s3 = [(0, 2, "PER"), (3, 5, "LOC")]
    # pairs: (s1,s2) = 1; (s1,s3) = 2*1/(1+2) = 2/3; (s2,s3) = 2/3; mean = (1 + 4/3) / 3 = 7/9
    assert item_agreement([s1, s2, s3], spans=True) == pytest.approx(7 / 9)
    assert item_agreement([s1], spans=True) is None
    assert item_agreement([[], []], spans=True) == 1.0
    assert item_agreement(["a", "a", "b"]) == pytest.approx(1 / 3)
    assert item_agreement(["a"]) is None


# --- per annotator, per label, summary -------------------------------------------------------

def test_per_annotator():
    _sklearn()
    got = per_annotator(UNITS)
    # r1 rated i1-i4.
    #   vs r2 on i1,i2,i3: r1 = a,b,a; r2 = a,b,b. po = 2/3; r1 a 2/3 b 1/3, r2 a 1/3 b 2/3:
    #     pe = 2/9 + 2/9 = 4/9; kappa = (2/3 - 4/9) / (5/9) = (2/9) / (5/9) = 0.4
    #   vs r3 on i1,i4: r1 = a,a; r3 = b,a. po = 1/2; pe = 1*1/2 + 0*1/2 = 1/2; kappa = 0
    #   kappa = (0.4 + 0) / 2 = 0.2
    #   agreement: i1 others a,b -> 1/2; i2 b -> 1; i3 b -> 0; i4 a -> 1: (0.5+1+0+1)/4 = 0.625
    assert got["r1"]["items"] == 4
    assert got["r1"]["kappa"] == pytest.approx(0.2)
    assert got["r1"]["agreement"] == pytest.approx(0.625)
    # r2 rated i1,i2,i3 (None on i5 is no rating). Shares 3 items with r1 (kappa 0.4), only i1
    # with r3 (fewer than 2: skipped). agreement: i1 others a,b -> 1/2; i2 -> 1; i3 -> 0: 1.5/3
    assert got["r2"] == {"items": 3, "kappa": pytest.approx(0.4), "agreement": pytest.approx(0.5)}
    # r3 rated i1,i4,i5. kappa vs r1 = 0 (r2: one shared item, skipped).
    # agreement: i1 others a,a vs b -> 0; i4 a -> 1; i5 no other rater: (0 + 1) / 2 = 0.5
    assert got["r3"] == {"items": 3, "kappa": pytest.approx(0.0), "agreement": pytest.approx(0.5)}
    # r4 shares nothing.
    assert got["r4"] == {"items": 1, "kappa": None, "agreement": None}


MULTI = {
    "i1": {"r1": {"spam", "urgent"}, "r2": {"spam"}},
    "i2": {"r1": "spam", "r2": ("spam",)},  # a str is the one-element set
    "i3": {"r1": frozenset(), "r2": ["urgent"]},
    "i4": {"r1": {"urgent"}, "r2": {"urgent"}},
    "i5": {"r1": {"spam"}, "r2": set()},
    "i6": {"r1": {"spam"}},  # rated once: pairs with nothing
}


def test_per_label_multi_label():
    _krippendorff()
    got = per_label(MULTI, ["spam", "urgent", "other"])
    # "spam" (1 = contains it), per item (r1, r2): i1 (1,1) i2 (1,1) i3 (0,0) i4 (0,0) i5 (1,0)
    #   o_11 = 2+2 = 4, o_00 = 2+2 = 4, o_10 = o_01 = 1; n_1 = 5, n_0 = 5, n = 10
    #   alpha = 1 - 9 * 2 / (5*5 + 5*5) = 1 - 18/50 = 0.64
    assert got["spam"] == pytest.approx(0.64)
    # "urgent": i1 (1,0) i2 (0,0) i3 (0,1) i4 (1,1) i5 (0,0)
    #   o_00 = 4, o_11 = 2, o_01 = o_10 = 2; n_0 = 6, n_1 = 4, n = 10
    #   alpha = 1 - 9 * 4 / (6*4 + 4*6) = 1 - 36/48 = 0.25
    assert got["urgent"] == pytest.approx(0.25)
    # "other": every rating is "no", 0/0 -> 1.0
    assert got["other"] == 1.0


def test_summary_values():
    _sklearn()
    _statsmodels()
    _krippendorff()
    got = summary(UNITS)
    assert set(got) == {"items_with_overlap", "fleiss_kappa", "krippendorff_alpha", "mean_pairwise_agreement",
                        "per_annotator"}
    assert got["items_with_overlap"] == 4  # i1-i4; i5 has one rating once None is dropped
    # Fleiss over the rows with the common count, 2 raters: i2 (b,b) P=1, i3 (a,b) P=0, i4 (a,a) P=1
    #   P_bar = 2/3; p_a = (0+1+2)/6 = 1/2, p_b = 1/2, Pe = 1/2; kappa = (2/3-1/2)/(1/2) = 1/3 -> 0.3333
    assert got["fleiss_kappa"] == 0.3333
    # Krippendorff over i1-i4: i1 (a,a,b) o_aa += 1, o_ab += 1, o_ba += 1; i2 o_bb += 2;
    #   i3 o_ab += 1, o_ba += 1; i4 o_aa += 2. o_aa = 3, o_bb = 2, o_ab = o_ba = 2
    #   n_a = 5, n_b = 4, n = 9; alpha = 1 - 8 * 4 / (5*4 + 4*5) = 1 - 32/40 = 0.2
    assert got["krippendorff_alpha"] == 0.2
    # pairwise: i1 1/3, i2 1, i3 0, i4 1: mean = (7/3) / 4 = 7/12 = 0.58333 -> 0.5833
    assert got["mean_pairwise_agreement"] == 0.5833
    assert got["per_annotator"]["r1"] == {"items": 4, "kappa": 0.2, "agreement": 0.625}
    assert got["per_annotator"]["r3"]["kappa"] == 0.0
    assert got["per_annotator"]["r4"] == {"items": 1, "kappa": None, "agreement": None}


def test_summary_json_serialisable():
    _sklearn()
    _statsmodels()
    _krippendorff()
    got = summary(MULTI, labels=["spam", "urgent"])
    text = json.dumps(got)
    assert json.loads(text) == got
    assert got["per_label"] == {"spam": 0.64, "urgent": 0.25}
    for value in (got["fleiss_kappa"], got["krippendorff_alpha"], got["mean_pairwise_agreement"]):
        assert type(value) is float  # not numpy.float64
    # Integer rater ids and an empty project serialise too.
    assert json.loads(json.dumps(summary({1: {7: "a", 8: "a"}, 2: {7: "b", 8: "a"}})))["items_with_overlap"] == 2
    empty = summary({})
    assert empty == {"items_with_overlap": 0, "fleiss_kappa": None, "krippendorff_alpha": None,
                     "mean_pairwise_agreement": None, "per_annotator": {}}
    json.dumps(empty)


@pytest.mark.parametrize(
    ("module", "call"),
    [
        ("sklearn.metrics", lambda: cohen_kappa(["a", "b"], ["a", "a"])),
        ("statsmodels.stats.inter_rater", lambda: fleiss_kappa([["a", "b"], ["a", "a"]])),
        ("krippendorff", lambda: krippendorff_alpha({"i": {"r1": "a", "r2": "b"}})),
    ],
)
def test_missing_package_is_a_config_error(monkeypatch, module, call):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'lightseek\[label\]'"):
        call()
