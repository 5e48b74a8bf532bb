"""The platform: plans, organisations, users, subscriptions, API keys, prices, the adapter market,
per-period usage, server heartbeats, reservations and the ledger; the three plans seeded.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG, INT, STR, TEXT, BOOL = sa.BigInteger, sa.Integer, sa.String, sa.Text, sa.Boolean


def _limits():
    return [sa.Column("rpm", INT), sa.Column("tpm", BIG), sa.Column("concurrency", INT)]


def upgrade() -> None:
    plans = op.create_table(
        "plans", sa.Column("name", STR(32), primary_key=True),
        sa.Column("monthly_fee_micros", BIG, nullable=False), sa.Column("included_tokens", BIG, nullable=False),
        sa.Column("overage", BOOL, nullable=False), *_limits())
    op.create_table(
        "orgs", sa.Column("id", INT, primary_key=True), sa.Column("name", STR(100), nullable=False, unique=True),
        sa.Column("plan", STR(32), sa.ForeignKey("plans.name"), nullable=False),
        sa.Column("spend_limit_micros", BIG), *_limits(), sa.Column("created_at", BIG, nullable=False))
    op.create_table(
        "users", sa.Column("id", INT, primary_key=True),
        sa.Column("org_id", INT, sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("email", STR(200), nullable=False, unique=True), sa.Column("role", STR(16), nullable=False),
        sa.Column("created_at", BIG, nullable=False))
    op.create_table(
        "subscriptions", sa.Column("id", INT, primary_key=True),
        sa.Column("org_id", INT, sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("plan", STR(32), sa.ForeignKey("plans.name"), nullable=False),
        sa.Column("started_at", BIG, nullable=False), sa.Column("ended_at", BIG))
    op.create_table(
        "api_keys", sa.Column("id", INT, primary_key=True),
        sa.Column("org_id", INT, sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("user_id", INT, sa.ForeignKey("users.id")), sa.Column("name", STR(100), nullable=False),
        sa.Column("prefix", STR(16), nullable=False), sa.Column("key_hash", STR(64), nullable=False, unique=True),
        sa.Column("admin", BOOL, nullable=False), sa.Column("created_at", BIG, nullable=False),
        sa.Column("expires_at", BIG), sa.Column("revoked_at", BIG),
        sa.Column("allowed_models", TEXT), sa.Column("allowed_adapters", TEXT), *_limits(),
        sa.Column("budget_micros", BIG), sa.Column("spent_micros", BIG, nullable=False),
        sa.Column("reserved_micros", BIG, nullable=False))
    op.create_table(
        "prices", sa.Column("model", STR(200), primary_key=True), sa.Column("adapter", STR(200), primary_key=True),
        sa.Column("prompt_micros_per_1k", BIG, nullable=False),
        sa.Column("completion_micros_per_1k", BIG, nullable=False))
    op.create_table(
        "market_adapters", sa.Column("name", STR(200), primary_key=True),
        sa.Column("author_org_id", INT, sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("share_bp", INT, nullable=False), sa.Column("created_at", BIG, nullable=False))
    op.create_table(
        "period_usage", sa.Column("org_id", INT, sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("period", STR(7), primary_key=True), sa.Column("tokens", BIG, nullable=False),
        sa.Column("reserved_tokens", BIG, nullable=False), sa.Column("spent_micros", BIG, nullable=False),
        sa.Column("reserved_micros", BIG, nullable=False))
    op.create_table(
        "servers", sa.Column("id", STR(40), primary_key=True), sa.Column("pid", INT, nullable=False),
        sa.Column("hostname", STR(200), nullable=False), sa.Column("started_at", BIG, nullable=False),
        sa.Column("heartbeat_at", BIG, nullable=False))
    op.create_table(
        "reservations", sa.Column("request_id", STR(80), primary_key=True),
        sa.Column("org_id", INT, sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("key_id", INT, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("server_id", STR(40), nullable=False), sa.Column("model", STR(200), nullable=False),
        sa.Column("adapter", STR(200), nullable=False), sa.Column("period", STR(7), nullable=False),
        sa.Column("created_at", BIG, nullable=False), sa.Column("worst_micros", BIG, nullable=False),
        sa.Column("worst_tokens", BIG, nullable=False), sa.Column("prompt_tokens", BIG, nullable=False),
        sa.Column("started", BOOL, nullable=False), sa.Column("completion_tokens", BIG, nullable=False),
        sa.Column("status", STR(12), nullable=False),
        sa.Column("outcome", STR(24)))
    op.create_table(
        "ledger", sa.Column("id", INT, primary_key=True, autoincrement=True), sa.Column("at", BIG, nullable=False),
        sa.Column("period", STR(7), nullable=False), sa.Column("org_id", INT, sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("key_id", INT, sa.ForeignKey("api_keys.id")), sa.Column("request_id", STR(80), nullable=False),
        sa.Column("kind", STR(24), nullable=False), sa.Column("amount_micros", BIG, nullable=False),
        sa.Column("list_micros", BIG, nullable=False), sa.Column("model", STR(200), nullable=False),
        sa.Column("adapter", STR(200), nullable=False), sa.Column("prompt_tokens", BIG, nullable=False),
        sa.Column("completion_tokens", BIG, nullable=False), sa.Column("included_tokens", BIG, nullable=False),
        sa.Column("outcome", STR(24), nullable=False),
        sa.UniqueConstraint("request_id", "kind", name="uq_ledger_request_kind"))
    # the plans as sold: free (100k tokens a month, then refused), pro (20 dollars a month with 10M
    # tokens included, then list price), enterprise (list price from the first token, high limits)
    op.bulk_insert(plans, [
        {"name": "free", "monthly_fee_micros": 0, "included_tokens": 100_000, "overage": False,
         "rpm": 20, "tpm": 40_000, "concurrency": 2},
        {"name": "pro", "monthly_fee_micros": 20_000_000, "included_tokens": 10_000_000, "overage": True,
         "rpm": 600, "tpm": 1_000_000, "concurrency": 16},
        {"name": "enterprise", "monthly_fee_micros": 0, "included_tokens": 0, "overage": True,
         "rpm": 6_000, "tpm": 10_000_000, "concurrency": 128},
    ])


def downgrade() -> None:
    for name in ("ledger", "reservations", "servers", "period_usage", "market_adapters", "prices", "api_keys",
                 "subscriptions", "users", "orgs", "plans"):
        op.drop_table(name)
