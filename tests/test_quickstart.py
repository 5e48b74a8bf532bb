"""`lightseek quickstart` end to end on the debug preset (corpus, tokenizer, training, report,
plots, sample), reusing a finished run and starting over with --fresh; and the plots `lightseek
train` writes."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
from cli_helpers import one_torch_thread  # noqa: F401  (fixture)

from lightseek.cli import main

# the quickstart recipe shrunk to seconds: every key is a dotted override of its own config
QUICK = ["--preset=debug", "--data.max_bytes=60000", "--tokenizer.vocab_size=300", "--tokenizer.train_bytes=30000",
         "--train.steps=2", "--train.batch_size=2", "--train.seq_len=32", "--train.eval_every=2",
         "--train.eval_batches=1", "--train.ckpt_every=2", "--train.log_every=1", "--train.warmup_steps=1",
         "--generate.max_new_tokens=4"]


def read_png(path: Path):
    mpimg = pytest.importorskip("matplotlib.image", reason="the PNG plots need matplotlib (pip install -e .[plot])")
    assert path.is_file() and path.stat().st_size > 0, path
    return mpimg.imread(path)


def check_plots(run: Path) -> None:
    """loss.png (7x4 in at 120 dpi) and expert_load.png (5 in wide for 8 experts, one MoE
    layer) read back as RGBA images that are not blank."""
    loss, load = read_png(run / "loss.png"), read_png(run / "expert_load.png")
    assert loss.shape == (480, 840, 4)
    assert load.shape[1:] == (600, 4) and abs(load.shape[0] - round(1.7 * 120)) <= 1
    for image in (loss, load):
        assert image[..., :3].std() > 0.05  # lines, labels, a heatmap: not one flat colour


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quickstart(capsys, out: Path, *extra: str) -> str:
    assert main(["quickstart", "--from-scratch", f"--out_dir={out}", *QUICK, *extra]) == 0
    return " ".join(capsys.readouterr().out.split())  # rich may wrap long paths: compare words


def val_loss(printed: str) -> float:
    m = re.search(r"validation loss (\d+\.\d+), perplexity (\d+\.\d+)", printed)
    assert m, printed
    assert math.isclose(math.exp(float(m[1])), float(m[2]), rel_tol=2e-3)
    return float(m[1])


def test_quickstart_trains_reports_reuses_and_starts_fresh(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps its lines at the terminal width: none here
    pytest.importorskip("matplotlib", reason="quickstart's plots need matplotlib (pip install -e .[plot])")
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.train.metrics import read_metrics

    out = tmp_path / "qs"
    first = quickstart(capsys, out)
    assert "2/4 training the debug dynamic MoE for 2 steps" in first
    ckpt = out / "checkpoint"
    check_plots(out)
    assert (out / "data" / "manifest.json").is_file()  # the corpus was prepared inside the run folder

    model = load_model(ckpt)
    assert model.cfg.dim == 64 and model.cfg.n_layers == 2 and model.cfg.is_moe  # the debug preset
    assert model.cfg.vocab_size == Tokenizer.load(ckpt).vocab_size <= 300

    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in evals] == [2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    assert val_loss(first) == pytest.approx(evals[-1]["val_loss"], abs=5e-4)
    # the balance line gives both MaxVio figures and says against the target what each one means
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["max_vio"] == pytest.approx(evals[-1]["max_vio"])
    assert 0 <= summary["max_vio_train"] and summary["dead_experts"] == evals[-1]["dead_experts"]
    assert f"MaxVio {summary['max_vio_train']:.3f} on training text (target 0.10: " in first
    assert f"{summary['max_vio']:.3f} on held-out documents" in first
    assert ("over target" in first) == (max(summary["max_vio_train"], summary["max_vio"]) > 0.10)

    # again: the finished run is reported, not retrained
    weights = ckpt / "model.safetensors"
    before = (weights.stat().st_mtime_ns, sha(weights), sha(out / "metrics.jsonl"), sha(out / "loss.png"))
    second = quickstart(capsys, out)
    assert f"{ckpt} is already trained (2 steps); use --fresh to start over" in second
    assert "training the debug" not in second and "1/4 corpus" not in second
    assert (weights.stat().st_mtime_ns, sha(weights), sha(out / "metrics.jsonl"), sha(out / "loss.png")) == before
    assert val_loss(second) == pytest.approx(val_loss(first), abs=1e-3)  # its own evaluation, same windows

    # --fresh deletes the run folder and trains again (the same seed: the same losses on CPU)
    (out / "my_notes.txt").write_text("left from before", encoding="utf-8")
    third = quickstart(capsys, out, "--fresh")
    assert "1/4 corpus" in third and "2/4 training the debug dynamic MoE for 2 steps" in third
    assert not (out / "my_notes.txt").exists()
    assert weights.stat().st_mtime_ns != before[0]
    check_plots(out)
    again = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in train], rel=1e-5)


def test_train_writes_plots_matplotlib_reads(tmp_path, debug_data, capsys):
    pytest.importorskip("matplotlib", reason="--train.plots needs matplotlib (pip install -e .[plot])")
    common = ["train", "--preset=debug", f"--data.prepared={debug_data}", "--train.steps=2", "--train.batch_size=2",
              "--train.seq_len=32", "--train.eval_every=2", "--train.eval_batches=1", "--train.ckpt_every=2",
              "--train.log_every=1", "--train.warmup_steps=1", "--quiet"]
    assert main([*common, f"--out_dir={tmp_path / 'plots'}", "--train.plots=true"]) == 0
    check_plots(tmp_path / "plots")
    assert main([*common, f"--out_dir={tmp_path / 'none'}", "--train.plots=false"]) == 0
    capsys.readouterr()
    assert (tmp_path / "none" / "checkpoint" / "model.safetensors").is_file()
    assert not list((tmp_path / "none").glob("*.png"))
