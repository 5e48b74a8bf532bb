"""`lightseek moefy` as a user runs it: a dense checkpoint in, a MoE checkpoint out that loads,
generates and reports its routing; bad input refused by name, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import one_torch_thread  # noqa: F401  (fixture: one PyTorch thread)
from conftest import corpus_text

from lightseek.cli import main

SMALL = ["--moefy.router_steps=20", "--moefy.calib.samples=8", "--moefy.calib.seq_len=32", "--quiet"]


@pytest.fixture(scope="module")
def dense_checkpoint(debug_data, tmp_path_factory) -> Path:
    """A dense debug-preset model pretrained for 20 steps."""
    from lightseek.train.config import load_run_config
    from lightseek.train.pretrain import pretrain

    out = tmp_path_factory.mktemp("dense_base")
    cfg = load_run_config(None, [f"--data.prepared={debug_data}", "--preset=debug", "--model.router_mode=dense",
                                 f"--out_dir={out}", "--train.steps=20", "--train.batch_size=8",
                                 "--train.seq_len=64", "--train.eval_every=20", "--train.eval_batches=1",
                                 "--train.plots=false", "--train.warmup_steps=2"])
    pretrain(cfg, show_progress=False)
    return out / "checkpoint"


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(corpus_text()[:20_000], encoding="utf-8")
    return path


def test_moefy_writes_a_moe_checkpoint_that_loads_generates_and_reports(capsys, dense_checkpoint, calib_file,
                                                                        tmp_path):
    from lightseek.model.checkpoint import load_model, read_checkpoint_config

    out = tmp_path / "moe"
    rc = main(["moefy", str(dense_checkpoint), "--out", str(out), "--experts", "4", "--target-k", "2",
               "--calib", str(calib_file), *SMALL])
    printed, err = capsys.readouterr()
    assert rc == 0, err
    lines = printed.strip().splitlines()
    assert lines[0].split() == ["layer", "recall", "rel.err", "k", "MaxVio"]
    assert [int(ln.split()[0]) for ln in lines[1:3]] == [0, 1]  # both layers of the debug preset converted
    assert "2 layers converted on 256 calibration tokens" in lines[-1] and "50% of FFN weights active" in lines[-1]

    meta = read_checkpoint_config(out)
    assert meta["model"]["router_mode"] == "dynamic" and meta["model"]["n_experts"] == 4
    assert meta["model"]["expert_weights"] == "unit" and meta["model"]["n_dense_layers"] == 0
    info = meta["moefy"]
    assert info["config"]["experts"] == 4 and info["calib_tokens"] == 256 and len(info["layers"]) == 2
    assert info["source"]["sha256"]
    model, dense = load_model(out), load_model(dense_checkpoint)
    assert all(float(m.router.threshold) < 1.0 for m in model.moe_layers())  # calibrated, not the initial 1.0
    p, pd = model.num_params(), dense.num_params()
    assert p["total"] == pd["total"] + 2 * 4 * 64  # the routers are the only new weights
    assert p["active"] < p["total"]

    assert main(["generate", str(out), "--prompt", "The king", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["eval", str(out), "--data", str(calib_file), "--routing", "--train.eval_batches=1"]) == 0
    assert "avg experts/token" in capsys.readouterr().out


def test_moefy_defaults_to_standard_library_text_and_topk(capsys, dense_checkpoint, tmp_path):
    out = tmp_path / "moe"
    rc = main(["moefy", str(dense_checkpoint), "--out", str(out), "--experts", "8", "--router", "topk",
               "--top-k", "3", "--split", "random", *SMALL])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"]["router_mode"] == "topk" and meta["model"]["top_k"] == 3
    assert meta["moefy"]["config"]["calib"]["files"] == []


@pytest.mark.parametrize("args, message", [
    (["--experts", "5", "--target-k", "2"], "multiple of experts"),
    (["--experts", "4", "--target-k", "9"], "target_k"),
    (["--split", "kmeans"], "split"),
    (["--calib", "/nonexistent/calib.txt"], "nonexistent"),
])
def test_moefy_refuses_bad_settings_by_name_and_writes_nothing(capsys, dense_checkpoint, tmp_path, args, message):
    out = tmp_path / "moe"
    rc = main(["moefy", str(dense_checkpoint), "--out", str(out), *args, *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_moefy_refuses_moe_quantized_and_existing_outputs(capsys, dense_checkpoint, debug_checkpoint, tmp_path):
    rc = main(["moefy", str(debug_checkpoint), "--out", str(tmp_path / "x"), *SMALL])
    assert rc == 2 and "already a MoE" in capsys.readouterr().err
    quant = tmp_path / "q"
    assert main(["quant", str(dense_checkpoint), "--out", str(quant), "--quiet"]) == 0
    capsys.readouterr()
    rc = main(["moefy", str(quant), "--out", str(tmp_path / "y"), *SMALL])
    assert rc == 2 and "quantized" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    rc = main(["moefy", str(dense_checkpoint), "--out", str(existing), *SMALL])
    assert rc == 2 and "exists" in capsys.readouterr().err
    assert (existing / "notes.txt").read_text() == "keep me"


def test_moefy_output_matches_the_library_call(dense_checkpoint, calib_file, tmp_path, capsys):
    """The CLI's checkpoint holds exactly what `moefy_model` builds from the same windows."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.moefy.config import MoefyConfig
    from lightseek.moefy.convert import moefy_model
    from lightseek.moefy.run import calibration

    out = tmp_path / "moe"
    assert main(["moefy", str(dense_checkpoint), "--out", str(out), "--experts", "4", "--target-k", "2",
                 "--calib", str(calib_file), *SMALL]) == 0
    capsys.readouterr()
    cfg = MoefyConfig(experts=4, target_k=2, router_steps=20)
    cfg.calib.files, cfg.calib.samples, cfg.calib.seq_len = [str(calib_file)], 8, 32
    dense = load_model(dense_checkpoint)
    built, _ = moefy_model(dense, calibration(Tokenizer.load(dense_checkpoint), cfg, dense.cfg.max_seq_len), cfg)
    saved = load_model(out)
    for k, v in built.state_dict().items():
        assert torch.equal(v, saved.state_dict()[k]), k


def test_moefy_retargets_a_converted_checkpoint(capsys, dense_checkpoint, calib_file, tmp_path):
    """A converted MoE given back to `moefy` keeps its weights and changes only its routing."""
    from lightseek.model.checkpoint import load_model, read_checkpoint_config

    moe, wide, fixed = tmp_path / "moe", tmp_path / "k3", tmp_path / "top1"
    common = ["--calib", str(calib_file), *SMALL]
    assert main(["moefy", str(dense_checkpoint), "--out", str(moe), "--experts", "4", "--target-k", "2", *common]) == 0
    capsys.readouterr()
    assert main(["moefy", str(moe), "--out", str(wide), "--target-k", "3", *common]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].split() == ["layer", "k", "MaxVio", "threshold"]
    ks = [float(ln.split()[1]) for ln in printed[1:3]]
    assert all(abs(k - 3) < 0.35 for k in ks), ks  # calibrated to the new average on the same text
    assert "2 layers re-targeted" in printed[-1] and "75% of FFN weights active" in printed[-1]
    a, b = load_model(moe), load_model(wide)
    assert b.cfg.target_k == 3 and b.cfg.n_experts == 4
    for name, v in a.state_dict().items():
        if not name.endswith("threshold"):
            assert torch.equal(v, b.state_dict()[name]), name
    meta = read_checkpoint_config(wide)
    assert meta["moefy"]["config"]["experts"] == 4  # the conversion's record is kept
    assert meta["moefy_retargets"][-1]["target_k"] == 3

    assert main(["moefy", str(moe), "--out", str(fixed), "--router", "topk", "--top-k", "1", *common]) == 0
    capsys.readouterr()
    top1 = load_model(fixed)
    assert top1.cfg.router_mode == "topk" and top1.cfg.top_k == 1
    top1.reset_routing_stats()
    top1(torch.randint(0, top1.cfg.vocab_size, (2, 16)))
    assert all(r["avg_k"] == 1 for r in top1.routing_report())


def _kl_to(teacher, student, ids: torch.Tensor) -> float:
    with torch.no_grad():
        t = torch.log_softmax(teacher(ids).logits, -1)
        s = torch.log_softmax(student(ids).logits, -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


@pytest.fixture(scope="module")
def heal_file(tmp_path_factory) -> Path:
    """The calibration text's paragraphs as JSONL documents (distillation splits by document)."""
    paras = [p.strip() for p in corpus_text()[:40_000].split("\n\n") if len(p.strip()) > 40]
    path = tmp_path_factory.mktemp("heal") / "heal.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in paras), encoding="utf-8")
    return path


def test_healing_by_distillation_trains_only_the_ffns_and_closes_the_gap(capsys, dense_checkpoint, calib_file,
                                                                         heal_file, tmp_path):
    """`distill train` with the dense original as teacher and everything but the FFNs frozen:
    attention, norms and embedding stay bit-identical, and the converted model moves toward the
    dense one on text it did not train on."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model

    moe, healed = tmp_path / "moe", tmp_path / "heal"
    assert main(["moefy", str(dense_checkpoint), "--out", str(moe), "--experts", "4", "--router", "topk",
                 "--top-k", "1", "--calib", str(calib_file), *SMALL]) == 0
    rc = main(["distill", "train", f"--student={moe}", f"--teachers.general={dense_checkpoint}",
               f"--data.sources=[general={heal_file}]", "--kd.ce_weight=0", f"--out_dir={healed}",
               "--freeze=[embed,norm,'*.attn.*','*_norm.*']", "--train.steps=40", "--train.batch_size=8",
               "--train.seq_len=64", "--train.lr=3e-3", "--train.warmup_steps=2", "--train.eval_every=40",
               "--train.eval_batches=1", "--train.plots=false", "--eval_windows=1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err

    dense, before, after = load_model(dense_checkpoint), load_model(moe), load_model(healed / "checkpoint")
    trained = dict(after.named_parameters())
    for name, v in before.named_parameters():
        frozen = ".ffn." not in name
        assert torch.equal(v, trained[name]) == frozen, name
    ids = torch.tensor(Tokenizer.load(dense_checkpoint).encode(corpus_text()[-4000:])[:256]).view(4, 64)
    kl_before, kl_after = _kl_to(dense, before, ids), _kl_to(dense, after, ids)
    assert kl_after < 0.8 * kl_before, (kl_before, kl_after)
    assert after.cfg.expert_weights == "unit"  # still a converted model: `moefy` can re-target it


def test_freeze_patterns_are_checked_by_name(capsys, dense_checkpoint, heal_file, tmp_path):
    rc = main(["distill", "train", f"--student={dense_checkpoint}", f"--teachers.general={dense_checkpoint}",
               f"--data.sources=[general={heal_file}]", f"--out_dir={tmp_path / 'x'}", "--freeze=['*.nope.*']",
               "--train.steps=1", "--train.seq_len=64", "--quiet"])
    assert rc == 2 and "freeze: no parameter name starts with or matches '*.nope.*'" in capsys.readouterr().err


def test_real_quickstart_converts_compares_and_reuses(capsys, dense_checkpoint, tmp_path):
    """`lightseek quickstart --model CKPT`: the conversion, the dense-vs-MoE table and an answer
    from each, a summary file; a second run reuses the conversion."""
    out = tmp_path / "qs"
    args = ["quickstart", "--model", str(dense_checkpoint), "--target-k", "8", "--out", str(out)]
    assert main(args) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "moefy: 16 experts per FFN" in printed and "dense:" in printed and "moe:" in printed
    assert "[bold]" not in printed  # styles render; the answers themselves print as written
    summary = json.loads((out / "quickstart.json").read_text())
    dense, moe = summary["rows"]["dense"], summary["rows"]["moe"]
    assert moe["active_params"] < dense["active_params"] == dense["total_params"] <= moe["total_params"]  # + routers
    assert dense["avg_k"] is None and 6 <= moe["avg_k"] <= 10  # calibrated to 8 on other text
    assert summary["eval_tokens"] > 1000 and all(r["ppl"] > 1 and r["decode_tok_s"] > 0 for r in (dense, moe))
    assert (out / "moe_k8" / "config.json").is_file()

    assert main(args) == 0
    assert "already converted" in " ".join(capsys.readouterr().out.split())
    assert main(["quickstart", "--preset=debug"]) == 2  # overrides belong to --from-scratch
    assert "--from-scratch" in capsys.readouterr().err
