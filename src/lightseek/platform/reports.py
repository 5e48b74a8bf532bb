"""What the ledger says, for people: an organisation's invoice for a month (JSON and HTML), an
adapter author's payout statement, and the usage an organisation sees on its page.

Every figure is a sum of ledger entries in integer micro-dollars; an invoice's total is the sum of
its lines, and the lines are the ledger's entries for that organisation and month, so the total
equals the ledger's sum exactly (a test checks it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa

from lightseek.fileio import atomic_write_text
from lightseek.platform.ledger import Ledger
from lightseek.platform.money import check_period, dollars
from lightseek.platform.tables import ledger, orgs


def _org(conn, name: str):
    row = conn.execute(sa.select(orgs).where(orgs.c.name == name)).first()
    if row is None:
        from lightseek.errors import ConfigError

        raise ConfigError(f"no organisation named {name!r} (see `lightseek admin org list`)")
    return row


def invoice(engine, org: str, month: str) -> dict:
    """The invoice of ``org`` for ``month`` ('YYYY-MM'): the subscription fee, then usage by model
    and adapter (tokens, list price, included tokens, amount), and the total."""
    check_period(month)
    with engine.connect() as c:
        o = _org(c, org)
    Ledger(engine).renew(month, o.id)
    with engine.connect() as c:
        e = ledger.c
        fee = c.execute(sa.select(sa.func.coalesce(sa.func.sum(e.amount_micros), 0)).where(
            e.org_id == o.id, e.period == month, e.kind == "subscription_fee")).scalar_one()
        rows = c.execute(sa.select(e.model, e.adapter, sa.func.count().label("requests"),
                                   sa.func.sum(e.prompt_tokens).label("prompt"),
                                   sa.func.sum(e.completion_tokens).label("completion"),
                                   sa.func.sum(e.included_tokens).label("included"),
                                   sa.func.sum(e.list_micros).label("listed"),
                                   sa.func.sum(e.amount_micros).label("amount"))
                         .where(e.org_id == o.id, e.period == month, e.kind == "usage")
                         .group_by(e.model, e.adapter).order_by(e.model, e.adapter)).all()
        earned = c.execute(sa.select(sa.func.coalesce(sa.func.sum(e.amount_micros), 0)).where(
            e.org_id == o.id, e.period == month, e.kind == "author_credit")).scalar_one()
    lines = [{"model": r.model, "adapter": r.adapter or None, "requests": r.requests, "prompt_tokens": int(r.prompt),
              "completion_tokens": int(r.completion), "included_tokens": int(r.included),
              "list_micros": int(r.listed), "amount_micros": int(r.amount)} for r in rows]
    total = int(fee) + sum(x["amount_micros"] for x in lines)
    return {"organisation": org, "plan": o.plan, "month": month, "currency": "USD", "amounts_in": "micro-dollars",
            "subscription_fee_micros": int(fee), "usage": lines, "total_micros": total, "total": dollars(total),
            "adapter_earnings_micros": int(earned), "issued_at": int(time.time())}


def payouts(engine, org: str, month: str) -> dict:
    """What ``org`` earned as an adapter author in ``month``, per adapter: what its adapters were
    billed, the author's credit and the platform's share (the two sum to what was billed)."""
    check_period(month)
    with engine.connect() as c:
        o = _org(c, org)
        e = ledger.c
        credits = c.execute(sa.select(e.adapter, sa.func.count().label("requests"),
                                      sa.func.sum(e.amount_micros).label("credit"))
                            .where(e.org_id == o.id, e.period == month, e.kind == "author_credit")
                            .group_by(e.adapter).order_by(e.adapter)).all()
        names = [r.adapter for r in credits]
        billed = dict(c.execute(sa.select(e.adapter, sa.func.sum(e.amount_micros))
                                .where(e.period == month, e.kind == "usage", e.adapter.in_(names))
                                .group_by(e.adapter)).all()) if names else {}
        platform = dict(c.execute(sa.select(e.adapter, sa.func.sum(e.amount_micros))
                                  .where(e.period == month, e.kind == "platform_share", e.adapter.in_(names))
                                  .group_by(e.adapter)).all()) if names else {}
    rows = [{"adapter": r.adapter, "requests": r.requests, "billed_micros": int(billed.get(r.adapter, 0)),
             "author_micros": int(r.credit), "platform_micros": int(platform.get(r.adapter, 0))} for r in credits]
    total = sum(r["author_micros"] for r in rows)
    return {"author": org, "month": month, "adapters": rows, "total_micros": total, "total": dollars(total)}


def usage(engine, org_id: int, since: float) -> dict:
    """An organisation's usage since ``since``: per day, per model and per adapter (requests,
    tokens, amount), and its adapters' earnings as an author."""
    e = ledger.c
    day = sa.func.date(sa.func.timezone("UTC", sa.func.to_timestamp(e.at))) if engine.dialect.name == "postgresql" \
        else sa.func.date(e.at, "unixepoch")
    cols = [sa.func.count().label("requests"), sa.func.sum(e.prompt_tokens + e.completion_tokens).label("tokens"),
            sa.func.sum(e.amount_micros).label("amount")]
    out = {}
    with engine.connect() as c:
        for name, key in (("days", day), ("models", e.model), ("adapters", e.adapter)):
            rows = c.execute(sa.select(key.label("key"), *cols).where(e.org_id == org_id, e.kind == "usage",
                                                                      e.at >= since)
                             .group_by(key).order_by(key)).all()
            out[name] = [{"key": str(r.key) if r.key else "(base)", "requests": r.requests, "tokens": int(r.tokens),
                          "amount_micros": int(r.amount)} for r in rows]
        rows = c.execute(sa.select(e.adapter.label("key"), sa.func.count().label("requests"),
                                   sa.func.sum(e.amount_micros).label("amount"))
                         .where(e.org_id == org_id, e.kind == "author_credit", e.at >= since)
                         .group_by(e.adapter).order_by(e.adapter)).all()
        out["earnings"] = [{"key": r.key, "requests": r.requests, "amount_micros": int(r.amount)} for r in rows]
    return out


INVOICE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invoice {{ inv.organisation }} {{ inv.month }}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;
padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>
<h1>Invoice: {{ inv.organisation }}, {{ inv.month }}</h1>
<p>Plan: {{ inv.plan }}. Amounts in US dollars.</p>
<table id="lines"><tr><th>item</th><th>requests</th><th>prompt tokens</th><th>completion tokens</th>
<th>included tokens</th><th>at list price</th><th>amount</th></tr>
{% if inv.subscription_fee_micros %}<tr><td>{{ inv.plan }} plan, monthly fee</td><td></td><td></td><td></td><td></td>
<td></td><td>{{ d(inv.subscription_fee_micros) }}</td></tr>{% endif %}
{% for x in inv.usage %}<tr><td>{{ x.model }}{% if x.adapter %} with {{ x.adapter }}{% endif %}</td>
<td>{{ x.requests }}</td><td>{{ x.prompt_tokens }}</td><td>{{ x.completion_tokens }}</td>
<td>{{ x.included_tokens }}</td>
<td>{{ d(x.list_micros) }}</td><td>{{ d(x.amount_micros) }}</td></tr>{% endfor %}
<tr><th>total</th><td></td><td></td><td></td><td></td><td></td><th id="total">{{ inv.total }}</th></tr></table>
{% if inv.adapter_earnings_micros %}<p>Earned as an adapter author this month (paid out separately):
{{ d(inv.adapter_earnings_micros) }}</p>{% endif %}
</body></html>
"""


def write_invoice(engine, org: str, month: str, out_dir: str | Path) -> tuple[Path, Path]:
    """``invoice-ORG-MONTH.json`` and ``.html`` in ``out_dir``; returns both paths."""
    import jinja2

    inv = invoice(engine, org, month)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, page = out / f"invoice-{org}-{month}.json", out / f"invoice-{org}-{month}.html"
    html = jinja2.Environment(autoescape=True).from_string(INVOICE_HTML).render(inv=inv, d=dollars)
    atomic_write_text(js, json.dumps(inv, indent=1) + "\n")
    atomic_write_text(page, html)
    return js, page
