"""`lightseek serve` as the user starts it: a real process on a free port, with an adapters folder
made by `lightseek lora train`; and a server on a damaged checkpoint, which must not pretend to
be healthy and must not hang."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="`lightseek serve` needs FastAPI (pip install -e .[serve])")
pytest.importorskip("uvicorn", reason="`lightseek serve` needs uvicorn (pip install -e .[serve])")

from cli_helpers import lora_train, one_torch_thread, write_instructions  # noqa: F401

STARTUP_S = 90  # importing torch and FastAPI on a busy 2-core machine, then loading the model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a JSON POST when ``body`` is given, without raising on
    4xx/5xx."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def serve(checkpoint: Path, port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightseek", "serve", str(checkpoint), "--port", str(port),
                             "--threads", "1", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    """Kill ``proc`` if it still runs; its (stdout, stderr)."""
    if proc.poll() is None:
        proc.kill()
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        return "", ""


def health_statuses(proc: subprocess.Popen, url: str, until_status: int | None, timeout: float) -> list[int]:
    """Poll GET /health every 0.1 s, recording every status answered, until it answers
    ``until_status``, the process exits, or ``timeout`` seconds pass."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status, _ = http(f"{url}/health", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status = None  # not listening yet (or going away)
        if status is not None:
            seen.append(status)
            if status == until_status:
                break
        time.sleep(0.1)
    return seen


@pytest.fixture(scope="module")
def adapters_dir(debug_checkpoint, tmp_path_factory) -> Path:
    """A folder holding one adapter, `med`, trained for 2 steps by `lightseek lora train`."""
    root = tmp_path_factory.mktemp("serve_adapters")
    lora_train(debug_checkpoint, write_instructions(root / "qa.jsonl"), root / "adapters" / "med", "med")
    return root / "adapters"


def test_serve_with_an_adapters_folder(debug_checkpoint, adapters_dir):
    from lightseek.data.chat import encode_chat
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model
    from lightseek.model.kv_cache import SlotCache

    per_slot = SlotCache.bytes_per_token(load_model(debug_checkpoint)) * 64
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(debug_checkpoint, port, "--adapters", str(adapters_dir), "--max-len", "64",
                 "--kv-cache-gb", str(3.5 * per_slot / 2**30))  # room for 3 sequences of 64 tokens
    try:
        seen = health_statuses(proc, url, 200, STARTUP_S)
        if not seen or seen[-1] != 200:
            pytest.fail(f"/health never answered 200 in {STARTUP_S} s (answers {seen}, exit {proc.poll()}): "
                        f"{stop(proc)[1][-2000:]}")
        assert set(seen) <= {200, 503}  # 503 while the model loads, then ready
        base = debug_checkpoint.parent.name  # the default model id: the run folder's name

        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode().splitlines()
        assert "lightseek_slots_free 3" in metrics  # the KV-cache budget set the number of sequences

        status, models = http(f"{url}/v1/models")
        assert status == 200
        assert [m["id"] for m in models["data"]] == [base, f"{base}:med"]

        messages = [{"role": "user", "content": "What is glaucoma?"}]
        status, r = http(f"{url}/v1/chat/completions",
                         {"model": f"{base}:med", "messages": messages, "max_tokens": 4, "temperature": 0})
        assert status == 200, r
        assert r["model"] == f"{base}:med" and len(r["choices"]) == 1
        choice = r["choices"][0]
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("length", "stop")
        prompt_ids = encode_chat(Tokenizer.load(debug_checkpoint), messages, add_generation_prompt=True)[0]
        usage = r["usage"]
        assert usage["prompt_tokens"] == len(prompt_ids)
        assert 1 <= usage["completion_tokens"] <= 4
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        if choice["finish_reason"] == "length":
            assert usage["completion_tokens"] == 4

        status, err = http(f"{url}/v1/chat/completions", {"model": f"{base}:nope", "messages": messages})
        assert status == 404 and err["error"]["code"] == "model_not_found"
        assert proc.poll() is None  # still serving
    finally:
        stop(proc)


def test_serve_on_a_truncated_checkpoint_fails_fast_and_is_never_healthy(debug_checkpoint, tmp_path):
    """cmd_serve listens at once (answering 503) and loads in a thread; a load error stops the
    server and the command exits 2 with one line naming the damaged file."""
    broken = tmp_path / "broken" / "checkpoint"
    shutil.copytree(debug_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    port = free_port()
    proc = serve(broken, port)
    try:
        seen = health_statuses(proc, f"http://127.0.0.1:{port}", 200, STARTUP_S)
        assert 200 not in seen, seen
        assert set(seen) <= {503}, seen
        rc = proc.wait(timeout=30)  # the polling stopped because the process exited, not at the deadline
    finally:
        _, stderr = stop(proc)
    assert rc == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("lightseek serve: error: ") and "model.safetensors" in lines[0], lines[0]
    assert str(broken) in lines[0] or "broken" in lines[0], lines[0]


def test_a_kv_cache_budget_too_small_fails_before_listening(debug_checkpoint):
    """The budget is checked against the checkpoint's config before the server listens or loads
    the weights: one line naming what one sequence needs, and nothing ever answers on the port."""
    from lightseek.model.checkpoint import load_model
    from lightseek.model.kv_cache import SlotCache

    per_slot = SlotCache.bytes_per_token(load_model(debug_checkpoint)) * 64
    port = free_port()
    proc = serve(debug_checkpoint, port, "--max-len", "64", "--kv-cache-gb", str(0.5 * per_slot / 2**30))
    try:
        rc = proc.wait(timeout=60)
    finally:
        _, stderr = stop(proc)
    assert rc == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no sequence of 64 tokens" in lines[0], stderr
    assert "serving" not in stderr
    with pytest.raises(OSError):
        http(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_port_it_cannot_listen_on_is_one_line_before_loading(debug_checkpoint):
    """A port in use, out of range, or a host that is not this machine's: the server binds its
    socket before it loads anything, and says which with one line (exit status 2)."""
    from lightseek.errors import ConfigError
    from lightseek.sockets import bind_server_socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host, p, msg in (("127.0.0.1", port, "Address already in use"), ("127.0.0.1", 70000, "0-65535"),
                             ("127.0.0.1", -1, "0-65535"), ("192.0.2.1", 0, "cannot listen on 192.0.2.1:0"),
                             ("no-such-host.invalid", 0, "cannot listen on no-such-host.invalid:0")):
            with pytest.raises(ConfigError, match=msg):
                bind_server_socket(host, p)
        proc = serve(debug_checkpoint, port)
        try:
            rc = proc.wait(timeout=60)
        finally:
            _, stderr = stop(proc)
    assert rc == 2, stderr
    assert stderr.strip().splitlines() == [f"lightseek serve: error: cannot listen on 127.0.0.1:{port}: "
                                           "Address already in use"]
    with bind_server_socket("127.0.0.1", 0) as sock:  # port 0: the system picks a free one
        assert sock.getsockname()[1] > 0
