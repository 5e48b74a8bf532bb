"""The platform's HTTP side: the admin API (behind an admin key) and the usage page.

Admin API (JSON; amounts as dollar strings in requests, integer micro-dollars in answers):
  POST /admin/orgs {name, plan, spend_limit}          GET /admin/orgs
  POST /admin/orgs/{org}/plan {plan}
  POST /admin/orgs/{org}/keys {name, models, adapters, budget, rpm, tpm, concurrency, expires_in_days, admin}
       -> the key, shown once                          GET /admin/orgs/{org}/keys
  DELETE /admin/keys/{prefix_or_id}
  PUT /admin/prices {model, adapter, prompt_per_1k, completion_per_1k}
  PUT /admin/market/{adapter} {author, share}
  GET /admin/orgs/{org}/invoice?month=YYYY-MM          GET /admin/orgs/{org}/payouts?month=YYYY-MM
  GET /admin/audit

The usage page (GET /usage) shows the caller's organisation: spend per day as a chart, and tables
per day, model and adapter, and what its adapters earned. A browser signs in at /usage/login with
a key; the session is a signed cookie (HttpOnly, SameSite=Strict) naming the key, checked again
at every request, so a revoked key's session ends with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import TYPE_CHECKING

from fastapi import Cookie, Depends, Form, Header
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from lightseek.errors import ConfigError
from lightseek.platform import reports
from lightseek.platform.accounts import AuthError
from lightseek.platform.money import dollars, parse_dollars, parse_share
from lightseek.serve.schemas import ApiError

if TYPE_CHECKING:
    from lightseek.platform.gate import Gate

SESSION_COOKIE = "lightseek_session"
SESSION_SECONDS = 8 * 3600


class OrgBody(BaseModel):
    name: str
    plan: str = "free"
    spend_limit: str | None = None


class PlanBody(BaseModel):
    plan: str


class KeyBody(BaseModel):
    name: str = "default"
    models: list[str] | None = None
    adapters: list[str] | None = None
    budget: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    expires_in_days: float | None = None
    admin: bool = False
    safety_policy: str | None = None


class PriceBody(BaseModel):
    model: str
    adapter: str = ""
    prompt_per_1k: str
    completion_per_1k: str


class MarketBody(BaseModel):
    author: str
    share: str = "0.7"


def add_platform_routes(app, gate: Gate, admin_check) -> None:
    acc = gate.accounts

    async def admin(authorization: str | None = Header(None, include_in_schema=False)):
        return await admin_check(authorization)

    async def call(fn, *args, **kw):
        """A platform operation in a worker thread; a user's mistake is a 400 (404 if not found)."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except ConfigError as e:
            raise ApiError(404 if str(e).startswith("no ") else 400, str(e), code="invalid_value") from None

    @app.post("/admin/orgs", dependencies=[Depends(admin)])
    async def create_org(body: OrgBody):
        try:
            limit = parse_dollars(body.spend_limit, "spend_limit") if body.spend_limit is not None else None
        except ConfigError as e:
            raise ApiError(400, str(e), param="spend_limit", code="invalid_value") from None
        return {"id": await call(acc.create_org, body.name, body.plan, limit), "name": body.name}

    @app.get("/admin/orgs", dependencies=[Depends(admin)])
    async def list_orgs():
        return {"data": await call(acc.list_orgs)}

    @app.post("/admin/orgs/{org}/plan", dependencies=[Depends(admin)])
    async def set_plan(org: str, body: PlanBody):
        await call(acc.set_plan, org, body.plan)
        return {"org": org, "plan": body.plan}

    @app.post("/admin/orgs/{org}/keys", dependencies=[Depends(admin)])
    async def create_key(org: str, body: KeyBody):
        try:
            budget = parse_dollars(body.budget, "budget") if body.budget is not None else None
        except ConfigError as e:
            raise ApiError(400, str(e), param="budget", code="invalid_value") from None
        if body.expires_in_days is not None and not 0 < body.expires_in_days <= 36_500:
            raise ApiError(400, "expires_in_days: between 0 and 36500", param="expires_in_days", code="invalid_value")
        expires = int(time.time() + body.expires_in_days * 86400) if body.expires_in_days else None
        key, kid = await call(acc.create_key, org, body.name, admin=body.admin, expires_at=expires,
                              models=body.models, adapters=body.adapters, budget_micros=budget, rpm=body.rpm,
                              tpm=body.tpm, concurrency=body.concurrency, safety_policy=body.safety_policy)
        return {"id": kid, "key": key, "prefix": key[:11], "note": "the key is shown only now"}

    @app.get("/admin/orgs/{org}/keys", dependencies=[Depends(admin)])
    async def list_keys(org: str):
        return {"data": await call(acc.list_keys, org)}

    @app.delete("/admin/keys/{key}", dependencies=[Depends(admin)])
    async def revoke_key(key: str):
        await call(acc.revoke_key, key)
        return {"revoked": key}

    @app.put("/admin/prices", dependencies=[Depends(admin)])
    async def set_price(body: PriceBody):
        try:
            p, c = parse_dollars(body.prompt_per_1k, "prompt_per_1k"), parse_dollars(body.completion_per_1k,
                                                                                     "completion_per_1k")
        except ConfigError as e:
            raise ApiError(400, str(e), code="invalid_value") from None
        await call(acc.set_price, body.model, p, c, body.adapter)
        return {"model": body.model, "adapter": body.adapter, "prompt_micros_per_1k": p,
                "completion_micros_per_1k": c}

    @app.put("/admin/market/{adapter}", dependencies=[Depends(admin)])
    async def publish(adapter: str, body: MarketBody):
        try:
            share = parse_share(body.share)
        except ConfigError as e:
            raise ApiError(400, str(e), param="share", code="invalid_value") from None
        await call(acc.publish_adapter, adapter, body.author, share)
        return {"adapter": adapter, "author": body.author, "share_bp": share}

    @app.get("/admin/orgs/{org}/invoice", dependencies=[Depends(admin)])
    async def invoice(org: str, month: str):
        return await call(reports.invoice, gate.engine, org, month)

    @app.get("/admin/orgs/{org}/payouts", dependencies=[Depends(admin)])
    async def payouts(org: str, month: str):
        return await call(reports.payouts, gate.engine, org, month)

    @app.get("/admin/audit", dependencies=[Depends(admin)])
    async def audit():
        return {"problems": await call(gate.ledger.audit)}

    # --- the usage page -----------------------------------------------------------------------------
    def sign(key_id: int, expires: int) -> str:
        msg = f"{key_id}.{expires}"
        return msg + "." + hmac.new(acc.secret, b"session:" + msg.encode(), hashlib.sha256).hexdigest()

    def session_key(cookie: str | None) -> int | None:
        try:
            key_id, expires, mac = cookie.split(".")
            good = hmac.compare_digest(sign(int(key_id), int(expires)).encode(), cookie.encode())
        except (AttributeError, ValueError, TypeError, OverflowError):
            return None
        return int(key_id) if good and int(expires) > time.time() and mac else None

    @app.get("/usage/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_page(error: str | None = None):
        import html

        shown = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return HTMLResponse(_page("Sign in", LOGIN_FORM.format(error=shown)))

    @app.post("/usage/login", include_in_schema=False)
    async def login(key: str = Form(...)):
        try:
            ctx = await asyncio.to_thread(acc.authenticate, key.strip())
        except AuthError:
            return RedirectResponse("/usage/login?error=That+key+is+not+valid", status_code=303)
        resp = RedirectResponse("/usage", status_code=303)
        expires = int(time.time()) + SESSION_SECONDS
        resp.set_cookie(SESSION_COOKIE, sign(ctx.key_id, expires), max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict")
        return resp

    @app.post("/usage/logout", include_in_schema=False)
    async def logout():
        resp = RedirectResponse("/usage/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    @app.get("/usage", response_class=HTMLResponse, include_in_schema=False)
    async def usage_page(days: int = 31, authorization: str | None = Header(None),
                         session: str | None = Cookie(None, alias=SESSION_COOKIE)):
        key_id = session_key(session)
        try:
            if authorization:
                ctx = await asyncio.to_thread(gate.authenticate, authorization)
            elif key_id is not None:
                ctx = await asyncio.to_thread(acc.authenticate, None, key_id=key_id)
            else:
                return RedirectResponse("/usage/login", status_code=303)
        except AuthError:
            return RedirectResponse("/usage/login?error=Your+key+is+no+longer+valid", status_code=303)
        days = max(1, min(days, 366))
        data = await asyncio.to_thread(reports.usage, gate.engine, ctx.org_id, time.time() - days * 86400)
        return HTMLResponse(_page(f"Usage of {ctx.org}", _usage_body(ctx, data, days)))


LOGIN_FORM = """<h1>lightseek usage</h1>{error}
<form method="post" action="/usage/login"><label>API key <input type="password" name="key" id="key"
autocomplete="off" size="50"></label> <button type="submit" id="signin">Sign in</button></form>"""


def _page(title: str, body: str) -> str:
    import html

    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #aaa;padding:3px 8px;text-align:right}td:first-child,"
            "th:first-child{text-align:left}.error{color:#b00}svg rect{fill:#3a6ea5}</style></head>"
            f"<body>{body}</body></html>")


def _usage_body(ctx, data: dict, days: int) -> str:
    import html

    def table(rows: list[dict], first: str, tid: str) -> str:
        head = f"<tr><th>{first}</th><th>requests</th><th>tokens</th><th>amount ($)</th></tr>"
        body = "".join(f"<tr><td>{html.escape(r['key'])}</td><td>{r['requests']}</td><td>{r['tokens']}</td>"
                       f"<td>{dollars(r['amount_micros'])}</td></tr>" for r in rows)
        return f"<table id='{tid}'>{head}{body or '<tr><td colspan=4>no requests yet</td></tr>'}</table>"

    days_rows = data["days"]
    # the chart: one bar per day, height by spend (by tokens where nothing was charged, e.g. included tokens)
    by = "amount_micros" if any(r["amount_micros"] for r in days_rows) else "tokens"
    top = max((r[by] for r in days_rows), default=0) or 1
    w = 24
    bars = "".join(f"<rect class='bar' x='{i * w + 2}' y='{160 - 150 * r[by] / top:.1f}' width='{w - 4}' "
                   f"height='{150 * r[by] / top:.1f}'><title>{html.escape(r['key'])}: "
                   f"{dollars(r['amount_micros'])} $, {r['tokens']} tokens</title></rect>"
                   for i, r in enumerate(days_rows))
    chart = (f"<svg id='chart' width='{max(1, len(days_rows)) * w + 4}' height='165' role='img' "
             f"aria-label='{'spend' if by == 'amount_micros' else 'tokens'} per day'>{bars}</svg>")
    earnings = ""
    if data["earnings"]:
        rows = "".join(f"<tr><td>{html.escape(r['key'])}</td><td>{r['requests']}</td>"
                       f"<td>{dollars(r['amount_micros'])}</td></tr>" for r in data["earnings"])
        earnings = ("<h2>Your adapters' earnings</h2><table id='earnings'><tr><th>adapter</th><th>requests</th>"
                    f"<th>your share ($)</th></tr>{rows}</table>")
    total = sum(r["amount_micros"] for r in days_rows)
    return (f"<h1>{html.escape(ctx.org)}: usage, last {days} days</h1><p>Plan: {html.escape(ctx.plan)}. "
            f"Spend: <b id='total'>{dollars(total)}</b> $ "
            f"({'spend' if by == 'amount_micros' else 'tokens'} per day below).</p>{chart}"
            f"<h2>Per day</h2>{table(days_rows, 'day', 'days')}<h2>Per model</h2>"
            f"{table(data['models'], 'model', 'models')}<h2>Per adapter</h2>"
            f"{table(data['adapters'], 'adapter', 'adapters')}{earnings}"
            "<form method='post' action='/usage/logout'><button>Sign out</button></form>")
