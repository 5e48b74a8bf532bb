"""`lightseek sft`, `lightseek distill data` and `lightseek distill train` through the command
line entry (in process, as tests/quant/test_quant_cli.py runs it), on the debug checkpoint with
2 steps and tiny data: each exits 0 and writes what the README says it writes."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
from cli_helpers import one_torch_thread, write_instructions  # noqa: F401  (fixture)
from distill.test_distiller import prompts  # noqa: F401  (fixture: 10 prompts as JSONL)
from distill.test_kd import domain_files  # noqa: F401  (fixture: 'drama' and 'general' text as JSONL)

from lightseek.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STEPS = ["--train.steps=2", "--train.batch_size=4", "--train.seq_len=32", "--train.eval_every=2",
         "--train.ckpt_every=2", "--train.eval_batches=1", "--train.log_every=1", "--train.warmup_steps=1",
         "--train.plots=false"]


def cli(capsys, *argv) -> str:
    """Run `lightseek ARGV` in process; assert exit 0; its stdout with whitespace runs collapsed
    (rich wraps long lines)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return " ".join(out.split())


def test_sft_with_the_recipe_writes_a_fine_tuned_checkpoint(debug_checkpoint, tmp_path, capsys, monkeypatch):
    """recipes/sft.yaml as the README runs it (30% replay of the base run's data with a KL tie),
    shrunk to 2 steps."""
    from lightseek.adapters.store import base_fingerprint, files_sha256
    from lightseek.model.checkpoint import load_model, read_checkpoint_config
    from lightseek.train.metrics import read_metrics

    monkeypatch.setenv("COLUMNS", "1000")
    data = write_instructions(tmp_path / "qa.jsonl")
    out = tmp_path / "sft"
    printed = cli(capsys, "sft", "--config", RECIPES / "sft.yaml", "--base", debug_checkpoint, "--data", data,
                  "--name", "full", "--out_dir", out, *STEPS, "--quiet")
    m = re.search(r"trainable parameters: ([\d,]+) \(100\.00% of ([\d,]+)\)", printed)
    assert m and m[1] == m[2], printed  # full fine-tuning trains every parameter

    model, base = load_model(out / "checkpoint"), load_model(debug_checkpoint)
    assert model.cfg.to_dict() == base.cfg.to_dict()
    ours, theirs = model.state_dict(), base.state_dict()
    assert ours.keys() == theirs.keys()
    changed = [k for k in ours if ours[k].is_floating_point() and not torch.equal(ours[k], theirs[k])]
    assert {"layers.0.attn.wq.weight", "layers.1.ffn.w1_EDH", "layers.1.ffn.router.weight"} <= set(changed)

    meta = read_checkpoint_config(out / "checkpoint")
    ft = meta["finetune"]
    assert meta["step"] == 2
    assert ft["base"]["sha256"] == base_fingerprint(debug_checkpoint)["sha256"]
    assert ft["data"]["sha256"] == files_sha256([data]) and ft["data"]["train_examples"] > 0
    assert ft["data"]["replay_fraction"] == 0.3 and ft["data"]["replay_kl"] == 1.0  # from the recipe
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert all(math.isfinite(r["val_loss"]) for r in records if r["kind"] == "eval")


def test_distill_data_writes_messages_with_provenance(debug_checkpoint, prompts, tmp_path, capsys):  # noqa: F811
    from lightseek.adapters.store import base_fingerprint

    out = tmp_path / "distilled"
    printed = cli(capsys, "distill", "data", prompts, f"--out={out}", f"--experts.*={debug_checkpoint}",
                  f"--refiner={debug_checkpoint}", "--generate.max_tokens=4", "--seed=3", "--quiet")
    m = re.search(r"(\d+) inputs: (\d+) records written to (\S+), (\d+) rejected .* in (\S+); (\d+) generations",
                  printed)
    assert m, printed
    n_in, kept, data_file, rejected, rejected_file = int(m[1]), int(m[2]), Path(m[3]), int(m[4]), Path(m[5])
    assert data_file == out / "data.jsonl" and rejected_file == out / "rejected.jsonl"
    rows = [json.loads(ln) for ln in data_file.read_text(encoding="utf-8").splitlines()]
    refused = [json.loads(ln) for ln in rejected_file.read_text(encoding="utf-8").splitlines()]
    assert n_in == 10 and kept == len(rows) > 0 and rejected == len(refused) and kept + rejected == n_in

    inputs = [json.loads(ln)["prompt"] for ln in prompts.read_text(encoding="utf-8").splitlines()]
    sha = base_fingerprint(debug_checkpoint)["sha256"]
    for rec in rows:
        user, answer = rec["messages"]
        assert user["role"] == "user" and answer["role"] == "assistant" and answer["content"].strip()
        src = rec["source"]
        assert src["file"] == str(prompts) and user["content"] == inputs[src["index"]].strip()
        assert src["sha256"] == hashlib.sha256(user["content"].encode("utf-8")).hexdigest()
        assert rec["domain"] == "general" and rec["confidence"] == 1.0 and isinstance(rec["seed"], int)
        assert rec["expert"]["sha256"] == sha and rec["refiner"]["mode"] == "refine"
        assert rec["refiner"]["sha256"] == sha and "{answer}" in rec["prompts"]["refiner"]


def test_distill_train_writes_a_student_that_loads(debug_checkpoint, domain_files, tmp_path, capsys):  # noqa: F811
    from lightseek.adapters.store import base_fingerprint
    from lightseek.model.checkpoint import load_model, read_checkpoint_config

    out = tmp_path / "student"
    printed = cli(capsys, "distill", "train", f"--out_dir={out}", f"--teachers.drama={debug_checkpoint}",
                  f"--data.sources=[drama={domain_files['drama']},general={domain_files['general']}]",
                  "--preset=debug", "--model.router_mode=dense", "--model.dim=32", "--model.n_heads=2",
                  "--model.n_kv_heads=1", "--model.dense_inter_dim=64", "--model.max_seq_len=64",
                  "--eval_windows=2", *STEPS, "--quiet")
    ppl = {d: float(v) for d, v in re.findall(r"(drama|general) val ppl (\d+\.\d+)", printed)}
    assert set(ppl) == {"drama", "general"} and all(math.isfinite(p) and p > 1 for p in ppl.values()), printed

    student, teacher = load_model(out / "checkpoint"), load_model(debug_checkpoint)
    assert not student.cfg.is_moe and student.cfg.dim == 32
    assert student.cfg.vocab_size == teacher.cfg.vocab_size  # one tokenizer
    assert student.num_params()["total"] < teacher.num_params()["total"]
    meta = read_checkpoint_config(out / "checkpoint")
    assert meta["step"] == 2
    assert meta["distilled"]["teachers"]["drama"]["sha256"] == base_fingerprint(debug_checkpoint)["sha256"]
    assert meta["distilled"]["kd"]["divergence"] == "forward"
    x = torch.randint(0, student.cfg.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(student(x).logits).all()
