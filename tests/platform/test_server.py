"""The server with the platform (`build_app(..., gate)`): keys, access, exact billing for every
way a request can end, budgets under 64 concurrent requests, rate limits, the admin API, and
the usage page in a real headless Chromium."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import sqlalchemy as sa

openai = pytest.importorskip("openai", reason="the API tests need the `openai` client (pip install -e .[test])")
uvicorn = pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e .[serve])")

from lightseek.data.chat import encode_chat
from lightseek.data.tokenizer import Tokenizer
from lightseek.model.checkpoint import load_model
from lightseek.platform.gate import Gate
from lightseek.platform.money import cost
from lightseek.platform.tables import api_keys, ledger
from lightseek.serve.app import EngineHost, build_app
from lightseek.serve.engine import Engine


def call(url: str, body: dict | None = None, key: str | None = None, method: str | None = None):
    """(status, headers, parsed body) without raising on 4xx."""
    headers = {"content-type": "application/json"} if body is not None else {}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw, status, h = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, h = e.read(), e.code, dict(e.headers)
    try:
        return status, h, json.loads(raw)
    except ValueError:
        return status, h, raw.decode()


@pytest.fixture(scope="module")
def served(debug_checkpoint, strong_adapter, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("platform")
    gate = Gate(str(tmp / "platform.db"), secret="module-secret", progress_every=0.2)
    acc = gate.accounts
    acc.create_org("ops", "enterprise")
    admin_key, _ = acc.create_key("ops", "admin", admin=True)
    acc.create_org("acme", "enterprise")
    acc.create_org("author")
    acc.publish_adapter("shakes", "author", 7000)
    model = load_model(debug_checkpoint)
    tok = Tokenizer.load(debug_checkpoint / "tokenizer.json")
    strong_adapter(model, "shakes")
    host = EngineHost(Engine(model, tok, max_slots=4, max_waiting=80, prefill_chunk=16),
                      usage_log=tmp / "usage.jsonl", on_end=gate.ended)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_app(host, "debug", ["shakes"], gate, protect_metrics=False),
                                        host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "gate": gate, "tok": tok, "admin": admin_key,
           "usage": tmp / "usage.jsonl"}
    srv.should_exit = True
    thread.join(timeout=5)
    host.close()
    gate.close()


def entries(gate, request_id: str):
    with gate.engine.connect() as c:
        return {r.kind: r for r in c.execute(sa.select(ledger).where(ledger.c.request_id == request_id))}


def usage_log(path, request_id: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["id"] == request_id]


def test_keys_are_required_checked_and_never_shown(served, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every log record of the server while it serves this key
    url, acc = served["url"], served["gate"].accounts
    key, _ = acc.create_key("acme", "only-base", adapters=[])
    assert call(f"{url}/health")[0] == 200
    status, _, body = call(f"{url}/v1/models")
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    assert call(f"{url}/v1/models", key="ls-not-a-key")[2]["error"]["code"] == "invalid_api_key"
    assert [m["id"] for m in call(f"{url}/v1/models", key=key)[2]["data"]] == ["debug"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="may not use the adapter"):
        client.completions.create(model="debug:shakes", prompt="To be", max_tokens=4)
    client.completions.create(model="debug", prompt="To be", max_tokens=4)
    metrics = call(f"{url}/metrics")[2]
    assert "lightseek_requests_total" in metrics and key not in metrics and key[3:] not in metrics
    acc.revoke_key(key[:11])
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.completions.create(model="debug", prompt="To be", max_tokens=4)
    assert caplog.records and not any(key[3:] in r.getMessage() for r in caplog.records)


def test_metrics_can_be_put_behind_an_admin_key(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from lightseek.serve.app import PendingHost

    gate = Gate(str(tmp_path / "p.db"), secret="s")
    try:
        gate.accounts.create_org("ops")
        admin, _ = gate.accounts.create_key("ops", admin=True)
        user, _ = gate.accounts.create_key("ops")
        client = TestClient(build_app(PendingHost(), "debug", [], gate, protect_metrics=True))
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"authorization": f"Bearer {user}"}).status_code == 403
        # an admin passes (and hears that the model is still loading)
        assert client.get("/metrics", headers={"authorization": f"Bearer {admin}"}).status_code == 503
        assert client.get("/health").status_code == 503 and client.get("/openapi.json").status_code == 200
    finally:
        gate.close()


def test_billed_tokens_equal_a_recount_however_a_request_ends(served) -> None:
    url, gate, tok = served["url"], served["gate"], served["tok"]
    key, _ = gate.accounts.create_key("acme", "billing")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    msgs = [{"role": "user", "content": "Speak, my lord."}]
    chat_prompt = len(encode_chat(tok, msgs, add_generation_prompt=True)[0])
    cases = []
    # the completion tokens counted independently of usage: one logprob entry per generated token
    r = client.completions.create(model="debug", prompt="To be, or not", max_tokens=9, temperature=0, logprobs=0)
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
    cases.append((r.id, len(tok.encode("To be, or not")), r.usage.completion_tokens, "finished"))
    r = client.chat.completions.create(model="debug:shakes", messages=msgs, max_tokens=7, n=3, temperature=1, seed=1,
                                       logprobs=True)
    assert sum(len(c.logprobs.content) for c in r.choices) == r.usage.completion_tokens
    cases.append((r.id, chat_prompt, r.usage.completion_tokens, "finished"))
    chunks = list(client.chat.completions.create(model="debug", messages=msgs, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}, temperature=0))
    cases.append((chunks[0].id, chat_prompt, chunks[-1].usage.completion_tokens, "finished"))
    first = client.completions.create(model="debug", prompt="To be", max_tokens=12, temperature=0)
    stop = next(ch for ch in first.choices[0].text[3:] if not ch.isspace())  # the model will write it
    r = client.completions.create(model="debug", prompt="To be", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < first.usage.completion_tokens
    cases.append((r.id, len(tok.encode("To be")), r.usage.completion_tokens, "finished"))
    # several prompts in one request: each billed once, however many choices it has
    texts = ["To be, or not", "My lord"]
    r = client.completions.create(model="debug", prompt=texts, n=2, max_tokens=5, temperature=0, logprobs=0)
    assert len(r.choices) == 4 and sum(len(c.logprobs.tokens) for c in r.choices) == r.usage.completion_tokens
    cases.append((r.id, sum(len(tok.encode(t)) for t in texts), r.usage.completion_tokens, "finished"))
    with pytest.raises(openai.BadRequestError):  # refused before it runs: never billed
        client.completions.create(model="debug", prompt="x " * 5000, max_tokens=4)
    # a client that goes away mid-stream: billed for what the engine generated until it stopped
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(
        {"model": "debug", "prompt": "Once", "max_tokens": 200, "stream": True, "ignore_eos": True}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
    resp = urllib.request.urlopen(req, timeout=30)
    line = resp.readline()
    while not line.startswith(b"data: {"):
        line = resp.readline()
    gone = json.loads(line[6:])["id"]
    resp.close()
    assert gate.wait_idle(10)
    time.sleep(0.5)
    assert gate.wait_idle(10)
    logged = usage_log(served["usage"], gone)
    assert logged and logged[0]["finish_reason"] == "cancelled" and logged[0]["completion_tokens"] < 200
    cases.append((gone, len(tok.encode("Once")), logged[0]["completion_tokens"], "cancelled"))
    for rid, prompt, completion, outcome in cases:
        e = entries(gate, rid)["usage"]
        assert (e.prompt_tokens, e.completion_tokens, e.outcome) == (prompt, completion, outcome), rid
        assert e.amount_micros == cost(prompt, 2000) + cost(completion, 2000)
        assert sum(r["completion_tokens"] for r in usage_log(served["usage"], rid)) == completion
    shakes = entries(gate, cases[1][0])
    shares = shakes["author_credit"].amount_micros + shakes["platform_share"].amount_micros
    assert shares == shakes["usage"].amount_micros > 0
    assert gate.ledger.audit() == []


def test_64_concurrent_requests_on_a_key_with_a_budget_for_10(served) -> None:
    url, gate = served["url"], served["gate"]
    prompt = "To be, or not"
    worst = cost(len(served["tok"].encode(prompt)) + 8, 2000)
    key, kid = gate.accounts.create_key("acme", "budget", budget_micros=10 * worst)
    results: list[tuple[int, dict]] = []
    barrier = threading.Barrier(64)

    def one():
        barrier.wait()
        status, _, body = call(f"{url}/v1/completions", {"model": "debug", "prompt": prompt, "max_tokens": 8}, key)
        results.append((status, body))
    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.wait_idle(10)
    ok = [b for s, b in results if s == 200]
    refused = [b for s, b in results if s == 429]
    # each request reserves its worst case (prompt + max_tokens); one that stops early pays less and
    # returns the rest, so an 11th may fit after it: what must hold is that spending stays in budget,
    # and no request costs less than its prompt
    least = cost(len(served["tok"].encode(prompt)), 2000)
    assert len(ok) + len(refused) == 64 and 1 <= len(ok) <= 10 * worst // least and refused
    assert all(b["error"]["code"] == "insufficient_quota" for b in refused)
    with gate.engine.connect() as c:
        spent = c.execute(sa.select(api_keys.c.spent_micros).where(api_keys.c.id == kid)).scalar_one()
    assert spent <= 10 * worst and spent == sum(entries(gate, b["id"])["usage"].amount_micros for b in ok)
    assert gate.ledger.audit() == []


def test_rate_limits_answer_429_with_retry_after_and_openai_headers(served) -> None:
    url, gate = served["url"], served["gate"]
    key, _ = gate.accounts.create_key("acme", "slow", rpm=3)
    body = {"model": "debug", "prompt": "To be", "max_tokens": 2}
    statuses = [call(f"{url}/v1/completions", body, key) for _ in range(5)]
    assert [s for s, _, _ in statuses] == [200, 200, 200, 429, 429]
    assert statuses[0][1]["x-ratelimit-limit-requests"] == "3"
    assert statuses[2][1]["x-ratelimit-remaining-requests"] == "0"
    _, headers, err = statuses[3]
    assert err["error"]["code"] == "rate_limit_exceeded" and int(headers["retry-after"]) >= 1
    assert "x-ratelimit-reset-requests" in headers


def test_admin_api_needs_an_admin_key_and_the_invoice_equals_the_ledger(served) -> None:
    url, gate = served["url"], served["gate"]
    user_key, _ = gate.accounts.create_key("acme", "user")
    assert call(f"{url}/admin/orgs", {"name": "x"}, user_key)[0] == 403
    assert call(f"{url}/admin/orgs", {"name": "x"})[0] == 401
    admin = served["admin"]
    status, _, org = call(f"{url}/admin/orgs", {"name": "newco", "plan": "pro"}, admin)
    assert status == 200
    assert call(f"{url}/admin/orgs", {"name": "newco"}, admin)[0] == 400
    assert call(f"{url}/admin/orgs/nobody/keys", {"name": "k"}, admin)[0] == 404
    status, _, made = call(f"{url}/admin/orgs/newco/keys", {"name": "k", "budget": "0.5"}, admin)
    assert status == 200 and made["key"].startswith("ls-")
    assert call(f"{url}/admin/orgs/newco/keys", {"name": "k", "budget": "lots"}, admin)[0] == 400
    listed = call(f"{url}/admin/orgs/newco/keys", key=admin)[2]["data"]
    assert listed[0]["budget_micros"] == 500_000 and "key_hash" not in listed[0]
    assert call(f"{url}/v1/completions", {"model": "debug", "prompt": "Hi", "max_tokens": 3}, made["key"])[0] == 200
    assert gate.wait_idle(10)
    month = time.strftime("%Y-%m", time.gmtime())
    inv = call(f"{url}/admin/orgs/acme/invoice?month={month}", key=admin)[2]
    with gate.engine.connect() as c:
        total = c.execute(sa.select(sa.func.sum(ledger.c.amount_micros)).where(
            ledger.c.org_id == gate.accounts.org_id("acme"), ledger.c.period == month,
            ledger.c.kind.in_(["usage", "subscription_fee"]))).scalar_one()
    assert inv["total_micros"] == total > 0
    assert call(f"{url}/admin/orgs/acme/invoice?month=2026-13", key=admin)[0] == 400
    assert call(f"{url}/admin/audit", key=admin)[2]["problems"] == []
    assert call(f"{url}/admin/keys/{made['prefix']}", key=admin, method="DELETE")[0] == 200


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_usage_page_in_a_real_browser(served) -> None:
    pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e .[test])")
    from browser_helpers import click_and_wait, headless_chromium
    from selenium.webdriver.common.by import By

    url, gate = served["url"], served["gate"]
    key, _ = gate.accounts.create_key("author", "author-key")
    buyer, _ = gate.accounts.create_key("acme", "buyer")
    for _ in range(2):  # spend on the author's adapter
        call(f"{url}/v1/completions", {"model": "debug:shakes", "prompt": "To be", "max_tokens": 5}, buyer)
    assert gate.wait_idle(10)
    driver = headless_chromium()

    def click(by, what):  # and wait for the page it leads to
        click_and_wait(driver, by, what)

    try:
        driver.get(f"{url}/usage")
        assert "/usage/login" in driver.current_url  # no session: sign in first
        driver.find_element(By.ID, "key").send_keys("ls-wrong")
        click(By.ID, "signin")
        assert "not valid" in driver.page_source
        driver.find_element(By.ID, "key").send_keys(key)
        click(By.ID, "signin")
        assert driver.find_element(By.TAG_NAME, "h1").text.startswith("author: usage")
        # the author's adapter earned from the other tests' requests with debug:shakes
        earned = driver.find_elements(By.CSS_SELECTOR, "#earnings tr td")
        assert earned and earned[0].text == "shakes"
        with gate.engine.connect() as c:
            credit = c.execute(sa.select(sa.func.sum(ledger.c.amount_micros)).where(
                ledger.c.kind == "author_credit")).scalar_one()
        assert earned[2].text == f"{credit // 10**6}.{credit % 10**6:06d}"
        click(By.XPATH, "//button[text()='Sign out']")
        driver.get(f"{url}/usage")
        assert "/usage/login" in driver.current_url
        driver.find_element(By.ID, "key").send_keys(buyer)
        click(By.ID, "signin")
        models = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#models tr td:first-child")]
        adapters = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#adapters tr td:first-child")]
        assert models == ["debug"] and "shakes" in adapters
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
        days = driver.find_elements(By.CSS_SELECTOR, "#days tr td:first-child")
        assert len(bars) == len(days) >= 1 and float(bars[-1].get_attribute("height")) > 0
        with gate.engine.connect() as c:
            spent = c.execute(sa.select(sa.func.sum(ledger.c.amount_micros)).where(
                ledger.c.kind == "usage", ledger.c.org_id == gate.accounts.org_id("acme"))).scalar_one()
        assert driver.find_element(By.ID, "total").text == f"{spent // 10**6}.{spent % 10**6:06d}"
    finally:
        driver.quit()


def test_a_prompt_is_billed_only_if_it_ran() -> None:
    """Of a request of several prompts whose client left early, the prompts no choice started
    (still queued) are not billed; a request served outside the engine bills its prompt."""
    from types import SimpleNamespace

    from lightseek.platform.gate import _Open, _prompt_billed

    reqs = [SimpleNamespace(meta={"choice": c, "prompt": c // 2}, prompt_ids=[0] * (5 if c < 2 else 7))
            for c in range(4)]
    o = _Open(SimpleNamespace(prompt_tokens=12), [], 4, reqs)
    o.ended = {0: (3, "cancelled", True), 1: (0, "cancelled", False), 2: (0, "cancelled", False),
               3: (0, "cancelled", False)}
    assert _prompt_billed(o) == 5
    o.ended[3] = (1, "cancelled", True)
    assert _prompt_billed(o) == 12
    o.ended = {c: (0, "cancelled", False) for c in range(4)}
    assert _prompt_billed(o) == 0
    assert _prompt_billed(_Open(SimpleNamespace(prompt_tokens=9), [], 1, [], {0: (0, "stop", True)})) == 9
