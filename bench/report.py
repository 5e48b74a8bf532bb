"""The results tables of README.md and docs/results/*.md, rendered from bench/results/*.json.

Every figure in those tables comes from a committed result file that a benchmark wrote (with its
command, git revision, date, machine and library versions). A table sits between two markers in
its document, and this script owns what lies between them:

    <!-- results:NAME -->
    | ... rendered from the JSON ... |
    <!-- /results:NAME -->

    python bench/report.py           rewrite every table from the JSON files
    python bench/report.py --check   exit 1, with a diff, where a document differs from its JSON

A table is a function of the result files it names (`TABLES`); the README's results table is one
row per result (`README_ROWS`), each naming its JSON file and the command that wrote it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MARKER = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


class ReportError(Exception):
    pass


@cache
def result(name: str) -> dict:
    """bench/results/<name>.json."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise ReportError(f"{path.relative_to(ROOT)} is missing (run the benchmark that writes it)")
    return json.loads(path.read_text(encoding="utf-8"))


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one character per column, 'l' or 'r'."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|\n"
    return "".join("| " + " | ".join(cells) + " |\n" for cells in [header]) + rule + "".join(
        "| " + " | ".join(cells) + " |\n" for cells in rows)


def rows_by(data: dict, key: str, field: str = "system") -> dict:
    return {r[field]: r for r in data[key]}


# --- the README's results table -----------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    what: str
    source: str                       # result file name, without .json
    figure: Callable[[dict], str]     # the figure(s), from that file


def _real_model_speed(d: dict) -> str:
    r = rows_by(d, "rows")
    ref = r["transformers fp32 (generate)"]["decode_b1_tok_s"]
    ours = [r[s]["decode_b1_tok_s"] for s in ("lightseek fp32", "lightseek int8", "lightseek int4 g64")]
    llama = next(v for k, v in r.items() if k.startswith("llama.cpp"))["decode_b1_tok_s"]
    return (f"{' / '.join(f'{v:.1f}' for v in ours)} vs {ref:.1f} and {llama:.1f} "
            f"({' / '.join(f'{v / ref:.2f}x' for v in ours)} transformers; targets 3x transformers and "
            f"0.5x llama.cpp: not met)")


def _real_model_tasks(d: dict) -> str:
    return " / ".join(f"{d['tasks'][t]['acc']:.3f}" for t in ("medquad", "fiqa", "pubmedqa"))


README_ROWS: list[Row] = [
    Row("SmolLM2-135M-Instruct (imported, fp32 / int8 / int4 g64) batch-1 decode tok/s vs transformers "
        "`generate` fp32 and llama.cpp Q4_1", "real_model", _real_model_speed),
    Row("SmolLM2-135M-Instruct multiple-choice accuracy, medquad / fiqa / pubmedqa (200 items each; "
        "chance 0.25 / 0.25 / 0.33)", "real_model_tasks", _real_model_tasks),
]


def readme_results() -> str:
    rows = []
    for row in README_ROWS:
        d = result(row.source)
        rows.append([row.what, row.figure(d), f"`{d['command']}` ([{row.source}.json](bench/results/{row.source}.json))"])
    return table(["what", "figure", "command (result file)"], rows)


# --- tables of docs/results ---------------------------------------------------------------------
def real_model_systems() -> str:
    d = result("real_model")
    ref = rows_by(d, "rows")["transformers fp32 (generate)"]["decode_b1_tok_s"]
    llama_version = d.get("versions", {}).get("llama-cpp-python")

    def name(r):
        return f"{r['system']} (llama-cpp-python {llama_version})" if r["system"].startswith("llama.cpp") else r["system"]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    return table(["system", "load s", "prefill tok/s", "decode b1 tok/s", "vs transformers", "decode 16 rows tok/s",
                  "peak MiB"],
                 [[name(r), num(r["load_s"], ".1f"), num(r["prefill_tok_s"], ".0f"), num(r["decode_b1_tok_s"], ".1f"),
                   f"{r['decode_b1_tok_s'] / ref:.2f}x", num(r["decode_b16_tok_s"], ".1f"), num(r["peak_mib"], ".0f")]
                  for r in d["rows"]], "lrrrrrr")


def real_model_tasks() -> str:
    d = result("real_model_tasks")
    return table(["task", "items", "acc", "acc_norm", "chance"],
                 [[t, str(v["items"]), f"{v['acc']:.3f} ± {v['acc_ci95']:.3f}",
                   f"{v['acc_norm']:.3f} ± {v['acc_norm_ci95']:.3f}", f"{v['chance']:.3f}"]
                  for t, v in d["tasks"].items()], "lrrrr")


# document -> {table name: renderer}
TABLES: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"readme": readme_results},
    "docs/results/real_model.md": {"real_model_systems": real_model_systems, "real_model_tasks": real_model_tasks},
}


def render(doc: str, text: str, renderers: dict[str, Callable[[], str]]) -> str:
    """``text`` with every registered table re-rendered; a registered table without its markers,
    or markers that no renderer owns, is a ReportError."""
    found = {m["name"] for m in MARKER.finditer(text)}
    missing, unknown = sorted(set(renderers) - found), sorted(found - set(renderers))
    if missing or unknown:
        raise ReportError(f"{doc}: " + "; ".join(
            ([f"no markers for table(s) {', '.join(missing)}"] if missing else [])
            + ([f"markers of unknown table(s) {', '.join(unknown)}"] if unknown else [])))
    return MARKER.sub(lambda m: m[1] + renderers[m["name"]]() + m[4], text)


def check(write: bool = False) -> list[str]:
    """Problems (diffs, missing files or markers) of every document; rewrites them when ``write``."""
    problems = []
    for doc, renderers in TABLES.items():
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        try:
            new = render(doc, text, renderers)
        except ReportError as e:
            problems.append(str(e))
            continue
        if new != text:
            if write:
                path.write_text(new, encoding="utf-8")
            else:
                problems.append("".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                             f"{doc} (as committed)", f"{doc} (from the JSON)")))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = ap.parse_args()
    try:
        problems = check(write=not args.check)
    except ReportError as e:
        problems = [str(e)]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print("every results table matches its JSON" if args.check else f"rendered {len(TABLES)} documents")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
