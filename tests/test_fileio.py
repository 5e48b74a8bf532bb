"""Folder swaps survive a kill at any step: a complete checkpoint always loads afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightseek.errors import CheckpointError
from lightseek.fileio import recover_dir, write_dir_atomic
from lightseek.model.checkpoint import load_model, save_checkpoint
from lightseek.model.config import preset
from lightseek.model.transformer import Transformer

# A writer that swaps ``src``'s files into ``dest`` with write_dir_atomic and is killed (os._exit,
# no clean-up of any kind) just before its ``kill_at``-th file-system step; it prints how many
# steps it took when it is not killed.
WRITER = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    from lightseek import fileio

    src, dest, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    steps = 0

    def step(fn):
        def wrapped(*a, **k):
            global steps
            if steps == kill_at:
                os._exit(137)
            steps += 1
            return fn(*a, **k)
        return wrapped

    os.replace, os.fsync, shutil.rmtree, shutil.copyfile = (
        step(os.replace), step(os.fsync), step(shutil.rmtree), step(shutil.copyfile))

    def fill(tmp):
        for f in sorted(src.iterdir()):
            shutil.copyfile(f, tmp / f.name)

    fileio.write_dir_atomic(dest, fill)
    print(steps)
""")


def _model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset("debug"))


def _same(a: Transformer, b: Transformer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def _swap(src: Path, dest: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(src), str(dest), str(kill_at)],
                          capture_output=True, text=True, timeout=60)


def test_a_save_killed_at_any_step_leaves_a_complete_checkpoint(tmp_path):
    old, new = _model(0), _model(1)
    v1, v2 = save_checkpoint(tmp_path / "v1", old), save_checkpoint(tmp_path / "v2", new)
    shutil.copytree(v1, tmp_path / "probe")
    done = _swap(v2, tmp_path / "probe", 10**9)  # unkilled: count the steps of one swap
    assert done.returncode == 0, done.stderr
    n_steps = int(done.stdout)
    assert n_steps >= 6  # copies, fsyncs, three renames, the removal

    outcomes = []
    for kill_at in range(n_steps + 1):
        run = tmp_path / f"run{kill_at}"
        shutil.copytree(v1, run / "checkpoint")
        proc = _swap(v2, run / "checkpoint", kill_at)
        assert proc.returncode == (137 if kill_at < n_steps else 0), proc.stderr
        model = load_model(run)  # restores an interrupted swap when it has to
        assert _same(model, old) or _same(model, new), f"killed before step {kill_at}: neither version"
        outcomes.append("new" if _same(model, new) else "old")
        leftovers = sorted(p.name for p in run.iterdir() if p.name != "checkpoint")
        # the next save clears whatever the killed one left, and resume-style loading still works
        save_checkpoint(run / "checkpoint", new)
        assert _same(load_model(run), new)
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint"], leftovers
    # killed early the old version survives, killed late the new one; never a mixture
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=lambda o: o == "new")


def test_recovery_prefers_the_new_copy_and_trusts_no_partial_one(tmp_path, capsys):
    target = tmp_path / "ckpt"
    # killed between the renames: the new copy (complete) and the previous one (complete)
    (tmp_path / ".ckpt.new-abc").mkdir()
    (tmp_path / ".ckpt.new-abc" / "v").write_text("2")
    (tmp_path / ".ckpt.old-abc").mkdir()
    (tmp_path / ".ckpt.old-abc" / "v").write_text("1")
    assert recover_dir(target).name == ".ckpt.new-abc"
    assert (target / "v").read_text() == "2"
    assert "restored the complete copy from .ckpt.new-abc" in capsys.readouterr().err
    assert recover_dir(target) is None  # nothing to do once it is there

    # an older release's swap (temp folder, then the old one moved aside): the old copy returns
    other = tmp_path / "other"
    (tmp_path / ".other.tmp-xyz").mkdir()
    (tmp_path / ".other.old-xyz").mkdir()
    (tmp_path / ".other.old-xyz" / "v").write_text("1")
    assert recover_dir(other).name == ".other.old-xyz"

    # only a temp folder: it may be incomplete, so it is named, not used
    lone = tmp_path / "lone"
    (tmp_path / ".lone.tmp-q1").mkdir()
    with pytest.raises(CheckpointError, match=r"\.lone\.tmp-q1, which may be incomplete"):
        load_model(lone)
    assert not lone.exists()


def test_resume_restores_a_run_checkpoint_left_aside(tmp_path, debug_data):
    """`--resume` finds the checkpoint a killed save left in `.checkpoint.new-*`."""
    from lightseek.train.config import load_run_config
    from lightseek.train.pretrain import pretrain

    args = [f"--data.prepared={debug_data}", "--preset=debug", f"--out_dir={tmp_path}", "--train.batch_size=4",
            "--train.seq_len=32", "--train.eval_every=100", "--train.eval_batches=1", "--train.plots=false",
            "--train.ckpt_every=2", "--train.steps=4"]
    pretrain(load_run_config(None, [*args, "--train.stop_after=2"]), show_progress=False)
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.new-k1")  # killed between the renames
    summary = pretrain(load_run_config(None, args), resume=True, show_progress=False)
    assert summary["steps"] == 4
    meta = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert meta["step"] == 4


def test_write_dir_atomic_error_keeps_the_old_folder(tmp_path):
    target = tmp_path / "d"
    write_dir_atomic(target, lambda tmp: (tmp / "v").write_text("1"))

    def broken(tmp):
        (tmp / "v").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(target, broken)
    assert (target / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_an_output_that_cannot_be_written_is_one_error_before_any_work(tmp_path, debug_checkpoint, capsys):
    """A folder inside a file (what an unwritable place looks like even to root) is refused with
    the path named: by the output check that quant, moefy and shrink run before their work, by
    the folder writer itself, and, for any other command, by the entry point (no traceback)."""
    from cli_helpers import write_instructions

    from lightseek.cli import main
    from lightseek.errors import LightseekError
    from lightseek.fileio import check_new_checkpoint_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(LightseekError, match=f"--out {blocker / 'out'}: cannot write there"):
        check_new_checkpoint_dir(blocker / "out", debug_checkpoint, overwrite=False)
    with pytest.raises(LightseekError, match=f"cannot write {blocker / 'out'}"):
        write_dir_atomic(blocker / "out", lambda tmp: None)
    assert main(["quant", str(debug_checkpoint), "--bits", "8", "--out", str(blocker / "q")]) == 2
    assert "cannot write there" in capsys.readouterr().err
    data = write_instructions(tmp_path / "qa.jsonl")
    rc = main(["lora", "train", "--base", str(debug_checkpoint), "--data", str(data), "--name", "x", "--quiet",
               "--out_dir", str(blocker / "run"), "--train.steps=1", "--train.seq_len=32"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and err.strip().endswith(f"{blocker / 'run'}: Not a directory"), err
    assert blocker.read_text(encoding="utf-8") == "not a folder"
