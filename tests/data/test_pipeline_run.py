"""The pipeline end to end on a tiny mixed corpus: provenance and exclusions, identical bytes
from identical runs, resume after a kill equal to an uninterrupted run, a changed config
refused, the CLI, and (when ../shared/data is here) real data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _pipeline_corpus import make_corpus, recipe

from lightseek.config import from_dict
from lightseek.data.pipeline import PipelineConfig, run_pipeline
from lightseek.data.pipeline import runner as runner_mod
from lightseek.errors import ConfigError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("pipeline"))


def run(corpus: Path, out: Path, **kw) -> dict:
    return run_pipeline(from_dict(PipelineConfig, recipe(corpus, out)), root=corpus.parent, **kw)


def read_jsonl(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text("utf-8").splitlines()]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every output file's bytes; the manifest without the one field that names the folder."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    manifest["config"].pop("out_dir")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ref") / "out"
    return out, run(corpus, out)


def test_provenance_and_exclusions(reference):
    out, summary = reference
    kept, excluded = read_jsonl(out / "kept"), read_jsonl(out / "excluded")
    assert summary["records_in"] == 24 and summary["shards"] == 6
    assert len(kept) + len(excluded) == summary["records_in"] == len({(r["source"], r["index"]) for r in kept + excluded})
    steps = ["normalize", "lang", "quality", "phrases", "exact_dedup", "near_dedup", "pii", "domain"]
    for r in kept:
        assert r["sha256"] == hashlib.sha256(r["text"].encode()).hexdigest()
        assert r["steps"] == steps and r["lang"] in ("en", "zh") and "domain" in r and "pii" in r
        assert r["source"].startswith("corpus/") and not r["source"].endswith("README.md")
    by_step = {}
    for r in excluded:
        by_step.setdefault(r["step"], []).append(r)
    assert {r["source"] for r in by_step["exact_dedup"]} == {"corpus/a.jsonl", "corpus/e.csv", "corpus/f.parquet"}
    assert len(by_step["near_dedup"]) == 2 and all("jaccard~" in r["reason"] for r in by_step["near_dedup"])
    assert [r["reason"].split(" ")[0] for r in by_step["lang"]] == ["language"]
    assert {r["reason"].split(" ")[0] for r in by_step["quality"]} == {"length", "digit_ratio", "dup_line_ratio"}
    pii_texts = [r["text"] for r in kept if r["pii"]]
    assert any("<EMAIL>" in t and "<PHONE>" in t for t in pii_texts)
    assert any("<ID_CARD>" in t for t in pii_texts)
    html = next(r for r in kept if r["source"] == "corpus/d.html")
    assert html["offset"] is None and "var x" not in html["text"] and html["text"].startswith("Heading\n\n")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["records_kept"] == len(kept)
    assert sum(s["records"] for s in stats["steps"].values()) == len(excluded)
    assert stats["pii"] == {"EMAIL": 1, "ID_CARD": 1, "PHONE": 2}
    md = (out / "stats.md").read_text()
    assert "| exact_dedup | 3 |" in md and "near-duplicate of" in md


def test_same_input_and_config_give_identical_bytes(corpus, reference, tmp_path):
    run(corpus, tmp_path / "again")
    assert snapshot(tmp_path / "again") == snapshot(reference[0])


@pytest.mark.parametrize("kill", ["after_commit", "before_commit"])
def test_resume_after_kill_equals_uninterrupted_run(corpus, reference, tmp_path, monkeypatch, kill):
    out = tmp_path / "out"

    class Killed(Exception):
        pass

    if kill == "after_commit":
        def on_shard(k):
            if k == 1:
                raise Killed
        with pytest.raises(Killed):
            run(corpus, out, on_shard=on_shard)
    else:  # shard 2's kept and excluded files are written, its state and manifest entry are not
        real, calls = runner_mod.save_state, []

        def save_state(path, state):
            calls.append(path)
            if len(calls) == 3:
                raise Killed
            real(path, state)
        monkeypatch.setattr(runner_mod, "save_state", save_state)
        with pytest.raises(Killed):
            run(corpus, out)
        monkeypatch.setattr(runner_mod, "save_state", real)
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 2
    summary = run(corpus, out)
    assert summary["resumed_shards"] == 2
    assert snapshot(out) == snapshot(reference[0])


def test_finished_run_is_not_redone(corpus, reference, tmp_path):
    out = tmp_path / "out"
    run(corpus, out)
    before = snapshot(out)
    assert run(corpus, out)["resumed_shards"] == 6
    assert snapshot(out) == before


def test_changed_config_is_refused_unless_overwrite(corpus, tmp_path):
    out = tmp_path / "out"
    run(corpus, out)
    changed = recipe(corpus, out, quality={"min_chars": 10})
    with pytest.raises(ConfigError, match="different config.*--overwrite"):
        run_pipeline(from_dict(PipelineConfig, changed), root=corpus.parent)
    summary = run_pipeline(from_dict(PipelineConfig, changed), root=corpus.parent, overwrite=True)
    assert summary["resumed_shards"] == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["quality"]["min_chars"] == 10
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a pipeline output"):
        run(corpus, tmp_path / "other")


def test_cli_end_to_end(corpus, tmp_path, capsys):
    import yaml

    from lightseek.cli import main

    (corpus.parent / "recipes").mkdir(exist_ok=True)
    cfg = recipe(corpus, Path("runs/cli"))
    cfg["input"]["paths"] = ["corpus"]  # relative: starts at the folder above recipes/
    cfg["out_dir"] = "runs/cli"
    path = corpus.parent / "recipes" / "pipeline_test.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["data", "pipeline", "--config", str(path), "--quiet", "--input.max_bytes=100000"]) == 0
    out = corpus.parent / "runs" / "cli"
    assert "kept" in capsys.readouterr().out and (out / "stats.md").is_file()
    assert json.loads((out / "manifest.json").read_text())["config"]["input"]["max_bytes"] == 100000
    assert main(["data", "pipeline", "--config", str(path), "--quiet", "--quality.min_chars=10"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "pipeline", "--config", str(path), "--quiet", "--quality.min_chars=10", "--overwrite",
                 "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "manifest.json").is_file()
    assert main(["data", "pipeline", "--config", str(path), "--quality.min_charz=1"]) == 2
    assert "quality.min_charz" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "en_gutenberg").is_dir(), reason="needs ../shared/data (absent here)")
def test_general_recipe_on_real_data(tmp_path):
    from lightseek.data.pipeline import load_pipeline_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_pipeline_config(repo / "recipes" / "pipeline_general.yaml",
                               [f"--out_dir={tmp_path}", "--output.progress=false", "--input.max_bytes=400000"])
    summary = run_pipeline(cfg, root=repo)
    assert 0 < summary["records_kept"] <= summary["records_in"] and summary["bytes_in"] <= 400_000
    kept = read_jsonl(tmp_path / "kept")
    assert kept[0]["source"].startswith("../shared/data/en_gutenberg/") and {r["lang"] for r in kept} == {"en"}
    assert all(r["offset"] is not None and r["steps"][-1] == "domain" for r in kept)
