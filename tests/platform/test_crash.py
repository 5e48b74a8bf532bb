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


def test_two_server_processes_on_postgresql_never_spend_past_a_budget(debug_checkpoint, request, secret) -> None:
    """64 requests at once, split between two `lightseek serve` processes on one PostgreSQL
    database, on a key whose budget covers 10 of them."""
    from tests.platform.databases import _fresh_pg_database
    from tests.platform.test_server import call

    url_db, drop = _fresh_pg_database(request.getfixturevalue("pg_server"))
    procs = []
    try:
        engine, acc, led = open_platform(url_db, secret)
        acc.create_org("acme", "enterprise")
        prompt = "To be, or not"
        worst = 2 * (len(Tokenizer.load(debug_checkpoint / "tokenizer.json").encode(prompt)) + 8)
        key, kid = acc.create_key("acme", budget_micros=10 * worst)
        ports = [free_port(), free_port()]
        procs = [serve(debug_checkpoint, p, "--platform", url_db, "--name", "debug", "--max-waiting", "64")
                 for p in ports]
        for proc, p in zip(procs, ports):
            assert health_statuses(proc, f"http://127.0.0.1:{p}", 200, 60)[-1] == 200
        results: list[int] = []
        barrier = threading.Barrier(64)

        def one(i: int):
            barrier.wait()
            status, _, body = call(f"http://127.0.0.1:{ports[i % 2]}/v1/completions",
                                   {"model": "debug", "prompt": prompt, "max_tokens": 8}, key)
            results.append(status)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.5)  # the servers' ledger threads settle after answering
        assert sorted(set(results)) in ([200, 429], [200]) and 1 <= results.count(200) <= 10
        with engine.connect() as c:
            spent = c.execute(sa.text("SELECT spent_micros FROM api_keys WHERE id = :k"), {"k": kid}).scalar_one()
            billed = c.execute(sa.select(sa.func.count()).where(ledger.c.kind == "usage")).scalar_one()
        assert spent <= 10 * worst and billed == results.count(200)
        assert led.audit() == []
        engine.dispose()
    finally:
        for proc in procs:
            stop(proc)
        drop()
