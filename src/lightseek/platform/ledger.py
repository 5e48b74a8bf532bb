"""The usage ledger: reserve a request's worst case before it runs, settle it to its exact usage
when it ends, and find what a killed server left open.

Reserving is one transaction of conditional UPDATEs: the key's and the organisation's running
totals grow by the worst case (prompt tokens plus every choice's max_tokens, at list price) only
where the result stays within the key's budget, the organisation's monthly spend limit and, for
plans without overage, its monthly token allowance. PostgreSQL takes each row's lock and
re-reads it before the condition is judged, SQLite takes the database's write lock at BEGIN, so
concurrent requests, in one process or in many, can never reserve past a budget together.

Settling is one transaction too: it takes the reservation (only if still open, so a request is
settled once), writes the usage entry (unique per request id), the author's credit and the
platform's share for a market adapter, and moves the totals from reserved to spent. A plan's
included tokens are used up in settling order, within the same locked period row.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from lightseek.errors import ConfigError
from lightseek.platform import sql
from lightseek.platform.accounts import Accounts, KeyContext
from lightseek.platform.money import check_period, cost, period_of, split_share
from lightseek.platform.tables import (
    api_keys,
    ledger,
    period_usage,
    plans,
    reservations,
    servers,
    subscriptions,
)


class BudgetError(ConfigError):
    """A request whose worst case does not fit a budget (HTTP 429, code insufficient_quota)."""

    def __init__(self, message: str, scope: str):
        super().__init__(message)
        self.scope = scope


@dataclass(frozen=True)
class Ticket:
    """An open reservation: what was set aside for one API request."""
    request_id: str
    org_id: int
    key_id: int
    model: str
    adapter: str
    prompt_tokens: int
    worst_micros: int
    worst_tokens: int


class Ledger:
    def __init__(self, engine, server_id: str | None = None):
        self.engine = engine
        self.server_id = server_id or uuid.uuid4().hex

    # --- servers ------------------------------------------------------------------------------------
    def register_server(self) -> None:
        now = int(time.time())
        with self.engine.begin() as c:
            c.execute(servers.insert().values(id=self.server_id, pid=os.getpid(), hostname=socket.gethostname(),
                                              started_at=now, heartbeat_at=now))

    def heartbeat(self, progress: dict[str, tuple[bool, int]] | None = None) -> None:
        """Mark this server alive and record each running request's progress: whether its prompt
        was processed, and its completion tokens so far (what a restart bills if this server dies)."""
        with self.engine.begin() as c:
            c.execute(servers.update().where(servers.c.id == self.server_id).values(heartbeat_at=int(time.time())))
            for rid, (started, n) in (progress or {}).items():
                c.execute(reservations.update().where(reservations.c.request_id == rid,
                                                      reservations.c.status == "open")
                          .values(started=started, completion_tokens=n))

    # --- reserve ------------------------------------------------------------------------------------
    def reserve(self, ctx: KeyContext, request_id: str, model: str, adapter: str | None, prompt_tokens: int,
                max_completion_tokens: int, now: float | None = None) -> Ticket:
        now = time.time() if now is None else now
        adapter = adapter or ""
        period = period_of(now)
        with self.engine.begin() as c:
            p_price, c_price = Accounts.price(c, model, adapter)
            worst = cost(prompt_tokens, p_price) + cost(max_completion_tokens, c_price)
            worst_tokens = prompt_tokens + max_completion_tokens
            if c.execute(sql.RESERVE_KEY, {"worst": worst, "key_id": ctx.key_id}).rowcount != 1:
                raise BudgetError(f"this request may cost up to {worst} micro-dollars, more than is left of the "
                                  "key's budget; lower max_tokens or raise the budget", "key")
            c.execute(sql.PERIOD_ROW, {"org_id": ctx.org_id, "period": period})
            stmt = sql.reserve_period(ctx.spend_limit_micros is not None, not ctx.overage)
            if c.execute(stmt, {"org_id": ctx.org_id, "period": period, "worst": worst, "worst_tokens": worst_tokens,
                                "spend_limit": ctx.spend_limit_micros, "allowance": ctx.included_tokens}).rowcount != 1:
                # leaving the block rolls the key's reservation back as well
                what = (f"the {ctx.plan} plan's {ctx.included_tokens} tokens this month" if not ctx.overage
                        else "the organisation's monthly spend limit")
                raise BudgetError(f"this request (up to {worst_tokens} tokens) would go past {what}", "org")
            c.execute(sql.INSERT_RESERVATION, {
                "request_id": request_id, "org_id": ctx.org_id, "key_id": ctx.key_id, "server_id": self.server_id,
                "model": model, "adapter": adapter, "period": period, "now": int(now), "worst": worst,
                "worst_tokens": worst_tokens, "prompt_tokens": prompt_tokens, "started": False, "p_price": p_price,
                "c_price": c_price})
        return Ticket(request_id, ctx.org_id, ctx.key_id, model, adapter, prompt_tokens, worst, worst_tokens)

    # --- settle -------------------------------------------------------------------------------------
    def settle(self, request_id: str, prompt_tokens: int, completion_tokens: int, outcome: str,
               now: float | None = None) -> int | None:
        """Bill the request's exact usage; the amount charged, or None if it was settled already."""
        now = int(time.time() if now is None else now)
        read_reservation, lock_key, read_period = sql.settle_reads(self.engine.dialect.name == "postgresql")
        with self.engine.begin() as c:
            r = c.execute(read_reservation, {"rid": request_id}).first()
            if r is None:
                return None
            c.execute(lock_key, {"key_id": r.key_id})
            included, used = c.execute(read_period, {"org_id": r.org_id, "period": r.period}).one()
            left = max(0, included - used)
            inc_p = min(prompt_tokens, left)
            inc_c = min(completion_tokens, left - inc_p)
            p_price, c_price = (r.prompt_micros_per_1k, r.completion_micros_per_1k) \
                if r.prompt_micros_per_1k is not None else Accounts.price(c, r.model, r.adapter)
            listed = cost(prompt_tokens, p_price) + cost(completion_tokens, c_price)
            charged = cost(prompt_tokens - inc_p, p_price) + cost(completion_tokens - inc_c, c_price)
            entry = {"at": now, "period": r.period, "key_id": r.key_id, "request_id": request_id,
                     "list_micros": listed, "model": r.model, "adapter": r.adapter, "prompt_tokens": prompt_tokens,
                     "completion_tokens": completion_tokens, "included_tokens": inc_p + inc_c, "outcome": outcome}
            entries = [{**entry, "org_id": r.org_id, "kind": "usage", "amount": charged}]
            author = c.execute(sql.MARKET, {"adapter": r.adapter}).first() if r.adapter else None
            if author is not None:
                to_author, to_platform = split_share(charged, author.share_bp)
                entries += [{**entry, "org_id": author.author_org_id, "kind": "author_credit", "amount": to_author},
                            {**entry, "org_id": r.org_id, "kind": "platform_share", "amount": to_platform}]
            c.execute(sql.INSERT_ENTRY, entries)
            c.execute(sql.SETTLE_KEY, {"worst": r.worst_micros, "charged": charged, "key_id": r.key_id})
            c.execute(sql.SETTLE_PERIOD, {"worst": r.worst_micros, "worst_tokens": r.worst_tokens, "charged": charged,
                                          "tokens": prompt_tokens + completion_tokens, "org_id": r.org_id,
                                          "period": r.period})
            c.execute(sql.CLOSE_RESERVATION, {"outcome": outcome, "completion_tokens": completion_tokens,
                                              "rid": request_id})
        return charged

    def recover(self, stale_after: float = 60.0, now: float | None = None) -> list[str]:
        """Settle the open reservations of servers that stopped (no heartbeat for ``stale_after``
        seconds, or this host's server whose process is gone) at their recorded progress: the
        prompt if it was processed, and the completion tokens recorded last."""
        now = time.time() if now is None else now
        with self.engine.connect() as c:
            rows = c.execute(sa.select(reservations.c.request_id, reservations.c.prompt_tokens, reservations.c.started,
                                       reservations.c.completion_tokens, servers.c.heartbeat_at, servers.c.pid,
                                       servers.c.hostname, servers.c.id.label("sid"))
                             .join(servers, servers.c.id == reservations.c.server_id, isouter=True)
                             .where(reservations.c.status == "open", reservations.c.server_id != self.server_id)
                             ).all()
        done = []
        for r in rows:
            here = r.hostname == socket.gethostname()
            # on this host: its process is gone, or the pid is now this process's (a restart in a
            # container gets the same pid), which is not that server
            dead = r.sid is None or now - r.heartbeat_at > stale_after or (
                here and (r.pid == os.getpid() or not _alive(r.pid)))
            prompt = r.prompt_tokens if r.started else 0  # a request still queued cost nothing
            if dead and self.settle(r.request_id, prompt, r.completion_tokens, "server_lost") is not None:
                done.append(r.request_id)
        return done

    # --- subscriptions ------------------------------------------------------------------------------
    def renew(self, period: str, org_id: int | None = None, now: float | None = None) -> int:
        """Charge each organisation's monthly fee for ``period`` once: the highest fee of the plans
        it held during the month (no proration). Returns how many fees were written."""
        start, end = _period_bounds(check_period(period, allow_future=True))
        q = (sa.select(subscriptions.c.org_id, sa.func.max(plans.c.monthly_fee_micros).label("fee"))
             .join(plans, plans.c.name == subscriptions.c.plan)
             .where(subscriptions.c.started_at < end,
                    sa.or_(subscriptions.c.ended_at.is_(None), subscriptions.c.ended_at > start))
             .group_by(subscriptions.c.org_id))
        if org_id is not None:
            q = q.where(subscriptions.c.org_id == org_id)
        written = 0
        with self.engine.begin() as c:
            for r in c.execute(q).all():
                if not r.fee:
                    continue
                before = c.execute(sa.select(ledger.c.id).where(ledger.c.request_id == f"fee:{r.org_id}:{period}",
                                                               ledger.c.kind == "subscription_fee")).first()
                if before is None:
                    c.execute(ledger.insert().values(
                        at=int(time.time() if now is None else now), period=period, org_id=r.org_id,
                        request_id=f"fee:{r.org_id}:{period}", kind="subscription_fee", amount_micros=r.fee,
                        list_micros=r.fee, model="", adapter="", prompt_tokens=0, completion_tokens=0,
                        included_tokens=0, outcome="renewed"))
                    written += 1
        return written

    # --- checks -------------------------------------------------------------------------------------
    def audit(self) -> list[str]:
        """Running totals that differ from the ledger and the open reservations (none, always)."""
        problems = []
        with self.engine.connect() as c:
            spent = dict(c.execute(sa.select(ledger.c.key_id, sa.func.sum(ledger.c.amount_micros))
                                   .where(ledger.c.kind == "usage").group_by(ledger.c.key_id)).all())
            held = dict(c.execute(sa.select(reservations.c.key_id, sa.func.sum(reservations.c.worst_micros))
                                  .where(reservations.c.status == "open").group_by(reservations.c.key_id)).all())
            for k in c.execute(sa.select(api_keys.c.id, api_keys.c.spent_micros, api_keys.c.reserved_micros)):
                if k.spent_micros != (spent.get(k.id) or 0) or k.reserved_micros != (held.get(k.id) or 0):
                    problems.append(f"key {k.id}: spent {k.spent_micros} vs ledger {spent.get(k.id) or 0}, "
                                    f"reserved {k.reserved_micros} vs open {held.get(k.id) or 0}")
            for u in c.execute(sa.select(period_usage)):
                s = c.execute(sa.select(sa.func.coalesce(sa.func.sum(ledger.c.amount_micros), 0),
                                        sa.func.coalesce(sa.func.sum(ledger.c.prompt_tokens
                                                                     + ledger.c.completion_tokens), 0))
                              .where(ledger.c.org_id == u.org_id, ledger.c.period == u.period,
                                     ledger.c.kind == "usage")).one()
                if (u.spent_micros, u.tokens) != (s[0], s[1]):
                    problems.append(f"org {u.org_id} {u.period}: spent {u.spent_micros} tokens {u.tokens} vs "
                                    f"ledger {s[0]} / {s[1]}")
        return problems


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _period_bounds(period: str) -> tuple[int, int]:
    import calendar

    y, m = (int(x) for x in period.split("-"))
    start = calendar.timegm((y, m, 1, 0, 0, 0))
    end = calendar.timegm((y + m // 12, m % 12 + 1, 1, 0, 0, 0))
    return start, end


def open_store(url: str, secret: str | bytes | None = None, server_id: str | None = None):
    """(engine, accounts, ledger) of the platform's database at ``url`` (a SQLite path or a
    PostgreSQL URL), its schema brought to the current revision: what the server's gate, the
    admin command and the benchmarks all start from."""
    from lightseek.db import connect, normalise_url, upgrade
    from lightseek.platform.accounts import load_secret

    url = normalise_url(url)
    engine = connect(url)
    upgrade(engine)
    return engine, Accounts(engine, load_secret(url, secret)), Ledger(engine, server_id)

