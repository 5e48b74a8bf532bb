"""PNG plots of a run: loss curves and the per-layer expert-load heatmap (matplotlib extra)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_run(run_dir: str | Path, metrics: list[dict], routing: list[dict]) -> list[Path]:
    """Write ``loss.png`` and, for MoE models, ``expert_load.png``. Returns the files written,
    or an empty list (with a hint) when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        print('plots skipped: matplotlib is missing (pip install "lightseek[plot]")')
        return []
    run_dir = Path(run_dir)
    written = []
    train = [m for m in metrics if m.get("kind") == "train"]
    val = [m for m in metrics if m.get("kind") == "eval"]
    if train:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train loss", lw=1)
        if val:
            ax.plot([m["step"] for m in val], [m["val_loss"] for m in val], "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "loss.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "loss.png")
    if routing:
        shares = []
        for layer in routing:
            load = layer["tokens_per_expert"]
            total = sum(load) or 1
            shares.append([v / total for v in load])
        fig, ax = plt.subplots(figsize=(max(5, len(shares[0]) * 0.4), 1.2 + 0.5 * len(shares)))
        im = ax.imshow(shares, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(routing)), [f"layer {r['layer']}" for r in routing])
        ax.set_xlabel("routed expert")
        ax.set_title(f"share of routed token slots per expert (validation; equal = {1 / len(shares[0]):.3f})")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(run_dir / "expert_load.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "expert_load.png")
    return written
