"""Evaluation of a domain classifier: per-domain precision, recall, F1 and support, macro-F1,
accuracy and the confusion matrix, as a dict (for JSON), a text table and a PNG heatmap.

The numbers are computed here from the confusion matrix (and tested against scikit-learn's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lightseek.errors import ConfigError


def evaluate(truth: Sequence[str], predicted: Sequence[str], domains: Sequence[str] | None = None) -> dict:
    """Metrics of ``predicted`` against ``truth``. Rows and columns of the confusion matrix are
    ``domains`` (default: every label seen, sorted); ``matrix[i][j]`` counts texts of domain i
    predicted as j. Macro-F1 averages over domains with support (true examples) > 0."""
    if len(truth) != len(predicted):
        raise ConfigError(f"{len(truth)} true labels but {len(predicted)} predictions")
    labels = list(domains) if domains is not None else sorted(set(truth) | set(predicted))
    labels += sorted((set(truth) | set(predicted)) - set(labels))
    index = {d: i for i, d in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted):
        matrix[index[t]][index[p]] += 1
    per = {}
    for i, d in enumerate(labels):
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted_n = sum(row[i] for row in matrix)
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[d] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    scored = [d for d in labels if per[d]["support"] > 0]
    return {
        "n": len(truth),
        "accuracy": sum(matrix[i][i] for i in range(len(labels))) / len(truth) if truth else 0.0,
        "macro_f1": sum(per[d]["f1"] for d in scored) / len(scored) if scored else 0.0,
        "per_domain": per,
        "confusion": {"labels": labels, "matrix": matrix},
    }


def format_report(report: dict, title: str = "") -> str:
    """Markdown tables: per-domain P/R/F1/support with macro-F1, then the confusion matrix."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| domain | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for d, m in report["per_domain"].items():
        if m["support"] or m["precision"]:
            lines.append(f"| {d} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    lines.append(f"| **macro** | | | **{report['macro_f1']:.3f}** | {report['n']} |")
    lines += ["", f"accuracy {report['accuracy']:.3f}; confusion matrix (rows: true, columns: predicted):", ""]
    labels = report["confusion"]["labels"]
    lines += ["| true \\ predicted | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for d, row in zip(labels, report["confusion"]["matrix"]):
        lines.append(f"| {d} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def plot_confusion(report: dict, path: str | os.PathLike, title: str = "") -> Path:
    """A row-normalised confusion-matrix heatmap (counts written in the cells) as a small PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError('the confusion-matrix plot needs matplotlib: pip install "lightseek[data]"') from None
    import numpy as np

    labels = report["confusion"]["labels"]
    counts = np.array(report["confusion"]["matrix"], dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.75 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=90)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"macro-F1 {report['macro_f1']:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true domain")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
