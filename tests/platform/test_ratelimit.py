"""Token buckets: a burst never takes more than a minute's allowance, the rate over time never
exceeds the limit, requests at once are capped, unused tokens come back."""

from __future__ import annotations

import threading

import pytest

from lightseek.platform.ratelimit import Limits, RateLimited, RateLimiter


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_burst_never_exceeds_the_limit_and_the_rate_over_time_holds() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    scopes = {"key": Limits(rpm=60, tpm=None, concurrency=None)}
    ok = 0
    results = []

    def burst():
        try:
            rl.acquire(scopes, 0)
            results.append("ok")
        except RateLimited as e:
            results.append(e.retry_after)
    threads = [threading.Thread(target=burst) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 60
    assert all(r == "ok" or 0 < r <= 1.0 for r in results)
    # then a request a second is what refills: over ten minutes, at most 60 + 600
    for step in range(6000):
        clock.t += 0.1
        try:
            rl.acquire(scopes, 0)
            ok += 1
        except RateLimited:
            pass
        rl.release(["key"], 0)
    assert ok <= 600 and ok >= 590


def test_tokens_per_minute_concurrency_and_refunds() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    scopes = {"key": Limits(None, 1000, None), "org": Limits(None, None, 2)}
    h = rl.acquire(scopes, 600)
    assert h["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimited, match="1000 tokens per minute") as e:
        rl.acquire(scopes, 500)
    assert e.value.headers["Retry-After"] == "6"  # 100 tokens short at 1000 a minute
    rl.release(["key", "org"], 550)                 # used 50 of its 600
    rl.acquire(scopes, 900)
    rl.acquire(scopes, 0)
    with pytest.raises(RateLimited, match="2 requests at once"):
        rl.acquire(scopes, 0)
    with pytest.raises(RateLimited, match="more than a minute allows"):
        RateLimiter(clock).acquire({"key": Limits(None, 1000, None)}, 1001)
    # a refused request takes nothing from any scope
    rl2 = RateLimiter(clock)
    both = {"a": Limits(10, None, None), "b": Limits(1, None, None)}
    rl2.acquire(both, 0)
    with pytest.raises(RateLimited):
        rl2.acquire(both, 0)
    assert rl2.scopes["a"].requests.level == 9
