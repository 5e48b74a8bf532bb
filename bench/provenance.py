"""What every benchmark result records about the run that made it: the command, the git
revision, the date, the machine and the library versions, and where the JSON goes."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("torch", "transformers", "gguf", "llama-cpp-python", "lightseek")


def provenance(threads: int | None = None) -> dict:
    """The run's command (this process's argv), revision, date, machine and versions."""
    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()
    script = Path(sys.argv[0]).resolve()
    command = " ".join(["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script),
                        *sys.argv[1:]])
    return {"command": command, "git_revision": revision, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "threads": threads},
            "versions": versions}


def write_result(name: str, data: dict) -> Path:
    """``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return out
