"""Inter-annotator agreement for LabelHub: how far annotators who labelled the same items agree,
overall, per annotator and per label, and how far two span annotations of one text match.

- `cohen_kappa`: two raters over the same items.
- `fleiss_kappa`: a fixed number of raters per item (rows of a table).
- `krippendorff_alpha`: any raters per item, missing ratings allowed (nominal level).
- `pairwise_agreement`, `span_f1`, `item_agreement`: one item's agreement.
- `per_annotator`, `per_label`, `summary`: what the project's agreement page shows.

The statistics come from maintained libraries (scikit-learn, statsmodels, krippendorff), the
``label`` extra: ``pip install 'lightseek[label]'``. A label is any hashable value. A multi-label
rating (a set, frozenset, tuple or list of labels) is compared as a set, and a one-element set
equals its element, so ``"spam"``, ``("spam",)`` and ``{"spam"}`` are the same rating. ``None``
in a ``units`` mapping means the rater gave no rating.

Where every rating is one and the same label, the chance-corrected statistics are 0/0: expected
agreement is already perfect. Such raters agree on everything they were shown, so the functions
return 1.0 rather than NaN or an error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

from lightseek.errors import ConfigError

__all__ = [
    "cohen_kappa",
    "fleiss_kappa",
    "item_agreement",
    "krippendorff_alpha",
    "pairwise_agreement",
    "per_annotator",
    "per_label",
    "span_f1",
    "summary",
]

_INSTALL = "pip install 'lightseek[label]'"


def _need(what: str, package: str) -> ConfigError:
    return ConfigError(f"{what} needs the {package} package: {_INSTALL}")


def _norm(value: Hashable) -> Hashable:
    """One canonical, hashable form per rating, so that equal ratings compare equal."""
    if isinstance(value, (set, frozenset, tuple, list)):
        labels = frozenset(value)
        # A single-label rating may arrive as "a" from one rater and ["a"] from another (JSON
        # has no sets); they must count as agreement.
        if len(labels) == 1:
            return next(iter(labels))
        return labels
    return value


def _label_set(rating: Any) -> frozenset:
    """The labels a rating contains; a plain label (a str, a number) is a one-element set."""
    if isinstance(rating, (set, frozenset, tuple, list)):
        return frozenset(rating)
    return frozenset([rating])


def _codes(values: Iterable[Hashable]) -> dict[Hashable, int]:
    """Integer codes for the distinct (normalised) values, in order of first appearance."""
    codes: dict[Hashable, int] = {}
    for v in values:
        codes.setdefault(v, len(codes))
    return codes


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _rated(units: Mapping[Hashable, Mapping[Hashable, Hashable]]) -> dict[Hashable, dict[Hashable, Hashable]]:
    """units with ``None`` ratings dropped and every rating normalised; items left empty are dropped."""
    out: dict[Hashable, dict[Hashable, Hashable]] = {}
    for item, ratings in units.items():
        kept = {rater: _norm(label) for rater, label in ratings.items() if label is not None}
        if kept:
            out[item] = kept
    return out


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa of two raters; ``a[i]`` and ``b[i]`` are their labels for item ``i``.

    None with fewer than 2 items; 1.0 when both give one and the same label to every item.
    """
    try:
        from sklearn.metrics import cohen_kappa_score
    except ImportError:
        raise _need("Cohen's kappa", "scikit-learn") from None
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: the raters labelled {len(a)} and {len(b)} items, not the same items")
    if len(a) < 2:
        return None
    a = [_norm(v) for v in a]
    b = [_norm(v) for v in b]
    codes = _codes(a + b)
    if len(codes) == 1:
        return 1.0
    return _finite(cohen_kappa_score([codes[v] for v in a], [codes[v] for v in b]))


def fleiss_kappa(table: Sequence[Sequence]) -> float | None:
    """Fleiss' kappa; each row of ``table`` is one item, the labels its raters gave (``None``: no label).

    Fleiss' kappa needs the same number of raters for every item, so only the rows with the most
    common number of labels are used (on a tie, the larger number). None when fewer than 2 such
    rows or fewer than 2 labels per row; 1.0 when every label in them is one and the same.
    """
    try:
        from statsmodels.stats.inter_rater import aggregate_raters
        from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss
    except ImportError:
        raise _need("Fleiss' kappa", "statsmodels") from None
    rows = [[_norm(v) for v in row if v is not None] for row in table]
    sizes = Counter(len(row) for row in rows)
    if not sizes:
        return None
    size, count = max(sizes.items(), key=lambda kv: (kv[1], kv[0]))
    if count < 2 or size < 2:
        return None
    rows = [row for row in rows if len(row) == size]
    codes = _codes(v for row in rows for v in row)
    if len(codes) == 1:
        return 1.0
    counts, _ = aggregate_raters([[codes[v] for v in row] for row in rows])
    return _finite(_fleiss(counts, method="fleiss"))


def krippendorff_alpha(units: Mapping[Hashable, Mapping[Hashable, Hashable]]) -> float | None:
    """Krippendorff's alpha (nominal) of ``units``: item -> {rater -> label}; raters may skip items.

    None when no item has 2 or more ratings; 1.0 when every rating of such items is one and the
    same label.
    """
    try:
        import krippendorff
        import numpy as np
    except ImportError:
        raise _need("Krippendorff's alpha", "krippendorff") from None
    # Items rated once pair with nothing and do not change alpha; leaving them out keeps their
    # labels out of the value domain, where a label no pairable item has would make the library's
    # expected disagreement 0/0 for an otherwise unanimous set of ratings.
    pairable = {item: r for item, r in _rated(units).items() if len(r) >= 2}
    if not pairable:
        return None
    codes = _codes(v for r in pairable.values() for v in r.values())
    if len(codes) == 1:
        return 1.0
    raters = list(_codes(rater for r in pairable.values() for rater in r))
    data = np.full((len(raters), len(pairable)), np.nan)
    row = {rater: i for i, rater in enumerate(raters)}
    for j, ratings in enumerate(pairable.values()):
        for rater, label in ratings.items():
            data[row[rater], j] = codes[label]
    return _finite(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def pairwise_agreement(values: Sequence) -> float | None:
    """The fraction of pairs of ``values`` (one item's ratings) that are equal; None with fewer than 2."""
    values = [_norm(v) for v in values]
    if len(values) < 2:
        return None
    pairs = len(values) * (len(values) - 1) // 2
    equal = sum(n * (n - 1) // 2 for n in Counter(values).values())
    return equal / pairs


def span_f1(a: Iterable[Sequence], b: Iterable[Sequence]) -> float:
    """F1 of two span annotations of one text, each (start, end, label) spans; only exact matches count.

    Offsets are compared as given (LabelHub stores character offsets, not bytes). A span listed
    twice counts once. 1.0 when both annotations are empty.
    """
    sa = {tuple(s) for s in a}
    sb = {tuple(s) for s in b}
    if not sa and not sb:
        return 1.0
    # 2PR/(P+R) with P = m/|b| and R = m/|a| simplifies to 2m/(|a|+|b|), symmetric in a and b.
    return 2 * len(sa & sb) / (len(sa) + len(sb))


def item_agreement(values: Sequence, spans: bool = False) -> float | None:
    """One item's agreement: the mean `span_f1` over all pairs of span annotations if ``spans``,
    else `pairwise_agreement`. None with fewer than 2 values."""
    if not spans:
        return pairwise_agreement(values)
    if len(values) < 2:
        return None
    scores = [span_f1(x, y) for x, y in combinations(values, 2)]
    return sum(scores) / len(scores)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def per_annotator(units: Mapping[Hashable, Mapping[Hashable, Hashable]]) -> dict[Hashable, dict[str, Any]]:
    """For each rater in ``units`` (item -> {rater -> label}): ``items``, how many items they rated;
    ``kappa``, the mean Cohen's kappa against each other rater with whom they share 2 or more
    items (None if there is none); ``agreement``, over the items they share with anyone, the mean
    fraction of the other raters' labels equal to theirs (None if they share no item).
    """
    rated = _rated(units)
    by_rater: dict[Hashable, dict[Hashable, Hashable]] = {}
    for item, ratings in rated.items():
        for rater, label in ratings.items():
            by_rater.setdefault(rater, {})[item] = label

    kappas: dict[Hashable, list[float]] = {rater: [] for rater in by_rater}
    for r1, r2 in combinations(by_rater, 2):
        shared = [item for item in by_rater[r1] if item in by_rater[r2]]
        if len(shared) < 2:
            continue
        k = cohen_kappa([by_rater[r1][i] for i in shared], [by_rater[r2][i] for i in shared])
        if k is not None:
            kappas[r1].append(k)
            kappas[r2].append(k)

    out: dict[Hashable, dict[str, Any]] = {}
    for rater, items in by_rater.items():
        fractions = []
        for item, label in items.items():
            others = [v for r, v in rated[item].items() if r != rater]
            if others:
                fractions.append(sum(v == label for v in others) / len(others))
        out[rater] = {"items": len(items), "kappa": _mean(kappas[rater]), "agreement": _mean(fractions)}
    return out


def per_label(units: Mapping[Hashable, Mapping[Hashable, Any]], labels: Sequence[str]) -> dict[str, float | None]:
    """For each label, Krippendorff's alpha of the yes/no question "does this rating contain the label?".

    Ratings are sets (frozenset, set, tuple, list) of labels; a plain str is the one-element set.
    This gives multi-label classification one agreement per label. A label no pairable rating
    contains is unanimously "no", so its alpha is 1.0 by the module's 0/0 convention.
    """
    sets = {
        item: {rater: _label_set(rating) for rater, rating in ratings.items() if rating is not None}
        for item, ratings in units.items()
    }
    return {
        label: krippendorff_alpha(
            {item: {rater: label in s for rater, s in ratings.items()} for item, ratings in sets.items()}
        )
        for label in labels
    }


def _json(x: Any) -> Any:
    """x with floats (numpy's too) rounded to 4 digits and keys JSON can hold."""
    if isinstance(x, Mapping):
        return {(k if isinstance(k, (str, int, float, bool)) or k is None else str(k)): _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if hasattr(x, "item"):  # a numpy scalar
        x = x.item()
    if isinstance(x, float):
        # + 0.0 turns a rounded -0.0 (a kappa of -1e-17) into 0.0.
        return round(x, 4) + 0.0 if math.isfinite(x) else None
    return x


def summary(units: Mapping[Hashable, Mapping[Hashable, Any]], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The agreement of a project's ratings, ``units``: item -> {rater -> label}, as JSON-ready values.

    Keys: ``items_with_overlap`` (items with 2 or more ratings), ``fleiss_kappa`` (over those
    items, see `fleiss_kappa`), ``krippendorff_alpha``, ``mean_pairwise_agreement`` (the mean of
    `pairwise_agreement` over those items), ``per_annotator`` and, if ``labels`` is given,
    ``per_label``. Floats are rounded to 4 digits; an undefined statistic is None.
    """
    rated = _rated(units)
    overlap = [list(r.values()) for r in rated.values() if len(r) >= 2]
    out: dict[str, Any] = {
        "items_with_overlap": len(overlap),
        "fleiss_kappa": fleiss_kappa(overlap),
        "krippendorff_alpha": krippendorff_alpha(rated),
        "mean_pairwise_agreement": _mean([pairwise_agreement(values) for values in overlap]),
        "per_annotator": per_annotator(rated),
    }
    if labels is not None:
        out["per_label"] = per_label(units, labels)
    return _json(out)
