"""The results tables in README.md and docs/results/ are what their committed JSON renders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

def _load_report():
    """bench/report.py, loaded by path: bench/ stays off sys.path, where its scripts would shadow
    test packages of the same name (tests/distill)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lightseek_bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _load_report()


def test_every_document_matches_what_its_json_renders():
    problems = report.check()
    assert not problems, "run `python bench/report.py` after a benchmark:\n" + "\n".join(problems)


def test_a_table_edited_by_hand_is_caught():
    doc = "README.md"
    text = (ROOT / doc).read_text(encoding="utf-8")
    start = text.index("<!-- results:readme -->")
    row = text.index("\n| ", text.index("|---|", start)) + 1
    edited = text[:row] + text[row:].replace("|", "| 1.00x (hand-edited) |", 1)
    assert report.render(doc, edited, report.TABLES[doc]) == text  # rendering restores it ...
    assert report.render(doc, edited, report.TABLES[doc]) != edited  # ... so --check sees the edit


def test_missing_or_unknown_markers_are_errors():
    renderers = report.TABLES["README.md"]
    with pytest.raises(report.ReportError, match="no markers for table"):
        report.render("README.md", "no tables here\n", renderers)
    with pytest.raises(report.ReportError, match="markers of unknown table"):
        report.render("README.md", "<!-- results:readme -->\n<!-- /results:readme -->\n"
                      "<!-- results:other -->\n<!-- /results:other -->\n", renderers)


def test_every_readme_row_has_a_committed_result_file():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot list committed files")
    tracked = set(subprocess.run(["git", "ls-files", "bench/results"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    sources = {f"bench/results/{row.source}.json" for row in report.README_ROWS}
    assert sources <= tracked, sorted(sources - tracked)
    assert len(report.README_ROWS) >= 2


def test_check_command_exits_nonzero_on_a_difference(tmp_path, monkeypatch):
    copy = tmp_path / "README.md"
    copy.write_text((ROOT / "README.md").read_text(encoding="utf-8").replace("<!-- /results:readme -->",
                                                                              "| stale row |\n<!-- /results:readme -->"))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "TABLES", {"README.md": report.TABLES["README.md"]})
    assert any("stale row" in p for p in report.check())
    monkeypatch.setattr(sys, "argv", ["report.py", "--check"])
    assert report.main() == 1
