"""The platform around the server: organisations, API keys, an exact usage ledger in integer
micro-dollars, plans and subscriptions, rate limits, and the adapter market's revenue share.

- `tables`: the schema (migrated by `lightseek.db`).
- `money`: micro-dollars, prices per 1,000 tokens, the rounding rule, revenue shares.
- `accounts`: organisations, users, plans, keys (stored as keyed hashes), prices, the market.
- `ledger`: reserve a request's worst case, settle its exact usage, recover after a crash.
- `ratelimit`: requests and tokens per minute and requests at once, as token buckets.
- `gate`: the server's side: check a key, admit a request, settle it when the engine ends it.
- `reports`: invoices, payout statements, usage summaries.
- `web`: the admin API and the usage page; `commands`: `lightseek admin`.
"""
