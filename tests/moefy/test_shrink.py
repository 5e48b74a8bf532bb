"""`lightseek shrink`: students cut from a dense teacher (blocks kept, FFNs narrowed to their most
important neurons) start from the teacher's own weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightseek.cli import main
from lightseek.errors import ConfigError
from lightseek.model.checkpoint import load_model, read_checkpoint_config, save_checkpoint
from lightseek.model.config import preset
from lightseek.model.transformer import Transformer
from lightseek.moefy.shrink import block_influence, drop_layers, narrow_ffn, parse_layers
from tests.conftest import corpus_text


def dense(n_layers: int = 4) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("debug", router_mode="dense", n_layers=n_layers)).eval()


def test_kept_blocks_are_the_teachers_own() -> None:
    teacher = dense(4)
    x = torch.randint(0, teacher.cfg.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(drop_layers(teacher, [0, 1, 2, 3])(x).logits, teacher(x).logits)
        student = drop_layers(teacher, parse_layers("every-other", 4))
    assert student.cfg.n_layers == 2
    for mine, theirs in zip(student.layers, (teacher.layers[0], teacher.layers[2])):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    assert parse_layers("0,-1", 4) == [0, 3]
    for bad in ("0,9", "first", ""):
        with pytest.raises(ConfigError, match="--layers"):
            parse_layers(bad, 4)


@torch.no_grad()
def test_influence_keeps_the_blocks_that_change_the_hidden_state() -> None:
    teacher = dense(4)
    for i in (1, 2):  # blocks 1 and 2 write nothing: they are identities, with no influence
        teacher.layers[i].attn.wo.weight.zero_()
        teacher.layers[i].ffn.w2.weight.zero_()
    x = torch.randint(0, teacher.cfg.vocab_size, (2, 12))
    influence = block_influence(teacher, [x])
    assert influence[1] == pytest.approx(0.0, abs=1e-6) and influence[2] == pytest.approx(0.0, abs=1e-6)
    assert influence[0] > 1e-3 and influence[3] > 1e-3
    keep = parse_layers("influence:2", 4, influence)
    assert keep == [0, 3]
    torch.testing.assert_close(drop_layers(teacher, keep)(x).logits, teacher(x).logits, atol=1e-5, rtol=1e-5)
    for bad in ("influence:0", "influence:5", "influence:x"):
        with pytest.raises(ConfigError, match="influence:N"):
            parse_layers(bad, 4, influence)
    with pytest.raises(ConfigError, match="one influence figure per block"):
        parse_layers("influence:2", 4)


@torch.no_grad()
def test_narrowing_drops_the_neurons_that_contribute_least() -> None:
    teacher = dense(2)
    inter = teacher.cfg.dense_inter_dim
    dead = torch.randperm(inter, generator=torch.Generator().manual_seed(0))[: inter // 2]
    for block in teacher.layers:  # half the neurons write nothing: removing them changes nothing
        block.ffn.w2.weight[:, dead] = 0
    x = torch.randint(0, teacher.cfg.vocab_size, (2, 12))
    student, report = narrow_ffn(teacher, [x], inter // 2)
    assert student.cfg.dense_inter_dim == inter // 2 and student.layers[0].ffn.w1.weight.shape[0] == inter // 2
    torch.testing.assert_close(student(x).logits, teacher(x).logits, atol=1e-5, rtol=1e-5)
    assert all(r["importance_kept"] == pytest.approx(1.0) and r["rel_error"] < 1e-5 for r in report)
    # with every neuron alive, a narrower FFN keeps the most important ones: better than a random choice
    live = dense(2)
    small, report = narrow_ffn(live, [x], inter // 4)
    assert all(r["importance_kept"] > 0.25 for r in report)


def test_shrink_command_writes_a_student_that_loads(debug_data: Path, tmp_path: Path, capsys) -> None:
    teacher = dense(4)
    src = save_checkpoint(tmp_path / "teacher", teacher, tokenizer_file=debug_data / "tokenizer.json")
    calib = tmp_path / "calib.txt"
    calib.write_text(corpus_text()[:20_000], encoding="utf-8")
    out = tmp_path / "student"
    assert main(["shrink", str(src), "--out", str(out), "--layers", "every-other", "--ffn-share", "0.5",
                 "--calib", str(calib)]) == 0
    printed = capsys.readouterr().out
    assert "blocks kept: 0, 2" in printed and "distill train --student=" in printed
    meta = read_checkpoint_config(out)
    assert meta["model"]["n_layers"] == 2 and meta["model"]["dense_inter_dim"] == teacher.cfg.dense_inter_dim // 2
    info = meta["shrink"]
    assert info["layers_kept"] == [0, 2] and len(info["ffn_layers"]) == 2 and info["calib_tokens"] > 0
    assert info["params"]["after"] < info["params"]["before"]
    student = load_model(out)
    x = torch.randint(0, student.cfg.vocab_size, (1, 8))
    assert torch.isfinite(student(x).logits).all()
    assert json.loads((out / "config.json").read_text())["shrink"]["source"]["sha256"]

    assert main(["shrink", str(src), "--out", str(tmp_path / "by_influence"), "--layers", "influence:3",
                 "--calib", str(calib)]) == 0
    meta = read_checkpoint_config(tmp_path / "by_influence")["shrink"]
    assert len(meta["block_influence"]) == 4 and len(meta["layers_kept"]) == 3
    dropped = (set(range(4)) - set(meta["layers_kept"])).pop()
    assert meta["block_influence"][dropped] == min(meta["block_influence"])
    assert "block influence" in capsys.readouterr().out

    assert main(["shrink", str(src), "--out", str(tmp_path / "x")]) == 2  # nothing to cut
    assert "--layers, --ffn-share or both" in capsys.readouterr().err
    assert main(["shrink", str(src), "--out", str(tmp_path / "y"), "--ffn-share", "1.5"]) == 2
    moe = save_checkpoint(tmp_path / "moe", Transformer(preset("debug")), tokenizer_file=debug_data / "tokenizer.json")
    assert main(["shrink", str(moe), "--out", str(tmp_path / "z"), "--layers", "0"]) == 2
    assert "MoE layers" in capsys.readouterr().err
