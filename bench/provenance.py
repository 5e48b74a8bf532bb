"""What every benchmark result records about the run that made it: the command, the git
revision, the date, the machine and the library versions; where the JSON goes; and what it is
called, so that a probe or a partial run never overwrites a main result. Also the one timing
loop the micro-benchmarks share (`timed_ms`)."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from hashlib import sha256
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
    command = shlex.join(["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script),
                          *sys.argv[1:]])  # quoted: an argument with spaces (a configuration's name) stays one
    return {"command": command, "git_revision": revision, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "threads": threads},
            "versions": versions}


def write_result(name: str, data: dict) -> Path:
    """``bench/results/<name>.json``, written whole or not at all (a temporary file, renamed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    tmp = RESULTS / f".{name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def result_name(base: str, args, defaults: dict, limit: int = 80) -> str:
    """The result file's name (without .json): ``base`` when every argument in ``defaults`` has
    its default value, else ``base_<slug>``, the slug naming each argument that differs, in the
    order of ``defaults`` (``--corpora en --steps 100`` -> ``routing_study_corpora-en_steps-100``).
    So only the main run writes the main result; a probe or a partial run writes its own file.

    ``defaults`` maps the arguments (argparse dests) that change what is measured to their
    defaults: the model, data, shapes, sizes, training steps, load levels. A script leaves out
    those that only set how long or how often the same measurement is repeated (repeats, rounds,
    seconds), extra diagnostics, and where its working files go. Two spellings of one path are
    the same value. A slug longer than ``limit`` is cut and ends in a hash of the whole.

    ``args.result`` (a script's ``--result NAME`` option), when given, is the name as is."""
    given = vars(args) if not isinstance(args, dict) else args
    if given.get("result"):
        name = given["result"]
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or name.startswith("."):
            raise SystemExit(f"--result {name!r}: a file name (letters, digits, . _ + -), without .json")
        return name.removesuffix(".json")
    parts = [_part(key, given[key]) for key, default in defaults.items() if not _same(given[key], default)]
    slug = "_".join(parts)
    if len(slug) > limit:
        slug = slug[:limit - 9].rstrip("_-") + "-" + sha256(slug.encode()).hexdigest()[:8]
    return f"{base}_{slug}" if slug else base


def _same(value, default) -> bool:
    if isinstance(value, str) and isinstance(default, str) and value and default:
        return os.path.abspath(value) == os.path.abspath(default)
    return value == default


def _part(key: str, value) -> str:
    """``steps-100``, ``domains-finance``, ``profile`` / ``no-profile``, ``scale-preset-none``."""
    key = key.replace("_", "-")
    if isinstance(value, bool):
        return key if value else f"no-{key}"
    values = value if isinstance(value, (list, tuple)) else [value]
    text = "-".join(_text(v) for v in values) or "none"
    return f"{key}-{text}"


def _text(value) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    value = str(value)
    if os.sep in value.rstrip(os.sep) and not value.startswith("-"):
        value = Path(value).name  # a path: its last part
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", value).strip("-.") or "none"


def timed_ms(fn, calls: int, blocks: int = 5, warmup: int = 10) -> float:
    """Median over ``blocks`` of the mean milliseconds of ``calls`` calls of ``fn``, after
    ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    means = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append(1000 * (time.perf_counter() - t0) / calls)
    return statistics.median(means)
