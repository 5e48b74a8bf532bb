"""Organisations, users, plans, API keys, prices and the adapter market: what `lightseek admin`
and the admin API change, and how a request's key is checked.

A key is ``ls-`` followed by 43 random URL-safe characters; it is shown once, when created. The
database keeps its HMAC-SHA256 under the server's secret (never the key, never a plain hash
someone with the database alone could test guesses against) and its first 11 characters for
lists. The secret comes from ``LIGHTSEEK_PLATFORM_SECRET`` or a file created beside a SQLite
database (mode 0600); servers that share a PostgreSQL database must share the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from lightseek.errors import ConfigError
from lightseek.platform import sql
from lightseek.platform.money import DEFAULT_PRICE_PER_1K, DEFAULT_SHARE_BP
from lightseek.platform.tables import api_keys, market_adapters, orgs, plans, prices, subscriptions, users

KEY_PREFIX = "ls-"
SECRET_ENV = "LIGHTSEEK_PLATFORM_SECRET"


def load_secret(url: str, secret: str | bytes | None = None) -> bytes:
    """The HMAC secret: given, from the environment, or (SQLite) a file beside the database."""
    if secret:
        return secret.encode() if isinstance(secret, str) else secret
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode()
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        path = Path(url.split("///", 1)[1] + ".secret")
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip().encode()
    raise ConfigError(f"set {SECRET_ENV} (the same value on every server that shares this database)")


@dataclass(frozen=True)
class KeyContext:
    """Who a request is from and what they may do: the key's and its organisation's limits."""
    key_id: int
    org_id: int
    org: str
    plan: str
    admin: bool
    allowed_models: tuple[str, ...] | None
    allowed_adapters: tuple[str, ...] | None
    key_limits: tuple[int | None, int | None, int | None]   # rpm, tpm, concurrency of the key
    org_limits: tuple[int | None, int | None, int | None]   # of the organisation (its plan's unless set)
    spend_limit_micros: int | None
    included_tokens: int
    overage: bool
    safety_policy: str | None = None                          # the content policy (None: the server's default)


class Accounts:
    def __init__(self, engine, secret: bytes):
        self.engine = engine
        self.secret = secret

    def hash_key(self, key: str) -> str:
        return hmac.new(self.secret, key.encode(), hashlib.sha256).hexdigest()

    # --- organisations, users, plans --------------------------------------------------------------
    def create_org(self, name: str, plan: str = "free", spend_limit_micros: int | None = None) -> int:
        now = int(time.time())
        with self.engine.begin() as c:
            self._plan_row(c, plan)
            if c.execute(sa.select(orgs.c.id).where(orgs.c.name == name)).first():
                raise ConfigError(f"organisation {name!r} exists already")
            org_id = c.execute(orgs.insert().values(name=name, plan=plan, spend_limit_micros=spend_limit_micros,
                                                    created_at=now)).inserted_primary_key[0]
            c.execute(subscriptions.insert().values(org_id=org_id, plan=plan, started_at=now))
        return org_id

    def org_id(self, name: str, conn=None) -> int:
        def find(c):
            row = c.execute(sa.select(orgs.c.id).where(orgs.c.name == name)).first()
            if row is None:
                raise ConfigError(f"no organisation named {name!r} (see `lightseek admin org list`)")
            return row.id
        if conn is not None:
            return find(conn)
        with self.engine.connect() as c:
            return find(c)

    def set_plan(self, org: str, plan: str) -> None:
        """Move ``org`` to ``plan`` from now: the current subscription ends, a new one starts."""
        now = int(time.time())
        with self.engine.begin() as c:
            self._plan_row(c, plan)
            oid = self.org_id(org, c)
            c.execute(subscriptions.update().where(subscriptions.c.org_id == oid, subscriptions.c.ended_at.is_(None))
                      .values(ended_at=now))
            c.execute(subscriptions.insert().values(org_id=oid, plan=plan, started_at=now))
            c.execute(orgs.update().where(orgs.c.id == oid).values(plan=plan))

    def set_org_limits(self, org: str, **values) -> None:
        """Limits of one organisation over its plan's (rpm, tpm, concurrency, spend_limit_micros)."""
        with self.engine.begin() as c:
            c.execute(orgs.update().where(orgs.c.id == self.org_id(org, c)).values(**values))

    def list_orgs(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(orgs).order_by(orgs.c.id))]

    def add_user(self, org: str, email: str, role: str = "member") -> int:
        if role not in ("owner", "member"):
            raise ConfigError(f"role {role!r}: owner or member")
        with self.engine.begin() as c:
            oid = self.org_id(org, c)
            if c.execute(sa.select(users.c.id).where(users.c.email == email)).first():
                raise ConfigError(f"user {email!r} exists already")
            return c.execute(users.insert().values(org_id=oid, email=email, role=role,
                                                   created_at=int(time.time()))).inserted_primary_key[0]

    @staticmethod
    def _plan_row(c, plan: str):
        row = c.execute(sa.select(plans).where(plans.c.name == plan)).first()
        if row is None:
            names = [r.name for r in c.execute(sa.select(plans.c.name))]
            raise ConfigError(f"plan {plan!r} does not exist (plans: {', '.join(names)})")
        return row

    # --- keys ---------------------------------------------------------------------------------------
    def create_key(self, org: str, name: str = "default", *, admin: bool = False, expires_at: int | None = None,
                   models: list[str] | None = None, adapters: list[str] | None = None,
                   budget_micros: int | None = None, rpm: int | None = None, tpm: int | None = None,
                   concurrency: int | None = None, user_email: str | None = None,
                   safety_policy: str | None = None) -> tuple[str, int]:
        """A new key for ``org``: (the key, shown only now; its id)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as c:
            oid = self.org_id(org, c)
            uid = None
            if user_email is not None:
                row = c.execute(sa.select(users.c.id).where(users.c.email == user_email,
                                                            users.c.org_id == oid)).first()
                if row is None:
                    raise ConfigError(f"no user {user_email!r} in {org!r}")
                uid = row.id
            kid = c.execute(api_keys.insert().values(
                org_id=oid, user_id=uid, name=name, prefix=key[:11], key_hash=self.hash_key(key), admin=admin,
                created_at=int(time.time()), expires_at=expires_at,
                allowed_models=json.dumps(models) if models is not None else None,
                allowed_adapters=json.dumps(adapters) if adapters is not None else None,
                rpm=rpm, tpm=tpm, concurrency=concurrency, budget_micros=budget_micros, safety_policy=safety_policy,
                spent_micros=0, reserved_micros=0)).inserted_primary_key[0]
        return key, kid

    def revoke_key(self, prefix_or_id: str | int) -> int:
        with self.engine.begin() as c:
            cond = api_keys.c.id == int(prefix_or_id) if str(prefix_or_id).isdigit() else \
                api_keys.c.prefix == str(prefix_or_id)
            n = c.execute(api_keys.update().where(cond, api_keys.c.revoked_at.is_(None))
                          .values(revoked_at=int(time.time()))).rowcount
        if n != 1:
            raise ConfigError(f"key {prefix_or_id!r}: no such active key (give its id or its prefix)")
        return n

    def list_keys(self, org: str) -> list[dict]:
        cols = [c for c in api_keys.c if c.name != "key_hash"]
        with self.engine.connect() as c:
            oid = self.org_id(org, c)
            return [dict(r._mapping) for r in c.execute(sa.select(*cols).where(api_keys.c.org_id == oid))]

    def authenticate(self, key: str | None, now: float | None = None, key_id: int | None = None) -> KeyContext:
        """The key's context (or the key numbered ``key_id``'s, for a signed-in session); `AuthError`
        (401) for a missing, unknown, revoked or expired key."""
        if not key and key_id is None:
            raise AuthError("no API key: send it as 'Authorization: Bearer ls-...'", "missing_api_key")
        with self.engine.connect() as c:
            r = c.execute(sql.KEY_BY_ID, {"id": key_id}) if key_id is not None else \
                c.execute(sql.KEY_BY_HASH, {"h": self.hash_key(key)})
            r = r.first()
        now = time.time() if now is None else now
        if r is None:
            raise AuthError("the API key is not valid", "invalid_api_key")
        if r.revoked_at is not None:
            raise AuthError(f"the API key {r.prefix}... has been revoked", "invalid_api_key")
        if r.expires_at is not None and now >= r.expires_at:
            raise AuthError(f"the API key {r.prefix}... has expired", "expired_api_key")

        def pick(own, plan):
            return own if own is not None else plan
        return KeyContext(
            key_id=r.id, org_id=r.org_id, org=r.org_name, plan=r.plan, admin=bool(r.admin),
            allowed_models=tuple(json.loads(r.allowed_models)) if r.allowed_models is not None else None,
            allowed_adapters=tuple(json.loads(r.allowed_adapters)) if r.allowed_adapters is not None else None,
            key_limits=(r.rpm, r.tpm, r.concurrency),
            org_limits=(pick(r.org_rpm, r.plan_rpm), pick(r.org_tpm, r.plan_tpm), pick(r.org_conc, r.plan_conc)),
            spend_limit_micros=r.spend_limit_micros, included_tokens=r.included_tokens, overage=bool(r.overage),
            safety_policy=r.safety_policy)

    # --- prices and the market ---------------------------------------------------------------------
    def set_price(self, model: str, prompt_per_1k: int, completion_per_1k: int, adapter: str = "") -> None:
        with self.engine.begin() as c:
            c.execute(prices.delete().where(prices.c.model == model, prices.c.adapter == adapter))
            c.execute(prices.insert().values(model=model, adapter=adapter, prompt_micros_per_1k=prompt_per_1k,
                                             completion_micros_per_1k=completion_per_1k))

    @staticmethod
    def price(conn, model: str, adapter: str) -> tuple[int, int]:
        """(prompt, completion) micro-dollars per 1,000 tokens: the adapter's own price, else the
        model's, else the price for every model ('*'), else the default."""
        rows = {(r.model, r.adapter): r for r in conn.execute(sql.PRICES, {"model": model, "adapter": adapter})}
        for k in ((model, adapter), (model, ""), ("*", "")):
            if k in rows:
                return rows[k].prompt_micros_per_1k, rows[k].completion_micros_per_1k
        return DEFAULT_PRICE_PER_1K, DEFAULT_PRICE_PER_1K

    def publish_adapter(self, name: str, author_org: str, share_bp: int = DEFAULT_SHARE_BP) -> None:
        """List adapter ``name`` in the market: ``author_org`` earns ``share_bp`` of what it is billed."""
        if not 0 <= share_bp <= 10_000:
            raise ConfigError(f"share: {share_bp} basis points is outside [0, 10000]")
        with self.engine.begin() as c:
            oid = self.org_id(author_org, c)
            c.execute(market_adapters.delete().where(market_adapters.c.name == name))
            c.execute(market_adapters.insert().values(name=name, author_org_id=oid, share_bp=share_bp,
                                                      created_at=int(time.time())))


class AuthError(ConfigError):
    """A request whose key is missing, unknown, revoked or expired (HTTP 401)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code
