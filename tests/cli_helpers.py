"""Helpers (not tests) for the command-line tests: one PyTorch thread, and a LoRA adapter trained by
`lightseek lora train`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from lightseek.cli import main


@contextlib.contextmanager
def torch_threads(n: int):
    """PyTorch's intra-op threads set to ``n`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process commands run with one PyTorch thread: on a 2-core machine busy with other work,
    two threads that wait on each other make a debug model's forward many times slower (a
    `distill data` run: 36 s with two, 2.5 s with one)."""
    with torch_threads(1):
        yield


QA = [("What is glaucoma?", "Glaucoma damages the optic nerve of the eye."),
      ("What is an interest rate?", "The price of borrowing money for a year."),
      ("Who wrote the play?", "The play was written by an old sailor."),
      ("Where is the market?", "The quiet market is by the stone bridge.")]


def write_instructions(path: Path, n: int = 40) -> Path:
    """``n`` question/answer records (the four pairs above, numbered) as JSONL."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            q, a = QA[i % len(QA)]
            f.write(json.dumps({"question": f"{q} ({i})", "answer": a}) + "\n")
    return path


def lora_train(base: Path, data: Path, run: Path, name: str, *extra: str) -> Path:
    """`lightseek lora train` for 2 steps (in process, as the user types it); the adapter folder."""
    rc = main(["lora", "train", "--base", str(base), "--data", str(data), "--name", name, "--out_dir", str(run),
               "--train.steps=2", "--train.batch_size=4", "--train.seq_len=32", "--train.eval_every=2",
               "--train.ckpt_every=2", "--train.eval_batches=1", "--train.plots=false", "--train.warmup_steps=1",
               "--lora.rank=4", "--quiet", *extra])
    assert rc == 0, f"lora train exited {rc}"
    adapter = run / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    return adapter
