"""A server killed mid-request (SIGKILL) leaves reservations open; the next server on the same
database settles each of them once, at its recorded progress, and the totals equal the ledger."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import pytest
import sqlalchemy as sa

pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e .[serve])")

from lightseek.data.tokenizer import Tokenizer
from lightseek.platform.tables import ledger, reservations
from tests.platform.test_ledger import open_platform
from tests.serve.test_serve_cli import free_port, health_statuses, serve, stop


def test_a_killed_server_leaves_nothing_unsettled_after_restart(debug_checkpoint, tmp_path, secret) -> None:
    db = tmp_path / "platform.db"
    engine, acc, _ = open_platform(str(db), secret)
    acc.create_org("acme", "enterprise")
    key, _ = acc.create_key("acme")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(debug_checkpoint, port, "--platform", str(db), "--max-slots", "1", "--name", "debug")
    try:
        assert health_statuses(proc, url, 200, 60)[-1] == 200
        first = threading.Event()

        def stream():  # eight long requests: one decodes, the rest wait for the one slot
            req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(
                {"model": "debug", "prompt": "Once upon", "max_tokens": 110, "stream": True,
                 "ignore_eos": True}).encode(), headers={"content-type": "application/json",
                                                        "authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    for line in r:
                        if line.startswith(b"data: {"):
                            first.set()
            except OSError:
                pass  # the server died under it
        threads = [threading.Thread(target=stream, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        assert first.wait(30)
        time.sleep(1.2)  # a progress record or so
        proc.kill()
        proc.wait(10)
    finally:
        stop(proc)
    with engine.connect() as c:
        left_open = c.execute(sa.select(sa.func.count()).where(reservations.c.status == "open")).scalar_one()
    assert left_open >= 1  # the kill caught requests in flight
    # the restart settles them
    proc = serve(debug_checkpoint, port, "--platform", str(db), "--max-slots", "1", "--name", "debug")
    try:
        assert health_statuses(proc, url, 200, 60)[-1] == 200
    finally:
        stop(proc)
    with engine.connect() as c:
        res = c.execute(sa.select(reservations)).all()
        usage = c.execute(sa.select(ledger).where(ledger.c.kind == "usage")).all()
    assert len(res) == 8 and all(r.status == "settled" for r in res)
    assert sorted(e.request_id for e in usage) == sorted(r.request_id for r in res)  # each once
    lost = [e for e in usage if e.outcome == "server_lost"]
    assert len(lost) == left_open
    prompt = len(Tokenizer.load(debug_checkpoint / "tokenizer.json").encode("Once upon"))
    for e in lost:  # a request still waiting is billed nothing; one that ran, its prompt and recorded progress
        assert e.prompt_tokens in (0, prompt) and e.completion_tokens <= 110
        assert e.prompt_tokens == prompt or e.completion_tokens == 0
        assert e.amount_micros == 2 * (e.prompt_tokens + e.completion_tokens)
    assert any(e.prompt_tokens == 0 for e in lost)
    _, _, led = open_platform(str(db), os.environ["LIGHTSEEK_PLATFORM_SECRET"])
    assert led.audit() == []
