"""LoRA and full fine-tuning through the shared loop; the `lightseek lora` commands end to end."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from lightseek.adapters.finetune import epoch_indices, finetune, load_finetune_config
from lightseek.adapters.lora import use_adapters
from lightseek.adapters.store import base_fingerprint, load_adapter
from lightseek.cli import main
from lightseek.errors import ConfigError
from lightseek.model.checkpoint import load_model, read_checkpoint_config
from lightseek.train.metrics import read_metrics


def config(base: Path, data: Path, out: Path, *extra: str):
    return load_finetune_config(None, [f"--base={base}", f"--data.files=[\"{data}\"]", "--name=t", f"--out_dir={out}",
                                       "--train.steps=12", "--train.batch_size=8", "--train.seq_len=64",
                                       "--train.eval_every=12", "--train.ckpt_every=4", "--train.plots=false",
                                       "--train.lr=1e-2", "--train.warmup_steps=2", "--lora.rank=4",
                                       "--lora.targets=[attn,experts,shared,dense,router]", *extra])


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def test_epoch_indices_cover_each_epoch_once() -> None:
    seen = [i for s in range(5) for i in epoch_indices(10, 4, 0, s)]  # 20 positions = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert epoch_indices(10, 4, 0, 3) == epoch_indices(10, 4, 0, 3) != epoch_indices(10, 4, 1, 3)


def test_lora_training_touches_only_the_adapter(debug_checkpoint, instruction_file, tmp_path) -> None:
    summary = finetune(config(debug_checkpoint, instruction_file, tmp_path / "run", "--train.log_every=1"),
                       "lora", show_progress=False)
    assert summary["finished"] and summary["trainable_parameters"] < summary["model_parameters"]
    base = load_model(debug_checkpoint)
    model = load_model(debug_checkpoint)
    info = load_adapter(model, tmp_path / "run", base_fingerprint(debug_checkpoint)["sha256"])
    # the base weights and routing state are untouched; the adapter's own routing state moved
    base_state = {k: v for k, v in model.state_dict().items() if "lora_" not in k and "adapter_states" not in k}
    plain = {k.replace(".base.", "."): v for k, v in base_state.items()}
    for k, v in base.state_dict().items():
        assert torch.equal(plain[k], v), k
    router = model.moe_layers()[0].router
    assert not torch.equal(router.adapter_states["t"].bias_E, router.bias_E)
    meta = info.meta
    assert meta["metrics"]["val_ppl"] == pytest.approx(summary["val_ppl"])
    assert meta["data"]["val_examples"] > 0 and meta["base"]["sha256"] == base_fingerprint(debug_checkpoint)["sha256"]
    # it learned: validation loss below the base model's on the same conversations
    from lightseek.adapters.evaluate import evaluate_adapters

    rows = evaluate_adapters(debug_checkpoint, [tmp_path / "run"], seq_len=64)["rows"]
    assert rows[1]["domain:t"] < rows[0]["domain:t"]


def test_lora_resume_is_exact(debug_checkpoint, instruction_file, tmp_path) -> None:
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "a"), "lora", show_progress=False)
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "b", "--train.stop_after=4"), "lora",
             show_progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        finetune(config(debug_checkpoint, instruction_file, tmp_path / "b"), "lora", show_progress=False)
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "b"), "lora", resume=True, show_progress=False)
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")


def test_gradient_checkpointing_trains_the_same_adapter(debug_checkpoint, instruction_file, tmp_path) -> None:
    """train.grad_checkpoint recomputes each block in backward: the same losses, step by step."""
    short = ("--train.steps=4", "--train.log_every=1", "--train.eval_every=4")
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "plain", *short), "lora", show_progress=False)
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "remat", *short, "--train.grad_checkpoint=true"),
             "lora", show_progress=False)
    plain, remat = train_losses(tmp_path / "plain"), train_losses(tmp_path / "remat")
    assert len(plain) == 4 and remat == pytest.approx(plain, rel=1e-5)


def test_full_finetuning_writes_a_plain_checkpoint(debug_checkpoint, instruction_file, tmp_path) -> None:
    summary = finetune(config(debug_checkpoint, instruction_file, tmp_path / "sft", "--train.lr=3e-3"), "full",
                       show_progress=False)
    assert summary["trainable_parameters"] == summary["model_parameters"]
    model = load_model(tmp_path / "sft")
    base = load_model(debug_checkpoint)
    assert not torch.equal(model.layers[0].attn.wq.weight, base.layers[0].attn.wq.weight)


def test_lora_commands_end_to_end(debug_checkpoint, instruction_file, tmp_path, capsys) -> None:
    run = tmp_path / "adapters" / "shakes"
    common = ["--train.steps=6", "--train.batch_size=4", "--train.seq_len=64", "--train.eval_every=6",
              "--train.plots=false", "--quiet"]
    assert main(["lora", "train", "--base", str(debug_checkpoint), "--data", str(instruction_file), "--name",
                 "shakes", f"--out_dir={run}", "--data.domain=drama", *common]) == 0
    out = capsys.readouterr().out
    assert "layers.1.ffn.experts" in out and "trainable parameters" in out
    assert main(["lora", "list", str(tmp_path / "adapters")]) == 0
    listing = capsys.readouterr().out
    assert "shakes" in listing and "drama" in listing
    assert main(["lora", "merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    merged = load_model(tmp_path / "merged")
    model = load_model(debug_checkpoint)
    load_adapter(model, run, base_fingerprint(debug_checkpoint)["sha256"])
    x = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    with use_adapters(model, "shakes"):
        assert (merged(x).logits - model(x).logits).abs().max() < 1e-4
    text = tmp_path / "general.txt"
    text.write_text(instruction_file.read_text()[:20000], encoding="utf-8")
    assert main(["lora", "eval", str(run), "--text", f"general={text}", "--seq-len", "64"]) == 0
    table = capsys.readouterr().out
    assert "domain:shakes" in table and "general:general" in table and "shakes vs base" in table
    # errors are one line, exit code 2
    assert main(["lora", "train", "--base", str(debug_checkpoint), "--data", str(instruction_file),
                 "--name", "bad.name", f"--out_dir={tmp_path / 'x'}", *common]) == 2
    assert "adapter name" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n{oops\n", encoding="utf-8")
    assert main(["lora", "train", "--base", str(debug_checkpoint), "--data", str(bad), "--name", "b",
                 f"--out_dir={tmp_path / 'y'}", *common]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err


def test_runs_and_merges_never_overwrite_other_folders(debug_checkpoint, instruction_file, tmp_path, capsys) -> None:
    run = tmp_path / "a"
    finetune(config(debug_checkpoint, instruction_file, run, "--train.steps=2"), "lora", show_progress=False)
    # a run folder that holds anything else is refused without --resume
    other = tmp_path / "pretrain_run"
    other.mkdir()
    (other / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        finetune(config(debug_checkpoint, instruction_file, other), "lora", show_progress=False)
    assert (other / "metrics.jsonl").read_text() == "{}\n"
    # resume refuses a changed config, naming the keys
    with pytest.raises(ConfigError, match="train.lr"):
        finetune(config(debug_checkpoint, instruction_file, run, "--train.steps=2", "--train.lr=0.5"), "lora",
                 resume=True, show_progress=False)
    # merge never writes over the base, the adapter, or an existing folder
    for out in (debug_checkpoint, run / "adapter", tmp_path, other):
        assert main(["lora", "merge", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "choose a new folder" in err, err
    assert (debug_checkpoint / "model.safetensors").exists() and (run / "adapter" / "adapter_config.json").exists()


def test_mixed_choice_must_match_the_batch(debug_checkpoint) -> None:
    from lightseek.adapters.lora import LoraConfig, apply_lora

    model = load_model(debug_checkpoint)
    apply_lora(model, LoraConfig(rank=2), "a")
    with use_adapters(model, ["a", None]), pytest.raises(ConfigError, match="2 adapter choices for a batch of 3"):
        model(torch.zeros(3, 8, dtype=torch.long))


def test_replay_mixes_pretraining_windows_into_every_step(debug_checkpoint, instruction_file, tmp_path) -> None:
    plain = finetune(config(debug_checkpoint, instruction_file, tmp_path / "plain", "--train.steps=4"), "lora",
                     show_progress=False)
    mixed = finetune(config(debug_checkpoint, instruction_file, tmp_path / "mixed", "--train.steps=4",
                            "--data.replay_fraction=0.5"), "lora", show_progress=False)
    # half of the 8 rows are 64-token pretraining windows, every token of which is learned
    # (a conversation row learns only its reply: ~20 tokens here)
    assert mixed["tokens_seen"] > 4 * 4 * 64 > plain["tokens_seen"]
    meta = json.loads((tmp_path / "mixed" / "adapter" / "lightseek_adapter.json").read_text())
    assert meta["data"]["replay_fraction"] == 0.5 and meta["data"]["replay"]
    with pytest.raises(ConfigError, match="no prepared token shards"):
        finetune(config(debug_checkpoint, instruction_file, tmp_path / "x", "--data.replay_fraction=0.5",
                        f"--data.replay={tmp_path}"), "lora", show_progress=False)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_replay_kl_ties_replayed_rows_to_the_base(debug_checkpoint, mode) -> None:
    import torch.nn.functional as F

    from lightseek.adapters.finetune import _replay_tie
    from lightseek.adapters.lora import LoraConfig, apply_lora

    torch.manual_seed(0)
    model = load_model(debug_checkpoint).train()
    if mode == "lora":  # every kind of adapter path, all of which the base must switch off
        apply_lora(model, LoraConfig(rank=2, expert_rank=1, embed_rank=1,
                                     targets=["attn", "experts", "shared", "dense", "router", "embed"]), "a")
    with torch.no_grad():  # move the trained weights (the adapter's, or all) away from the base
        for n, p in model.named_parameters():
            if mode == "full" or "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    V = model.cfg.vocab_size
    x, y = torch.randint(0, V, (4, 16)), torch.randint(0, V, (4, 16))
    y[1, :5] = -100  # a conversation row learns only part of its tokens
    replayed = [False] * 4 + [True, False, True, False]  # the step's rows; this micro-batch is rows 4..7
    micro = slice(4, 8)
    objective = _replay_tie(model, mode, debug_checkpoint, "cpu", "auto", 0.7, replayed)
    with use_adapters(model, "a") if mode == "lora" else contextlib.nullcontext():
        result = model(x, y)
        stats = [(r.load_E.clone(), r.stat_sums.clone()) for r in (m.router for m in model.moe_layers())]
        got = objective(result, x, y, micro)
        for r, (load, sums) in zip((m.router for m in model.moe_layers()), stats):
            assert torch.equal(r.load_E, load) and torch.equal(r.stat_sums, sums)  # balancing sees one forward
        assert model.training
        assert objective(result, x, y, slice(0, 4)) is result.loss  # no replayed row: the plain loss
    # by hand: 0.3 * next-token + 0.7 * KL(base || model) on rows 0 and 2, next-token elsewhere
    with torch.no_grad():
        base_logp = F.log_softmax(load_model(debug_checkpoint)(x).logits, -1)
    logp = F.log_softmax(result.logits.detach(), -1)
    ce = -logp.gather(-1, y.clamp_min(0)[..., None])[..., 0]
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
    row = torch.tensor([True, False, True, False])[:, None]
    want = torch.where(row, 0.3 * ce + 0.7 * kl, ce)[y != -100].mean()
    assert float(kl[0].mean()) > 1e-3  # the tie has something to pull against
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_replay_kl_marks_exactly_the_replayed_rows(debug_checkpoint, instruction_file, tmp_path, monkeypatch,
                                                   mode) -> None:
    from lightseek.adapters import finetune as ft

    seen = []
    real = ft._replay_tie

    def spy(*args):
        objective = real(*args)

        def wrapped(result, x, y, micro):
            seen.append((args[-1][micro], (y != -100).all(1).tolist()))
            return objective(result, x, y, micro)
        return wrapped

    monkeypatch.setattr(ft, "_replay_tie", spy)
    out = tmp_path / mode
    finetune(config(debug_checkpoint, instruction_file, out, "--train.steps=3", "--train.batch_size=4",
                    "--train.grad_accum=2", "--data.replay_fraction=0.5", "--data.replay_kl=1.0"),
             mode, show_progress=False)
    # two micro-batches a step; replayed windows learn every token, a conversation never does
    assert len(seen) == 6 and all(marked == full_rows for marked, full_rows in seen)
    assert sum(sum(marked) for marked, _ in seen) == 3 * 4  # half of each step's 8 rows
    meta = (json.loads((out / "adapter" / "lightseek_adapter.json").read_text()) if mode == "lora" else
            read_checkpoint_config(out / "checkpoint")["finetune"])
    assert meta["data"]["replay_kl"] == 1.0


def test_replay_kl_trains_a_different_adapter(debug_checkpoint, instruction_file, tmp_path) -> None:
    from safetensors.torch import load_file

    runs = {}
    for kl in (0.0, 1.0):
        finetune(config(debug_checkpoint, instruction_file, tmp_path / str(kl), "--train.steps=3",
                        "--data.replay_fraction=0.5", f"--data.replay_kl={kl}"), "lora", show_progress=False)
        runs[kl] = load_file(str(tmp_path / str(kl) / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(runs[0.0][k], runs[1.0][k]) for k in runs[0.0])


def test_replay_kl_bad_settings_are_named(debug_checkpoint, instruction_file, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"data.replay_kl must be in \[0, 1\], got 1.5"):
        config(debug_checkpoint, instruction_file, tmp_path / "x", "--data.replay_fraction=0.3", "--data.replay_kl=1.5")
    with pytest.raises(ConfigError, match="set data.replay_fraction > 0 too"):
        config(debug_checkpoint, instruction_file, tmp_path / "x", "--data.replay_kl=1.0")
    with pytest.raises(ConfigError, match="makes 0 replayed rows"):
        finetune(config(debug_checkpoint, instruction_file, tmp_path / "x", "--data.replay_fraction=0.01"), "lora",
                 show_progress=False)
    # a run saved before the option existed ran without the tie: resuming it with the tie is refused
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "old", "--train.steps=4", "--train.ckpt_every=2",
                    "--train.stop_after=2", "--data.replay_fraction=0.5"), "lora", show_progress=False)
    saved = (tmp_path / "old" / "config.yaml").read_text()
    (tmp_path / "old" / "config.yaml").write_text(saved.replace("  replay_kl: 0.0\n", ""))
    assert "  replay_kl: 0.0\n" in saved and "  replay_kl:" not in (tmp_path / "old" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="data.replay_kl"):
        finetune(config(debug_checkpoint, instruction_file, tmp_path / "old", "--train.steps=4", "--train.ckpt_every=2",
                        "--data.replay_fraction=0.5", "--data.replay_kl=1.0"), "lora", resume=True, show_progress=False)
    summary = finetune(config(debug_checkpoint, instruction_file, tmp_path / "old", "--train.steps=4",
                              "--train.ckpt_every=2", "--data.replay_fraction=0.5"), "lora", resume=True,
                       show_progress=False)
    assert summary["finished"]


def test_full_finetuning_can_freeze_parts(debug_checkpoint, instruction_file, tmp_path) -> None:
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "f", "--train.steps=3", "--freeze=[embed]"),
             "full", show_progress=False)
    tuned, base = load_model(tmp_path / "f"), load_model(debug_checkpoint)
    assert torch.equal(tuned.embed.weight, base.embed.weight)
    assert not torch.equal(tuned.layers[0].attn.wq.weight, base.layers[0].attn.wq.weight)
    with pytest.raises(ConfigError, match="no parameter name starts with or matches 'embd'"):
        finetune(config(debug_checkpoint, instruction_file, tmp_path / "g", "--freeze=[embd]"), "full",
                 show_progress=False)


def test_a_base_held_in_bf16_trains_nearly_the_same_adapter(debug_checkpoint, instruction_file, tmp_path) -> None:
    """frozen_dtype=bf16 holds the frozen projections, embedding and head in bf16 (half their
    memory) and still computes in fp32: the losses follow the fp32 run's within the weights'
    rounding, the adapter is saved in fp32 and loads onto the fp32 base; full fine-tuning refuses."""
    short = ("--train.steps=4", "--train.log_every=1", "--train.eval_every=4")
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "fp32", *short), "lora", show_progress=False)
    finetune(config(debug_checkpoint, instruction_file, tmp_path / "bf16", *short, "--frozen_dtype=bf16"), "lora",
             show_progress=False)
    fp32, bf16 = train_losses(tmp_path / "fp32"), train_losses(tmp_path / "bf16")
    assert len(bf16) == 4 and bf16 == pytest.approx(fp32, rel=2e-2) and bf16 != fp32
    model = load_model(debug_checkpoint)
    info = load_adapter(model, tmp_path / "bf16" / "adapter", base_fingerprint(debug_checkpoint)["sha256"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with use_adapters(model, info.name), torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    with pytest.raises(ConfigError, match="LoRA mode"):
        finetune(config(debug_checkpoint, instruction_file, tmp_path / "full", "--frozen_dtype=bf16"), "full",
                 show_progress=False)
