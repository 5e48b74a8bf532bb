"""`lightseek data pipeline`: load the recipe, run, print what each step removed.

Relative ``input.paths`` and ``out_dir`` in a recipe start at the repo root, taken to be the folder
above the recipe's ``recipes/`` folder (else the current folder); ``--out`` is a path as typed.
"""

from __future__ import annotations

from pathlib import Path

from lightseek.data.pipeline.config import load_pipeline_config
from lightseek.data.pipeline.runner import run_pipeline


def recipe_root(config_path: str | None) -> Path:
    if config_path:
        parent = Path(config_path).resolve().parent
        if parent.name == "recipes":
            return parent.parent
    return Path.cwd()


def pipeline_command(config_path: str | None, overrides: list[str], out: str | None = None,
                     overwrite: bool = False, quiet: bool = False) -> dict:
    if out:
        overrides = [*overrides, f"--out_dir={Path(out).resolve()}"]
    if quiet:
        overrides = [*overrides, "--output.progress=false"]
    cfg = load_pipeline_config(config_path, overrides)
    summary = run_pipeline(cfg, root=recipe_root(config_path), overwrite=overwrite)
    _print_summary(summary)
    return summary


def _print_summary(summary: dict) -> None:
    from rich.console import Console

    s = summary
    resumed = f", {s['resumed_shards']} shards done earlier" if s["resumed_shards"] else ""
    Console().print(
        f"{s['out_dir']}: kept {s['records_kept']:,} of {s['records_in']:,} records "
        f"({s['bytes_kept'] / 1e6:.2f} of {s['bytes_in'] / 1e6:.2f} MB) in {s['shards']} "
        f"shard{'s' if s['shards'] != 1 else ''}{resumed}; "
        f"per-step report in {Path(s['out_dir']) / 'stats.md'}", highlight=False)
