"""The platform's tables (SQLAlchemy Core). Amounts are integer micro-dollars (1 dollar =
1,000,000), times are Unix seconds (UTC), billing periods are calendar months 'YYYY-MM' (UTC).

The ledger is append-only and is the record: each entry is unique by (request id, kind), so a
request is never billed twice. The running totals on keys and periods (`spent_micros`,
`reserved_micros`, tokens) are what budget checks read in one conditional UPDATE; a test checks
that they always equal the ledger's sums.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

plans = Table(
    "plans", metadata,
    Column("name", String(32), primary_key=True),
    Column("monthly_fee_micros", BigInteger, nullable=False),
    Column("included_tokens", BigInteger, nullable=False),     # free tokens each month
    Column("overage", Boolean, nullable=False),                # bill past the included tokens, or refuse
    Column("rpm", Integer), Column("tpm", BigInteger), Column("concurrency", Integer),  # per organisation
)

orgs = Table(
    "orgs", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("plan", String(32), ForeignKey("plans.name"), nullable=False),
    Column("spend_limit_micros", BigInteger),                  # a monthly cap the organisation sets
    Column("rpm", Integer), Column("tpm", BigInteger), Column("concurrency", Integer),  # over the plan's
    Column("created_at", BigInteger, nullable=False),
)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("org_id", Integer, ForeignKey("orgs.id"), nullable=False),
    Column("email", String(200), nullable=False, unique=True),
    Column("role", String(16), nullable=False),                # owner | member
    Column("created_at", BigInteger, nullable=False),
)

subscriptions = Table(
    "subscriptions", metadata,
    Column("id", Integer, primary_key=True),
    Column("org_id", Integer, ForeignKey("orgs.id"), nullable=False),
    Column("plan", String(32), ForeignKey("plans.name"), nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("org_id", Integer, ForeignKey("orgs.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id")),
    Column("name", String(100), nullable=False),
    Column("prefix", String(16), nullable=False),              # shown in lists: 'ls-' and 8 characters
    Column("key_hash", String(64), nullable=False, unique=True),  # HMAC-SHA256 under the server's secret
    Column("admin", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("revoked_at", BigInteger),
    Column("allowed_models", Text),                            # JSON list; NULL = every model
    Column("allowed_adapters", Text),                          # JSON list; NULL = every adapter
    Column("rpm", Integer), Column("tpm", BigInteger), Column("concurrency", Integer),
    Column("budget_micros", BigInteger),                       # lifetime budget; NULL = none
    Column("safety_policy", String(100)),                      # the content policy's name; NULL = the server's
    Column("spent_micros", BigInteger, nullable=False),
    Column("reserved_micros", BigInteger, nullable=False),
)

prices = Table(
    "prices", metadata,
    Column("model", String(200), primary_key=True),            # '*' = every model
    Column("adapter", String(200), primary_key=True),          # '' = the base model
    Column("prompt_micros_per_1k", BigInteger, nullable=False),
    Column("completion_micros_per_1k", BigInteger, nullable=False),
)

market_adapters = Table(
    "market_adapters", metadata,
    Column("name", String(200), primary_key=True),
    Column("author_org_id", Integer, ForeignKey("orgs.id"), nullable=False),
    Column("share_bp", Integer, nullable=False),               # the author's share, basis points (7000 = 70%)
    Column("created_at", BigInteger, nullable=False),
)

period_usage = Table(
    "period_usage", metadata,
    Column("org_id", Integer, ForeignKey("orgs.id"), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("tokens", BigInteger, nullable=False),
    Column("reserved_tokens", BigInteger, nullable=False),
    Column("spent_micros", BigInteger, nullable=False),
    Column("reserved_micros", BigInteger, nullable=False),
)

servers = Table(
    "servers", metadata,
    Column("id", String(40), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("hostname", String(200), nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
)

reservations = Table(
    "reservations", metadata,
    Column("request_id", String(80), primary_key=True),
    Column("org_id", Integer, ForeignKey("orgs.id"), nullable=False),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("server_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("adapter", String(200), nullable=False),
    Column("period", String(7), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("worst_micros", BigInteger, nullable=False),
    Column("worst_tokens", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("started", Boolean, nullable=False),               # its prompt was processed (then it is billed)
    Column("completion_tokens", BigInteger, nullable=False),   # progress, flushed while it runs
    Column("status", String(12), nullable=False),              # open | settled
    Column("outcome", String(24)),
    # the prices it was reserved at (and is settled at); NULL on reservations made before 0003
    Column("prompt_micros_per_1k", BigInteger),
    Column("completion_micros_per_1k", BigInteger),
)

ledger = Table(
    "ledger", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("period", String(7), nullable=False),
    Column("org_id", Integer, ForeignKey("orgs.id"), nullable=False),
    Column("key_id", Integer, ForeignKey("api_keys.id")),
    Column("request_id", String(80), nullable=False),
    # usage | subscription_fee | author_credit | platform_share
    Column("kind", String(24), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("list_micros", BigInteger, nullable=False),         # usage at list price, before included tokens
    Column("model", String(200), nullable=False),
    Column("adapter", String(200), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("included_tokens", BigInteger, nullable=False),
    Column("outcome", String(24), nullable=False),
    UniqueConstraint("request_id", "kind", name="uq_ledger_request_kind"),
)
