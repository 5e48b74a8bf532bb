"""Shared fixtures: a small real text corpus and a prepared debug dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# fixtures of some test folders, as plugins: a conftest.py in a folder would shadow this one,
# which tests import as `conftest`; the repository root makes `tests.` importable however pytest runs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
pytest_plugins = ["tests.platform.databases", "tests.safety.tiny_data"]


def corpus_text() -> str:
    """About 150 KB of real English: tinyshakespeare when ../shared/data is here, otherwise the
    standard library's documentation (present wherever Python is)."""
    f = SHARED / "en_tinyshakespeare" / "input.txt"
    if f.exists():
        return f.read_text(encoding="utf-8")[:150_000]
    from lightseek.data.corpus import stdlib_documents

    return "\n\n".join(d.text for d in stdlib_documents(150_000))


@pytest.fixture(scope="session")
def debug_data(tmp_path_factory) -> Path:
    """A prepared shard folder (with tokenizer.json) for the debug preset."""
    from lightseek.data.corpus import Document
    from lightseek.data.prepare import prepare_dataset

    text = corpus_text()
    docs = [Document("corpus", i, chunk) for i, chunk in enumerate(text.split("\n\n")) if chunk.strip()]
    out = tmp_path_factory.mktemp("debug_data") / "data"
    prepare_dataset(lambda: iter(docs), out, vocab_size=512, val_fraction=0.1, seed=0)
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA; without it they are skipped with that reason."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def debug_checkpoint(debug_data, tmp_path_factory) -> Path:
    """A debug-preset dynamic MoE pretrained for 30 steps: a base model for adapter tests."""
    from lightseek.train.config import load_run_config
    from lightseek.train.pretrain import pretrain

    out = tmp_path_factory.mktemp("debug_base")
    cfg = load_run_config(None, [f"--data.prepared={debug_data}", "--preset=debug", f"--out_dir={out}",
                                 "--train.steps=30", "--train.batch_size=8", "--train.seq_len=64",
                                 "--train.eval_every=30", "--train.eval_batches=2", "--train.plots=false",
                                 "--train.warmup_steps=5"])
    pretrain(cfg, show_progress=False)
    return out / "checkpoint"


@pytest.fixture(scope="session")
def instruction_file(tmp_path_factory) -> Path:
    """~300 question-answer records in three formats, built from the test corpus."""
    import json

    lines = [ln.strip() for ln in corpus_text().splitlines() if len(ln.strip()) > 20][:600]
    out = tmp_path_factory.mktemp("instruct") / "qa.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for i in range(0, len(lines) - 1, 2):
            q, a = lines[i], lines[i + 1]
            kind = (i // 2) % 3
            if kind == 0:
                rec = {"instruction": "Continue the play.", "input": q, "output": a}
            elif kind == 1:
                rec = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            else:
                rec = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out


@pytest.fixture(scope="session")
def strong_adapter():
    """Attach adapter ``name`` to ``model`` with large B factors, both factors drawn from a
    seeded generator (A at its usual scale, uniform in +-1/sqrt(fan_in)): the same adapter
    whatever ran before and drew from the global generator, so the adapter visibly changes what
    the model generates."""
    import torch

    from lightseek.adapters.lora import LoraConfig, apply_lora

    def attach(model, name: str) -> None:
        apply_lora(model, LoraConfig(rank=4, targets=["attn", "experts"]), name)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
                elif "lora_A" in n:  # (rank, n_in), or (experts, n_in, rank) for routed experts
                    n_in = p.shape[-1] if p.dim() == 2 else p.shape[-2]
                    p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / n_in ** 0.5)

    return attach
