"""`lightseek admin`: organisations, users, keys, prices, the adapter market, invoices and
payouts, on the database a server runs with (``--db``, or ``$LIGHTSEEK_PLATFORM_DB``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from lightseek.errors import ConfigError

DB_ENV = "LIGHTSEEK_PLATFORM_DB"


def _open(args):
    """(engine, accounts, ledger) of the database ``--db`` names, migrated to the current schema."""
    from lightseek.platform.ledger import open_store

    url = args.db or os.environ.get(DB_ENV)
    if not url:
        raise ConfigError(f"give the platform's database with --db (a SQLite file or postgresql://...) or {DB_ENV}")
    return open_store(url, server_id="admin")


def _print(obj) -> None:
    print(json.dumps(obj, indent=1, ensure_ascii=False))


def cmd_admin(args, overrides) -> int:
    from lightseek.platform import reports
    from lightseek.platform.money import check_period, dollars, parse_dollars, parse_share, period_of

    engine, acc, ledger = _open(args)
    try:
        a = args.action
        if a == "init":
            print("the platform's schema is current")
        elif a == "org-create":
            limit = parse_dollars(args.spend_limit, "--spend-limit") if args.spend_limit else None
            _print({"id": acc.create_org(args.org, args.plan, limit), "name": args.org, "plan": args.plan})
        elif a == "org-list":
            _print(acc.list_orgs())
        elif a == "org-plan":
            acc.set_plan(args.org, args.plan)
            print(f"{args.org} is on the {args.plan} plan from now")
        elif a == "org-limits":
            values = {k: getattr(args, k) for k in ("rpm", "tpm", "concurrency") if getattr(args, k) is not None}
            if args.spend_limit is not None:
                values["spend_limit_micros"] = parse_dollars(args.spend_limit, "--spend-limit")
            if not values:
                raise ConfigError("give at least one of --rpm, --tpm, --concurrency, --spend-limit")
            acc.set_org_limits(args.org, **values)
            print(f"{args.org}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        elif a == "user-add":
            _print({"id": acc.add_user(args.org, args.email, args.role)})
        elif a == "key-create":
            key, kid = acc.create_key(
                args.org, args.name, admin=args.admin,
                expires_at=int(time.time() + args.expires_days * 86400) if args.expires_days else None,
                models=args.models.split(",") if args.models else None,
                adapters=args.adapters.split(",") if args.adapters is not None else None,
                budget_micros=parse_dollars(args.budget, "--budget") if args.budget else None,
                rpm=args.rpm, tpm=args.tpm, concurrency=args.concurrency, user_email=args.user,
                safety_policy=args.safety_policy)
            print(f"key {kid} for {args.org} (shown only now; keep it):\n{key}")
        elif a == "key-list":
            _print(acc.list_keys(args.org))
        elif a == "key-revoke":
            acc.revoke_key(args.key)
            print(f"revoked {args.key}")
        elif a == "price-set":
            acc.set_price(args.model, parse_dollars(args.prompt, "--prompt"),
                          parse_dollars(args.completion, "--completion"), args.adapter or "")
            print(f"{args.model}{':' + args.adapter if args.adapter else ''}: {args.prompt} $ per 1,000 prompt "
                  f"tokens, {args.completion} $ per 1,000 completion tokens")
        elif a == "publish":
            acc.publish_adapter(args.adapter, args.author, parse_share(args.share))
            print(f"{args.adapter} is in the market; {args.author} receives {args.share} of what it is billed")
        elif a == "invoice":
            js, html = reports.write_invoice(engine, args.org, check_period(args.month), args.out)
            inv = json.loads(js.read_text())
            print(f"{args.org} {args.month}: total {inv['total']} $ -> {js}, {html}")
        elif a == "payouts":
            p = reports.payouts(engine, args.org, check_period(args.month))
            _print(p)
        elif a == "renew":
            n = ledger.renew(check_period(args.month or period_of()))
            print(f"{n} monthly fees written")
        elif a == "recover":
            done = ledger.recover(stale_after=args.stale_after)
            print(f"settled {len(done)} requests left open by stopped servers")
        elif a == "audit":
            problems = ledger.audit()
            print("\n".join(problems) if problems else "running totals equal the ledger")
            return 1 if problems else 0
        elif a == "usage":
            oid = acc.org_id(args.org)
            data = reports.usage(engine, oid, time.time() - args.days * 86400)
            for r in data["days"]:
                print(f"{r['key']}  {r['requests']:6d} requests  {r['tokens']:9d} tokens  "
                      f"{dollars(r['amount_micros'])} $")
        return 0
    finally:
        engine.dispose()




def add_admin_commands(sub, add: Callable) -> None:
    """Register `lightseek admin ACTION` (``add`` from cli.py)."""
    admin = sub.add_parser("admin", help="The platform: organisations, keys, prices, market, invoices.") \
        .add_subparsers(dest="sub", metavar="ACTION")

    def action(name: str, help_text: str):
        p = add(name, cmd_admin, help_text, admin)
        p.set_defaults(action=name)
        p.add_argument("--db", help=f"the platform's database: a SQLite file or postgresql://... (default ${DB_ENV})")
        return p

    action("init", "Create or upgrade the platform's tables.")
    p = action("org-create", "Create an organisation.")
    p.add_argument("org")
    p.add_argument("--plan", default="free", help="free, pro or enterprise")
    p.add_argument("--spend-limit", help="a monthly spend cap in dollars")
    action("org-list", "List organisations.")
    p = action("org-plan", "Move an organisation to another plan from now.")
    p.add_argument("org")
    p.add_argument("plan")
    p = action("org-limits", "Set an organisation's own limits over its plan's (enterprise terms).")
    p.add_argument("org")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--concurrency", type=int, help="requests at once")
    p.add_argument("--spend-limit", help="a monthly spend cap in dollars")
    p = action("user-add", "Add a user to an organisation.")
    p.add_argument("org")
    p.add_argument("email")
    p.add_argument("--role", default="member", help="owner or member")
    p = action("key-create", "Create an API key (printed once).")
    p.add_argument("org")
    p.add_argument("--name", default="default")
    p.add_argument("--user", help="the user (email) the key belongs to")
    p.add_argument("--admin", action="store_true", help="a key for the admin API")
    p.add_argument("--expires-days", type=float)
    p.add_argument("--models", help="comma-separated model ids the key may use (default all)")
    p.add_argument("--adapters", help="comma-separated adapter names the key may use ('' for none; default all)")
    p.add_argument("--budget", help="the key's lifetime budget in dollars")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--concurrency", type=int, help="requests at once")
    p.add_argument("--safety-policy", help="the content policy its requests are moderated under (a name the server "
                   "knows from --safety-policies; default: the server's own)")
    p = action("key-list", "List an organisation's keys (never the keys themselves).")
    p.add_argument("org")
    p = action("key-revoke", "Revoke a key by id or prefix.")
    p.add_argument("key")
    p = action("price-set", "Set a model's (or an adapter's) price in dollars per 1,000 tokens.")
    p.add_argument("model", help="a served model id, or '*' for every model")
    p.add_argument("--adapter", help="the adapter's own price")
    p.add_argument("--prompt", required=True, help="dollars per 1,000 prompt tokens, e.g. 0.002")
    p.add_argument("--completion", required=True, help="dollars per 1,000 completion tokens")
    p = action("publish", "List an adapter in the market with its author and revenue share.")
    p.add_argument("adapter")
    p.add_argument("--author", required=True, help="the author organisation")
    p.add_argument("--share", default="0.7", help="the author's share (0.7 or 70%%)")
    p = action("invoice", "Write an organisation's invoice for a month (JSON and HTML).")
    p.add_argument("org")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--out", default=".", help="folder for invoice-ORG-MONTH.json and .html")
    p = action("payouts", "An adapter author's payout statement for a month.")
    p.add_argument("org")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p = action("renew", "Charge the monthly fees of a month (idempotent).")
    p.add_argument("--month", help="YYYY-MM (default: this month)")
    p = action("recover", "Settle requests that stopped servers left open.")
    p.add_argument("--stale-after", type=float, default=60.0, help="seconds without a heartbeat")
    action("audit", "Check that running totals equal the ledger.")
    p = action("usage", "An organisation's usage per day.")
    p.add_argument("org")
    p.add_argument("--days", type=int, default=31)
