"""The statements on every request's path (key check, reserve, settle), written once as SQL.

Building SQLAlchemy expressions costs more CPU than SQLite takes to run them (measured: 5 ms of
CPU per request through Core expressions, against well under 1 ms here), and the server has one
core to give. Each statement is valid on SQLite and PostgreSQL alike; row locks (FOR UPDATE) are
added on PostgreSQL only, since SQLite's transactions take the whole database's write lock at
BEGIN IMMEDIATE.
"""

from __future__ import annotations

from functools import lru_cache

import sqlalchemy as sa

_KEY_CONTEXT = """
SELECT k.id, k.org_id, k.prefix, k.admin, k.revoked_at, k.expires_at, k.allowed_models, k.allowed_adapters,
       k.safety_policy,
       k.rpm, k.tpm, k.concurrency, o.name AS org_name, o.plan, o.spend_limit_micros,
       o.rpm AS org_rpm, o.tpm AS org_tpm, o.concurrency AS org_conc,
       p.rpm AS plan_rpm, p.tpm AS plan_tpm, p.concurrency AS plan_conc, p.included_tokens, p.overage
FROM api_keys k JOIN orgs o ON o.id = k.org_id JOIN plans p ON p.name = o.plan
WHERE {where}"""
KEY_BY_HASH = sa.text(_KEY_CONTEXT.format(where="k.key_hash = :h"))
KEY_BY_ID = sa.text(_KEY_CONTEXT.format(where="k.id = :id"))

PRICES = sa.text("""
SELECT model, adapter, prompt_micros_per_1k, completion_micros_per_1k FROM prices
WHERE model IN (:model, '*') AND adapter IN (:adapter, '')""")

RESERVE_KEY = sa.text("""
UPDATE api_keys SET reserved_micros = reserved_micros + :worst
WHERE id = :key_id AND (budget_micros IS NULL OR spent_micros + reserved_micros + :worst <= budget_micros)""")

PERIOD_ROW = sa.text("""
INSERT INTO period_usage (org_id, period, tokens, reserved_tokens, spent_micros, reserved_micros)
VALUES (:org_id, :period, 0, 0, 0, 0) ON CONFLICT (org_id, period) DO NOTHING""")


@lru_cache(maxsize=None)
def reserve_period(spend_limit: bool, allowance: bool) -> sa.TextClause:
    """The organisation's side of a reservation, with the conditions its plan and limit need."""
    conds = ["org_id = :org_id", "period = :period"]
    if spend_limit:
        conds.append("spent_micros + reserved_micros + :worst <= :spend_limit")
    if allowance:
        conds.append("tokens + reserved_tokens + :worst_tokens <= :allowance")
    return sa.text("UPDATE period_usage SET reserved_micros = reserved_micros + :worst, "
                   "reserved_tokens = reserved_tokens + :worst_tokens WHERE " + " AND ".join(conds))


INSERT_RESERVATION = sa.text("""
INSERT INTO reservations (request_id, org_id, key_id, server_id, model, adapter, period, created_at, worst_micros,
                          worst_tokens, prompt_tokens, started, completion_tokens, status, prompt_micros_per_1k,
                          completion_micros_per_1k)
VALUES (:request_id, :org_id, :key_id, :server_id, :model, :adapter, :period, :now, :worst, :worst_tokens,
        :prompt_tokens, :started, 0, 'open', :p_price, :c_price)""").bindparams(
    sa.bindparam("started", type_=sa.Boolean))


@lru_cache(maxsize=None)
def settle_reads(postgresql: bool) -> tuple[sa.TextClause, sa.TextClause, sa.TextClause]:
    """(the open reservation, the key's row lock, the plan's included tokens and the period's
    tokens so far): locked in the order reserve takes them (key, then period), so two
    transactions never wait for each other in a circle."""
    lock = " FOR UPDATE" if postgresql else ""
    return (sa.text("SELECT * FROM reservations WHERE request_id = :rid AND status = 'open'" + lock),
            sa.text("SELECT id FROM api_keys WHERE id = :key_id" + lock),
            sa.text("SELECT p.included_tokens, u.tokens FROM period_usage u JOIN orgs o ON o.id = u.org_id "
                    "JOIN plans p ON p.name = o.plan WHERE u.org_id = :org_id AND u.period = :period"
                    + (" FOR UPDATE OF u" if postgresql else "")))


MARKET = sa.text("SELECT author_org_id, share_bp FROM market_adapters WHERE name = :adapter")

INSERT_ENTRY = sa.text("""
INSERT INTO ledger (at, period, org_id, key_id, request_id, kind, amount_micros, list_micros, model, adapter,
                    prompt_tokens, completion_tokens, included_tokens, outcome)
VALUES (:at, :period, :org_id, :key_id, :request_id, :kind, :amount, :list_micros, :model, :adapter,
        :prompt_tokens, :completion_tokens, :included_tokens, :outcome)""")

SETTLE_KEY = sa.text("""
UPDATE api_keys SET reserved_micros = reserved_micros - :worst, spent_micros = spent_micros + :charged
WHERE id = :key_id""")

SETTLE_PERIOD = sa.text("""
UPDATE period_usage SET reserved_micros = reserved_micros - :worst, reserved_tokens = reserved_tokens - :worst_tokens,
       spent_micros = spent_micros + :charged, tokens = tokens + :tokens
WHERE org_id = :org_id AND period = :period""")

CLOSE_RESERVATION = sa.text("""
UPDATE reservations SET status = 'settled', outcome = :outcome, completion_tokens = :completion_tokens
WHERE request_id = :rid""")
