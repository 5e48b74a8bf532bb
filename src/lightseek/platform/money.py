"""Money as integers: micro-dollars (1 dollar = 1,000,000), prices per 1,000 tokens, the one
rounding rule, and the split of an adapter's earnings between its author and the platform.

Rounding is defined once: a part of a request (its prompt tokens, its completion tokens) costs
``tokens x price_per_1k / 1000`` micro-dollars rounded half up; at the default price (0.002
dollars = 2,000 micro-dollars per 1,000 tokens) every token costs exactly 2 and nothing rounds.
An author's share is rounded down and the platform keeps the rest, so the two always sum to the
amount charged: no micro-dollar is created or lost.
"""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation

from lightseek.errors import ConfigError

MICROS = 1_000_000
DEFAULT_PRICE_PER_1K = 2_000  # 0.002 dollars per 1,000 tokens
DEFAULT_SHARE_BP = 7_000      # an adapter's author receives 70%


def parse_dollars(text: str | int | float, what: str = "amount") -> int:
    """Micro-dollars from a decimal string ('0.002', '20'); more than six decimals is an error."""
    try:
        d = Decimal(str(text))
    except InvalidOperation:
        raise ConfigError(f"{what}: {text!r} is not a dollar amount") from None
    if not d.is_finite() or d > 10**12:
        raise ConfigError(f"{what}: {text!r} is not a dollar amount (finite, at most 10^12)")
    micros = d * MICROS
    if micros != micros.to_integral_value() or d < 0:
        raise ConfigError(f"{what}: {text!r} must be a non-negative amount with at most 6 decimals")
    return int(micros)


def dollars(micros: int) -> str:
    """'12.345678' from micro-dollars: exact, six decimals."""
    sign = "-" if micros < 0 else ""
    q, r = divmod(abs(int(micros)), MICROS)
    return f"{sign}{q}.{r:06d}"


def cost(tokens: int, price_per_1k: int) -> int:
    """What ``tokens`` cost at ``price_per_1k`` micro-dollars per 1,000 tokens, rounded half up."""
    return (tokens * price_per_1k * 2 + 1000) // 2000


def split_share(amount: int, share_bp: int) -> tuple[int, int]:
    """(author, platform) parts of ``amount``: the author's rounded down, the platform's the rest."""
    author = amount * share_bp // 10_000
    return author, amount - author


def parse_share(text: str | float) -> int:
    """Basis points from a fraction ('0.7') or a percentage ('70%')."""
    s = str(text).strip()
    try:
        d = Decimal(s[:-1]) / 100 if s.endswith("%") else Decimal(s)
    except InvalidOperation:
        raise ConfigError(f"share: {text!r} is not a fraction or a percentage") from None
    if not d.is_finite():
        raise ConfigError(f"share: {text!r} is not a fraction or a percentage")
    bp = d * 10_000
    if not 0 <= d <= 1 or bp != bp.to_integral_value():
        raise ConfigError(f"share: {text!r} must lie in [0, 1] with at most 4 decimals (or 0%-100%)")
    return int(bp)


def period_of(t: float | None = None) -> str:
    """The billing period (UTC calendar month, 'YYYY-MM') that time ``t`` falls in."""
    return time.strftime("%Y-%m", time.gmtime(time.time() if t is None else t))


def check_period(text: str, allow_future: bool = False) -> str:
    """``text`` if it is a month written YYYY-MM (one spelling per month: fees are charged once
    per spelling) and, unless ``allow_future``, not after this one."""
    import re

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", str(text)):
        raise ConfigError(f"month: {text!r} is not a month like 2026-11")
    if not allow_future and text > period_of():
        raise ConfigError(f"month: {text} has not begun")
    return text
