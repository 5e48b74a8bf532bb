"""Rate limits as token buckets: requests per minute, tokens per minute and requests at once, for
each key and each organisation (its plan's limits unless it has its own).

A bucket holds up to its per-minute limit and refills continuously, so a burst may use a whole
minute's allowance at once and never more. A request takes one request and its worst-case tokens
(prompt plus max_tokens) from every bucket it is subject to, or from none: the check and the
taking happen under one lock. When it ends, the tokens it did not use go back. The buckets live
in the server process: each server process enforces the limits on its own traffic.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Bucket:
    capacity: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60.0)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is in the bucket (inf if it never fits)."""
        if amount > self.capacity or self.capacity <= 0:
            return math.inf
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: float, headers: dict[str, str]):
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers


@dataclass
class Limits:
    rpm: int | None
    tpm: int | None
    concurrency: int | None


@dataclass
class _Scope:
    requests: Bucket | None
    tokens: Bucket | None
    running: int = 0
    limits: Limits = field(default_factory=lambda: Limits(None, None, None))


class RateLimiter:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.scopes: dict[str, _Scope] = {}

    def _scope(self, name: str, limits: Limits, now: float) -> _Scope:
        s = self.scopes.get(name)
        if s is None or s.limits != limits:  # new, or its limits changed: start full
            s = _Scope(Bucket(limits.rpm, limits.rpm, now) if limits.rpm is not None else None,
                       Bucket(limits.tpm, limits.tpm, now) if limits.tpm is not None else None,
                       s.running if s else 0, limits)
            self.scopes[name] = s
        return s

    def acquire(self, scopes: dict[str, Limits], tokens: int) -> dict[str, str]:
        """Take one request and ``tokens`` from every scope, or raise `RateLimited` naming the
        first limit that refuses (with the wait until it would fit). Returns the x-ratelimit-*
        headers of the tightest scope."""
        with self.lock:
            now = self.clock()
            taken = [(name, self._scope(name, lim, now)) for name, lim in scopes.items()]
            for name, s in taken:
                for b in (s.requests, s.tokens):
                    if b is not None:
                        b.refill(now)
                checks = [("requests per minute", s.requests, 1), ("tokens per minute", s.tokens, tokens)]
                for what, b, amount in checks:
                    if b is not None and b.level < amount:
                        wait = b.wait_for(amount)
                        msg = (f"rate limit of {name}: {b.capacity:.0f} {what}" +
                               (f"; this request needs {amount} tokens, more than a minute allows"
                                if math.isinf(wait) else ""))
                        raise RateLimited(msg, wait, _headers(s, 0 if math.isinf(wait) else wait))
                if s.limits.concurrency is not None and s.running >= s.limits.concurrency:
                    raise RateLimited(f"rate limit of {name}: {s.limits.concurrency} requests at once", 1.0,
                                      _headers(s, 1.0))
            for _, s in taken:
                if s.requests is not None:
                    s.requests.level -= 1
                if s.tokens is not None:
                    s.tokens.level -= tokens
                s.running += 1
            return _headers(min((s for _, s in taken), key=_remaining), 0.0) if taken else {}

    def release(self, scopes: list[str], unused_tokens: int) -> None:
        """A request ended: it no longer runs, and the tokens it did not use go back."""
        with self.lock:
            for name in scopes:
                s = self.scopes.get(name)
                if s is None:
                    continue
                s.running = max(0, s.running - 1)
                if s.tokens is not None and unused_tokens > 0:
                    s.tokens.level = min(s.tokens.capacity, s.tokens.level + unused_tokens)


def _remaining(s: _Scope) -> float:
    return min(s.requests.level / s.requests.capacity if s.requests and s.requests.capacity else 1.0,
               s.tokens.level / s.tokens.capacity if s.tokens and s.tokens.capacity else 1.0)


def _headers(s: _Scope, wait: float) -> dict[str, str]:
    """OpenAI's rate-limit headers for one scope."""
    h = {}
    for kind, b in (("requests", s.requests), ("tokens", s.tokens)):
        if b is not None:
            h[f"x-ratelimit-limit-{kind}"] = str(int(b.capacity))
            h[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(b.level)))
            h[f"x-ratelimit-reset-{kind}"] = f"{b.wait_for(b.capacity) if b.level < b.capacity else 0:.3f}s"
    if wait:
        h["Retry-After"] = str(max(1, math.ceil(wait)))
    return h
