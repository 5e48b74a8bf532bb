"""`make demo` as a new user runs it: a fresh clone, a fresh virtual environment, empty caches, timed.

    python bench/demo.py [--keep DIR] [--warm-pip]

Clones this repository's HEAD into a temporary folder and runs `make setup` (virtual environment,
CPU PyTorch and the project from the package registry) and then `make demo` (`lightseek
quickstart`: fetch SmolLM2-135M-Instruct, moefy it, dense against MoE, one chat answer each),
with the pip and lightseek caches pointed inside that folder, so nothing already downloaded on
this machine is reused (``--warm-pip`` keeps pip's own cache: the set-up then measures installing,
not downloading). The issue's bound is the whole of it, set-up included, under 10 minutes on 2
cores. Writes bench/results/demo.json: the wall time of each part and the quickstart's own
summary (active parameters, held-out perplexity, decode tokens/s, the two answers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, write_result  # noqa: E402


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Run ``cmd``, its output appended to ``log``; its wall time in seconds (a failure stops the run)."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({done.returncode}); its output is in {log}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="clone into DIR and keep it (default: a temporary folder, removed after)")
    ap.add_argument("--warm-pip", action="store_true", help="reuse pip's cache of this machine")
    args = ap.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="lightseek-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    clone = work / "lightseek"
    if clone.exists():
        raise SystemExit(f"{clone} exists: give --keep an empty folder")
    env = {**os.environ, "LIGHTSEEK_CACHE": str(work / "cache")}
    env.pop("VIRTUAL_ENV", None)
    if not args.warm_pip:
        env["PIP_CACHE_DIR"] = str(work / "pip-cache")
    log = work / "demo.log"
    log.unlink(missing_ok=True)  # a reused --keep folder: this run's output only
    ok = False
    try:
        clone_s = timed(["git", "clone", "--quiet", str(ROOT), str(clone)], work, env, log)
        setup_s = timed(["make", "setup"], clone, env, log)
        demo_s = timed(["make", "demo"], clone, env, log)
        summary = json.loads((clone / "runs" / "quickstart_moe" / "quickstart.json").read_text())
        output = log.read_text(errors="replace")
        ok = True
    finally:
        if not args.keep and ok:  # a failed run keeps its folder: the error message points into it
            shutil.rmtree(work, ignore_errors=True)
    total = clone_s + setup_s + demo_s
    rows = summary["rows"]
    out = write_result("demo", {**provenance(), "wall_s": total, "clone_s": clone_s, "setup_s": setup_s,
                                "demo_s": demo_s, "pip_cache": "warm" if args.warm_pip else "empty",
                                # a local wheel folder pip reads first (set on some machines) makes set-up faster
                                "pip_find_links": os.environ.get("PIP_FIND_LINKS"),
                                "quickstart": summary, "output_tail": output[-4000:]})
    print(f"clone {clone_s:.0f} s, make setup {setup_s:.0f} s, make demo {demo_s:.0f} s: {total / 60:.1f} min "
          f"(target 10)")
    for name, r in rows.items():
        print(f"{name}: {r['active_params'] / 1e6:.1f}M active, ppl {r['ppl']:.2f}, {r['decode_tok_s']:.1f} tok/s: "
              f"{r['answer']}")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
