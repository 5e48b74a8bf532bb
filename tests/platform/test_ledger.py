"""The ledger on SQLite and PostgreSQL: exact amounts, budgets that concurrent requests cannot
overrun (threads, and two processes on PostgreSQL), included tokens, revenue shares, invoices,
recovery after a crash, and keys never stored in clear."""

from __future__ import annotations

import multiprocessing
import random
import threading

import pytest
import sqlalchemy as sa

from lightseek.db import connect, normalise_url, upgrade
from lightseek.errors import ConfigError
from lightseek.platform import reports
from lightseek.platform.accounts import Accounts, AuthError
from lightseek.platform.ledger import BudgetError, Ledger, open_store
from lightseek.platform.money import cost, dollars, parse_dollars, parse_share, period_of, split_share
from lightseek.platform.tables import ledger, metadata, reservations


def open_platform(url: str, secret: str = "s"):
    engine, acc, led = open_store(url, secret)
    led.register_server()
    return engine, acc, led


def rows(engine, table, *where):
    with engine.connect() as c:
        return c.execute(sa.select(table).where(*where)).all()


# --- money ------------------------------------------------------------------------------------------
def test_money_is_exact_and_shares_never_lose_a_micro_dollar() -> None:
    assert cost(1000, 2000) == 2000 and cost(1, 2000) == 2 and cost(1, 500) == 1 and cost(1, 499) == 0
    assert cost(3, 1500) == 5  # 4.5 rounds half up
    assert parse_dollars("0.002") == 2000 and parse_dollars("20") == 20_000_000 and dollars(2_000_001) == "2.000001"
    for bad in ("0.0000001", "-1", "ten"):
        with pytest.raises(ConfigError):
            parse_dollars(bad)
    assert parse_share("0.7") == 7000 == parse_share("70%")
    rng = random.Random(0)
    for _ in range(10_000):
        amount, bp = rng.randrange(0, 10**9), rng.randrange(0, 10_001)
        author, platform = split_share(amount, bp)
        assert author + platform == amount and 0 <= author <= amount
        assert author == amount * bp // 10_000


def test_migrations_match_the_tables(db_url) -> None:
    """The one Alembic history builds exactly the tables the platform and LabelHub define."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from lightseek.label.tables import metadata as label_metadata

    engine, _, _ = open_platform(db_url)
    with engine.connect() as c:
        diffs = compare_metadata(MigrationContext.configure(c), [metadata, label_metadata])
    assert diffs == []
    assert {r.name for r in rows(engine, sa.table("plans", sa.column("name")))} == {"free", "pro", "enterprise"}


# --- keys -------------------------------------------------------------------------------------------
def test_keys_are_stored_as_keyed_hashes_and_checked(db_url) -> None:
    engine, acc, _ = open_platform(db_url)
    acc.create_org("acme", "pro")
    key, kid = acc.create_key("acme", "ci", models=["debug"])
    expired, _ = acc.create_key("acme", "old", expires_at=1)
    ctx = acc.authenticate(key)
    assert (ctx.key_id, ctx.org, ctx.allowed_models) == (kid, "acme", ("debug",))
    with engine.connect() as c:  # the key appears nowhere in the database
        dump = " ".join(str(v) for t in metadata.sorted_tables for r in c.execute(sa.select(t)) for v in r)
    assert key not in dump and key[11:] not in dump and key[:11] in dump
    for bad, code in ((None, "missing_api_key"), ("ls-nope", "invalid_api_key"), (expired, "expired_api_key")):
        with pytest.raises(AuthError) as e:
            acc.authenticate(bad)
        assert e.value.code == code
    acc.revoke_key(key[:11])
    with pytest.raises(AuthError, match="revoked"):
        acc.authenticate(key)
    with pytest.raises(ConfigError, match="plan 'gold' does not exist"):
        acc.create_org("x", "gold")


# --- reserve and settle -----------------------------------------------------------------------------
def test_settled_usage_is_tokens_times_price_and_never_billed_twice(db_url) -> None:
    engine, acc, led = open_platform(db_url)
    acc.create_org("acme", "enterprise")
    acc.set_price("m", 1500, 4000)             # the model's own price
    acc.set_price("m", 3000, 5000, "legal")    # and an adapter's
    key, _ = acc.create_key("acme")
    ctx = acc.authenticate(key)
    expected = 0
    rng = random.Random(1)
    for i in range(40):
        adapter = rng.choice([None, "legal"])
        p, m = rng.randrange(1, 500), rng.randrange(1, 300)
        c = rng.randrange(0, m + 1)
        t = led.reserve(ctx, f"r{i}", "m", adapter, p, m)
        assert t.worst_micros == (cost(p, 3000) + cost(m, 5000) if adapter else cost(p, 1500) + cost(m, 4000))
        got = led.settle(f"r{i}", p, c, "finished")
        want = cost(p, 3000) + cost(c, 5000) if adapter else cost(p, 1500) + cost(c, 4000)
        assert got == want
        expected += want
        assert led.settle(f"r{i}", p, c, "finished") is None  # idempotent
    usage = rows(engine, ledger, ledger.c.kind == "usage")
    assert len(usage) == 40 and sum(r.amount_micros for r in usage) == expected
    assert led.audit() == []


def test_included_tokens_then_list_price_and_a_free_plan_refuses_past_its_allowance(db_url) -> None:
    engine, acc, led = open_platform(db_url)
    acc.create_org("pro-org", "pro")
    acc.create_org("free-org", "free")
    with engine.begin() as c:  # small allowances, to reach them
        c.execute(sa.text("UPDATE plans SET included_tokens = 1000 WHERE name IN ('pro', 'free')"))
    pro = acc.authenticate(acc.create_key("pro-org")[0])
    led.reserve(pro, "a", "m", None, 600, 100)
    assert led.settle("a", 600, 100, "finished") == 0          # 700 of 1,000 included
    led.reserve(pro, "b", "m", None, 200, 300)
    # 300 left: the prompt's 200 tokens use 200 of them, the completion 100 more; 200 completion tokens pay
    assert led.settle("b", 200, 300, "finished") == cost(200, 2000)
    free = acc.authenticate(acc.create_key("free-org")[0])
    led.reserve(free, "c", "m", None, 500, 400)
    with pytest.raises(BudgetError, match="free plan's 1000 tokens"):
        led.reserve(free, "d", "m", None, 50, 100)  # 900 reserved + 150 > 1,000
    assert led.settle("c", 500, 10, "finished") == 0
    led.reserve(free, "d", "m", None, 50, 100)  # fits once the first settled at 510
    assert led.audit() == []


def test_revenue_share_credits_the_author_and_sums_to_the_charge(db_url) -> None:
    engine, acc, led = open_platform(db_url)
    acc.create_org("buyer", "enterprise")
    acc.create_org("author")
    acc.publish_adapter("medical", "author", parse_share("0.7"))
    acc.set_price("m", 1, 7, "medical")  # prices that round
    ctx = acc.authenticate(acc.create_key("buyer")[0])
    rng = random.Random(2)
    for i in range(50):
        p, c = rng.randrange(1, 3000), rng.randrange(1, 3000)
        led.reserve(ctx, f"r{i}", "m", "medical", p, c)
        led.settle(f"r{i}", p, c, "finished")
    usage = sum(r.amount_micros for r in rows(engine, ledger, ledger.c.kind == "usage"))
    credit = sum(r.amount_micros for r in rows(engine, ledger, ledger.c.kind == "author_credit"))
    share = sum(r.amount_micros for r in rows(engine, ledger, ledger.c.kind == "platform_share"))
    assert credit + share == usage and credit > 0
    month = period_of()
    pay = reports.payouts(engine, "author", month)
    assert pay["total_micros"] == credit and pay["adapters"][0]["billed_micros"] == usage
    assert pay["adapters"][0]["author_micros"] + pay["adapters"][0]["platform_micros"] == usage


def test_invoice_total_equals_the_ledger_and_fees_are_charged_once(db_url, tmp_path) -> None:
    engine, acc, led = open_platform(db_url)
    acc.create_org("acme", "pro")
    ctx = acc.authenticate(acc.create_key("acme")[0])
    with engine.begin() as c:
        c.execute(sa.text("UPDATE plans SET included_tokens = 100 WHERE name = 'pro'"))
    for i in range(5):
        led.reserve(ctx, f"r{i}", "m", None, 40, 20)
        led.settle(f"r{i}", 40, 15, "finished")
    month = period_of()
    js, html = reports.write_invoice(engine, "acme", month, tmp_path)
    inv = reports.invoice(engine, "acme", month)  # a second time: the fee is not charged again
    entries = rows(engine, ledger, ledger.c.org_id == ctx.org_id, ledger.c.period == month,
                   ledger.c.kind.in_(["usage", "subscription_fee"]))
    assert inv["total_micros"] == sum(r.amount_micros for r in entries)
    assert inv["subscription_fee_micros"] == 20_000_000
    assert sum(1 for r in entries if r.kind == "subscription_fee") == 1
    assert inv["usage"][0]["included_tokens"] == 100 and inv["usage"][0]["prompt_tokens"] == 200
    assert inv["total"] in html.read_text() and js.exists()


# --- concurrency ------------------------------------------------------------------------------------
def _hammer(url: str, key: str, secret: str, n: int, tag: str, results) -> None:
    """``n`` threads, each reserving 10 prompt + 90 completion tokens on ``key`` and settling it."""
    engine, acc, led = open_platform(url, secret)
    ctx = acc.authenticate(key)
    barrier = threading.Barrier(n)

    def one(i: int):
        barrier.wait()
        try:
            led.reserve(ctx, f"{tag}{i}", "m", None, 10, 90)
        except BudgetError:
            results.append("refused")
            return
        results.append("ran")
        led.settle(f"{tag}{i}", 10, 90, "finished")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()


def _hammer_process(url, key, secret, n, tag, q) -> None:
    out: list[str] = []
    _hammer(url, key, secret, n, tag, out)
    q.put(out)


def _budget_key(url: str):
    engine, acc, led = open_platform(url, "k")
    acc.create_org("acme", "enterprise")
    key, kid = acc.create_key("acme", budget_micros=10 * cost(100, 2000))  # room for exactly 10 requests
    return engine, led, key, kid


def test_64_concurrent_requests_never_spend_past_a_budget_for_10(db_url) -> None:
    engine, led, key, kid = _budget_key(db_url)
    results: list[str] = []
    _hammer(db_url, key, "k", 64, "t", results)
    spent = rows(engine, sa.table("api_keys", sa.column("id"), sa.column("spent_micros")))[0].spent_micros
    assert spent <= 10 * cost(100, 2000) and results.count("ran") * cost(100, 2000) == spent
    assert results.count("ran") >= 1 and led.audit() == []


def test_two_processes_on_postgresql_never_spend_past_a_budget(request) -> None:
    from tests.platform.databases import _fresh_pg_database

    url, drop = _fresh_pg_database(request.getfixturevalue("pg_server"))
    try:
        engine, led, key, kid = _budget_key(url)
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        procs = [ctx.Process(target=_hammer_process, args=(url, key, "k", 32, f"p{i}-", q)) for i in range(2)]
        for p in procs:
            p.start()
        results = q.get(timeout=120) + q.get(timeout=120)
        for p in procs:
            p.join(timeout=30)
        spent = rows(engine, sa.table("api_keys", sa.column("spent_micros")))[0].spent_micros
        assert len(results) == 64 and spent <= 10 * cost(100, 2000)
        assert results.count("ran") * cost(100, 2000) == spent and led.audit() == []
        engine.dispose()
    finally:
        drop()


# --- recovery ---------------------------------------------------------------------------------------
def test_a_dead_servers_reservations_are_settled_once_at_their_progress(db_url) -> None:
    engine, acc, dead = open_platform(db_url)
    acc.create_org("acme", "enterprise")
    ctx = acc.authenticate(acc.create_key("acme")[0])
    dead.reserve(ctx, "r1", "m", None, 30, 100)
    dead.reserve(ctx, "r2", "m", None, 30, 100)  # still waiting when the server died
    dead.heartbeat({"r1": (True, 17)})
    with engine.begin() as c:  # the server stopped long ago
        c.execute(sa.text("UPDATE servers SET heartbeat_at = 0"))
    fresh = Ledger(engine)
    fresh.register_server()
    assert sorted(fresh.recover()) == ["r1", "r2"] and fresh.recover() == []
    (entry,) = rows(engine, ledger, ledger.c.request_id == "r1")
    assert (entry.prompt_tokens, entry.completion_tokens, entry.outcome) == (30, 17, "server_lost")
    assert entry.amount_micros == cost(47, 2000)
    (waiting,) = rows(engine, ledger, ledger.c.request_id == "r2")
    assert (waiting.prompt_tokens, waiting.completion_tokens, waiting.amount_micros) == (0, 0, 0)
    assert rows(engine, reservations, reservations.c.status == "open") == [] and fresh.audit() == []


def test_an_existing_database_upgrades_and_keeps_its_keys(db_url) -> None:
    from lightseek.db import current_revision

    engine = connect(normalise_url(db_url))
    upgrade(engine, "0001")  # a database made before keys could name a content policy
    assert current_revision(engine) == "0001"
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO orgs (name, plan, created_at) VALUES ('old', 'pro', 0)"))
    acc = Accounts(engine, b"s")
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO api_keys (org_id, name, prefix, key_hash, admin, created_at, spent_micros, "
                          "reserved_micros) VALUES (1, 'k', 'ls-abcdefgh', :h, false, 0, 5, 0)"),
                  {"h": acc.hash_key("ls-old-key")})
    upgrade(engine)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from lightseek.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert current_revision(engine) == ScriptDirectory.from_config(cfg).get_current_head() != "0001"
    ctx = acc.authenticate("ls-old-key")
    assert (ctx.org, ctx.safety_policy) == ("old", None)


def test_a_price_changed_while_a_request_runs_bills_the_reserved_price(db_url) -> None:
    engine, acc, led = open_platform(db_url)
    acc.create_org("acme", "enterprise")
    key, kid = acc.create_key("acme", budget_micros=cost(100, 2000))
    ctx = acc.authenticate(key)
    led.reserve(ctx, "r1", "m", None, 50, 50)     # the whole budget, at 0.002 $ / 1k
    acc.set_price("m", 9000, 9000)                # raised while it runs
    assert led.settle("r1", 50, 50, "finished") == cost(100, 2000)
    assert led.audit() == []


def test_months_are_checked_and_fees_charged_once_per_month(db_url) -> None:
    engine, acc, led = open_platform(db_url)
    acc.create_org("acme", "pro")
    month = period_of()
    assert led.renew(month) == 1 and led.renew(month) == 0
    for bad in (month.replace("-", "-0") if month[5] != "0" else month[:5] + month[6:], "2026-13", "26-01", "x"):
        with pytest.raises(ConfigError, match="not a month"):
            led.renew(bad)
    with pytest.raises(ConfigError, match="has not begun"):
        reports.invoice(engine, "acme", "2999-01")
