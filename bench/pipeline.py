"""Throughput of the data-cleaning pipeline on one CPU core.

Runs the general-tier recipe (recipes/pipeline_general.yaml: Gutenberg books, speeches,
Chinese encyclopaedia text and poetry from ../shared/data) in a single process pinned to one
core, into a temporary folder, and reports MB/s of input text overall and per step. A step's
rate is the text that reached it divided by its time, so the steps late in the pipeline are
measured on what the earlier ones kept. Torch is not needed.

    python bench/pipeline.py [--recipe recipes/pipeline_general.yaml] [--max-mb 0] [--core 0] [--result NAME]

Prints a markdown table and writes bench/results/pipeline.json, with the run's provenance
(command, revision, date, machine, versions). Another --recipe or a --max-mb cap (a partial run)
writes pipeline_<the arguments that differ>.json instead (`--max-mb 5`: pipeline_max-mb-5.json),
so that it never overwrites the main result; --result NAME writes bench/results/NAME.json.
Exits with a message when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def pin_to_core(core: int) -> str:
    """Run on one core only (where the OS allows it); says which."""
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        chosen = allowed[core % len(allowed)]
        os.sched_setaffinity(0, {chosen})
        return f"core {chosen} (sched_setaffinity)"
    return "one process (no affinity control on this OS)"


def step_rows(summary: dict, stats: dict) -> list[dict]:
    """Per step: records and MB that reached it, what it removed, seconds, MB/s."""
    rows, records, nbytes = [], stats["totals"]["records_in"], stats["totals"]["bytes_in"]
    for name, removed in stats["steps"].items():
        sec = summary["seconds"].get(name, 0.0)
        rows.append({"step": name, "records_in": records, "mb_in": nbytes / 1e6, "records_removed": removed["records"],
                     "seconds": sec, "mb_per_s": nbytes / 1e6 / sec if sec else float("inf")})
        records -= removed["records"]
        nbytes -= removed["bytes"]
    for name in ("write", "read_and_other"):
        sec = summary["seconds"].get(name, 0.0)
        rows.append({"step": name, "records_in": stats["totals"]["records_in"], "mb_in": stats["totals"]["bytes_in"] / 1e6,
                     "records_removed": 0, "seconds": sec,
                     "mb_per_s": stats["totals"]["bytes_in"] / 1e6 / sec if sec else float("inf")})
    return rows


def table(rows: list[dict], summary: dict) -> str:
    wall = summary["wall_s"]
    lines = ["| step | records in | MB in | removed | seconds | MB/s | share of time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['records_in']:,} | {r['mb_in']:.2f} | {r['records_removed']:,} | "
                     f"{r['seconds']:.2f} | {r['mb_per_s']:.2f} | {100 * r['seconds'] / wall:.0f}% |")
    mb = summary["bytes_in"] / 1e6
    lines.append(f"| **overall** | {summary['records_in']:,} | {mb:.2f} | "
                 f"{summary['records_in'] - summary['records_kept']:,} | {wall:.2f} | **{mb / wall:.2f}** | 100% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "pipeline_general.yaml"))
    ap.add_argument("--max-mb", type=float, default=0.0, help="read at most this many MB of text (0 = all)")
    ap.add_argument("--core", type=int, default=0, help="index of the allowed core to pin to")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: pipeline, plus the arguments "
                                     "that differ from the defaults)")
    args = ap.parse_args()
    stem = result_name("pipeline", args, {k: ap.get_default(k) for k in ("recipe", "max_mb")})
    if not SHARED.is_dir():
        sys.exit(f"bench/pipeline.py needs {SHARED} (the shared datasets); it is absent here")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core: no BLAS threads
        os.environ.setdefault(var, "1")  # (read when numpy loads, just below)
    from lightseek.data.pipeline import load_pipeline_config, run_pipeline

    where = pin_to_core(args.core)
    with tempfile.TemporaryDirectory(prefix="lightseek-bench-pipeline-") as tmp:
        overrides = [f"--out_dir={tmp}/out", "--output.progress=false", f"--input.max_bytes={int(args.max_mb * 1e6)}"]
        cfg = load_pipeline_config(args.recipe, overrides)
        summary = run_pipeline(cfg, root=ROOT)
        stats = json.loads((Path(tmp) / "out" / "stats.json").read_text(encoding="utf-8"))
    rows = step_rows(summary, stats)
    command = "python bench/pipeline.py " + " ".join(sys.argv[1:])
    print(f"Pipeline throughput, {cfg.tier} recipe, {where}, {platform.processor() or platform.machine()}\n")
    print(table(rows, summary))
    meta = {"command": command.strip(), "recipe": str(Path(args.recipe).resolve().relative_to(ROOT))
            if Path(args.recipe).resolve().is_relative_to(ROOT) else args.recipe,
            "pinned": where, "python": platform.python_version(), "machine": platform.machine(),
            "max_mb": args.max_mb}
    overall = {"records_in": summary["records_in"], "records_kept": summary["records_kept"],
               "mb_in": summary["bytes_in"] / 1e6, "mb_kept": summary["bytes_kept"] / 1e6,
               "wall_s": summary["wall_s"], "mb_per_s": summary["bytes_in"] / 1e6 / summary["wall_s"]}
    out = write_result(stem, {**provenance(1), "meta": meta, "overall": overall, "steps": rows,
                              "removed": {k: v["by_reason"] for k, v in stats["steps"].items()}})
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
