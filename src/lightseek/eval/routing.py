"""Routing reports: per-layer tables, expert specialisation across corpora, heatmaps.

Specialisation score of a layer: the mutual information between "which corpus a token comes
from" and "which expert it is routed to", with every corpus weighted equally, divided by its
maximum log(n_corpora). 0 means every corpus uses the experts alike; 1 means each corpus has
experts of its own. The model's score is the mean over MoE layers.
"""

from __future__ import annotations

import math
from pathlib import Path


def load_shares(routing: list[dict]) -> list[list[float]]:
    """Per layer, each expert's share of the routed token slots."""
    shares = []
    for r in routing:
        total = sum(r["tokens_per_expert"]) or 1
        shares.append([v / total for v in r["tokens_per_expert"]])
    return shares


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def specialisation(shares_by_corpus: dict[str, list[list[float]]]) -> dict:
    """Normalised mutual information between corpus and expert, per layer and overall."""
    names = list(shares_by_corpus)
    if len(names) < 2:
        raise ValueError("specialisation needs at least two corpora")
    n_layers = len(shares_by_corpus[names[0]])
    per_layer = []
    for layer in range(n_layers):
        dists = [shares_by_corpus[n][layer] for n in names]                 # (C, E), rows sum to 1
        marginal = [sum(col) / len(dists) for col in zip(*dists)]
        mi = _entropy(marginal) - sum(_entropy(d) for d in dists) / len(dists)
        per_layer.append(max(0.0, mi) / math.log(len(names)))
    return {"per_layer": per_layer, "score": sum(per_layer) / len(per_layer) if per_layer else 0.0}


def format_routing(routing: list[dict]) -> str:
    lines = [f"{'layer':>5} {'avg k':>6} {'MaxVio':>7} {'dead':>5} {'entropy':>8}  load share per expert (%)"]
    for r, share in zip(routing, load_shares(routing)):
        pct = " ".join(f"{100 * v:4.1f}" for v in share)
        lines.append(f"{r['layer']:>5} {r['avg_k']:>6.2f} {r['max_vio']:>7.3f} {r['dead_experts']:>5} "
                     f"{r['entropy']:>8.3f}  {pct}")
    return "\n".join(lines)


def format_by_corpus(results: dict[str, dict], spec: dict, layers: list[int]) -> str:
    """Per corpus: loss, perplexity, k; then per layer the expert shares of each corpus."""
    shares = {name: load_shares(r["routing"]) for name, r in results.items()}
    width = max(len(n) for n in results)
    lines = [f"{'corpus':<{width}}  {'loss':>7} {'ppl':>9} {'avg k':>6} {'tokens':>8}"]
    for name, r in results.items():
        lines.append(f"{name:<{width}}  {r['loss']:>7.4f} {r['ppl']:>9.2f} {r.get('avg_k', 0):>6.2f} {r['tokens']:>8,}")
    for i, layer in enumerate(layers):
        lines.append(f"\nlayer {layer}: expert share (%) by corpus, specialisation {spec['per_layer'][i]:.3f}")
        for name in results:
            lines.append(f"{name:<{width}}  " + " ".join(f"{100 * v:4.1f}" for v in shares[name][i]))
    lines.append(f"\nspecialisation score (0 = shared alike, 1 = experts of their own): {spec['score']:.3f}")
    return "\n".join(lines)


COMPACT_LAYERS = 6  # more MoE layers than this: one panel per corpus instead of one per layer


def _plot_compact(plt, names: list[str], shares: dict, spec: dict, layers: list[int], path: Path) -> Path:
    """One panel per corpus, layers as rows and experts as columns, on one colour scale; the
    last panel is each layer's specialisation."""
    top = max(v for n in names for row in shares[n] for v in row)
    n_experts = len(shares[names[0]][0])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(1.2 + 0.16 * n_experts * len(names) + 1.5,
                                                         1.5 + 0.16 * len(layers)),
                             gridspec_kw={"width_ratios": [n_experts] * len(names) + [4]}, squeeze=False)
    for ax, name in zip(axes[0], names):
        im = ax.imshow(shares[name], aspect="auto", cmap="magma", vmin=0, vmax=top)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert", fontsize=8)
        ax.set_yticks(range(len(layers)), layers if ax is axes[0, 0] else [""] * len(layers), fontsize=6)
    axes[0, 0].set_ylabel("layer")
    spec_ax = axes[0, -1]
    spec_ax.barh(range(len(layers)), spec["per_layer"], color="grey")
    spec_ax.set_ylim(len(layers) - 0.5, -0.5)
    spec_ax.set_yticks([])
    spec_ax.set_title("specialisation", fontsize=9)
    fig.colorbar(im, ax=axes[0, :-1].tolist(), orientation="horizontal", fraction=0.03, pad=0.12,
                 label="share of the corpus's routed slots")
    fig.suptitle(f"expert share by corpus, every MoE layer: specialisation score {spec['score']:.3f}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_by_corpus(results: dict[str, dict], spec: dict, layers: list[int], path: str | Path) -> Path | None:
    """One heatmap per MoE layer: rows are corpora, columns experts, colour the share."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('plot skipped: matplotlib is missing (pip install "lightseek[plot]")')
        return None
    names = list(results)
    shares = {name: load_shares(results[name]["routing"]) for name in names}
    if len(layers) > COMPACT_LAYERS:
        return _plot_compact(plt, names, shares, spec, layers, Path(path))
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 0.9 + 0.35 * len(names) * len(layers) + 0.6 * len(layers)),
                             squeeze=False)
    for i, (ax, layer) in enumerate(zip(axes[:, 0], layers)):
        grid = [shares[n][i] for n in names]
        im = ax.imshow(grid, aspect="auto", cmap="magma")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"layer {layer}: share of each corpus's routed slots per expert "
                     f"(specialisation {spec['per_layer'][i]:.2f})", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03)
    axes[-1, 0].set_xlabel("routed expert")
    fig.suptitle(f"expert specialisation by corpus: score {spec['score']:.3f}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
