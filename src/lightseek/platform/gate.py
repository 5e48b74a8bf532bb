"""The platform in front of the server: `Gate` checks each request's key, applies its rate limits
and reserves its worst case, and settles it when the engine says it ended.

Settling follows the engine, not the HTTP side: the host reports every request that ends
(finished, stopped, cancelled because its client went away, failed) on the engine thread, and
the gate's own thread groups a request's ``n`` choices and writes the ledger, so that no database
write ever holds up a decoding step and no way of ending escapes billing. The same thread records
running requests' progress and this server's heartbeat every second; a server killed mid-request
is settled at that progress by the next server that starts on the database.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from lightseek.platform.accounts import KeyContext
from lightseek.platform.ledger import Ticket, open_store
from lightseek.platform.ratelimit import Limits, RateLimiter

log = logging.getLogger("lightseek.platform")


class AccessError(Exception):
    """A key that may not use the model or adapter it asked for (HTTP 403)."""


@dataclass
class _Open:
    ticket: Ticket
    scopes: list[str]
    n: int
    reqs: list = field(default_factory=list)
    ended: dict[int, tuple[int, str, bool]] = field(default_factory=dict)  # choice -> (tokens, finish, started)


class Gate:
    def __init__(self, url: str, secret: str | bytes | None = None, *, progress_every: float = 1.0,
                 recover_after: float = 60.0):
        self.engine, self.accounts, self.ledger = open_store(url, secret)
        self.ledger.register_server()
        self.recover_after = recover_after
        recovered = self.ledger.recover(stale_after=recover_after)
        if recovered:
            log.warning("settled %d requests that a stopped server left open", len(recovered))
        self.limiter = RateLimiter()
        self.open: dict[str, _Open] = {}
        self._lock = threading.Lock()
        self._ended: queue.Queue = queue.Queue()
        self._progress_every = progress_every
        self._stop = False
        self._idle = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="lightseek-ledger", daemon=True)
        self.thread.start()

    # --- before a request runs ----------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> KeyContext:
        key = authorization.split(" ", 1)[1].strip() if authorization and " " in authorization else authorization
        return self.accounts.authenticate(key)

    @staticmethod
    def check_access(ctx: KeyContext, model: str, adapter: str | None) -> None:
        if ctx.allowed_models is not None and model not in ctx.allowed_models:
            raise AccessError(f"this key may not use the model {model!r}")
        if adapter and ctx.allowed_adapters is not None and adapter not in ctx.allowed_adapters:
            raise AccessError(f"this key may not use the adapter {adapter!r}")

    def admit(self, ctx: KeyContext, request_id: str, model: str, adapter: str | None, prompt_tokens: int,
              max_completion_tokens: int, n: int) -> dict[str, str]:
        """Rate limits, then the reservation; `RateLimited` or `BudgetError` if either refuses.
        Returns the rate-limit headers for the response."""
        worst = prompt_tokens + max_completion_tokens
        scopes = {f"key {ctx.key_id}": Limits(*ctx.key_limits), f"organisation {ctx.org}": Limits(*ctx.org_limits)}
        headers = self.limiter.acquire(scopes, worst)
        try:
            ticket = self.ledger.reserve(ctx, request_id, model, adapter, prompt_tokens, max_completion_tokens)
        except BaseException:
            self.limiter.release(list(scopes), worst)
            raise
        with self._lock:
            self.open[request_id] = _Open(ticket, list(scopes), n)
        return headers

    def track(self, request_id: str, reqs: list) -> None:
        """The engine requests of an admitted request (their progress is recorded while they run)."""
        with self._lock:
            if request_id in self.open:
                self.open[request_id].reqs = list(reqs)

    # --- when it ends -------------------------------------------------------------------------------
    def ended(self, req) -> None:
        """The host's callback (engine thread) for each engine request that ended."""
        meta = getattr(req, "meta", None) or {}
        if "id" in meta:
            self._ended.put((meta["id"], meta.get("choice", 0), req.completion_tokens, req.finish_reason,
                             _started(req)))

    def refuse(self, request_id: str) -> None:
        """An admitted request that never reached the engine: nothing is billed."""
        self._ended.put((request_id, None, 0, "refused", False))

    def finish(self, request_id: str, completion_tokens: int = 0, finish: str = "stop") -> None:
        """An admitted request served outside the engine (embeddings): bill it as it is."""
        self._ended.put((request_id, None, completion_tokens, finish, True))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every ended request is settled (tests, and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while not self._ended.empty() or self._busy():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def _busy(self) -> bool:
        with self._lock:
            return any(len(o.ended) >= o.n for o in self.open.values())

    def close(self) -> None:
        self.wait_idle(5.0)
        self._stop = True
        self.thread.join(timeout=5)
        self.engine.dispose()

    # --- the ledger thread --------------------------------------------------------------------------
    RECOVER_EVERY = 30.0  # seconds: other servers' leftovers are looked for while this one runs, too

    def _loop(self) -> None:
        last = 0.0
        last_recover = time.monotonic()
        while not self._stop:
            try:
                item = self._ended.get(timeout=self._progress_every)
            except queue.Empty:
                item = None
            if item is not None:
                self._take(*item)
            if time.monotonic() - last >= self._progress_every:
                last = time.monotonic()
                self._guard(self.ledger.heartbeat, self._progress())
                self._settle_ready()
            if time.monotonic() - last_recover >= self.RECOVER_EVERY:
                last_recover = time.monotonic()
                self._guard(self.ledger.recover, self.recover_after)
            with self._idle:
                self._idle.notify_all()

    def _take(self, request_id: str, choice: int | None, tokens: int, finish: str, started: bool) -> None:
        with self._lock:
            o = self.open.get(request_id)
            if o is None:
                return
            if choice is None:  # the whole request at once (refused, or served outside the engine)
                o.ended = {i: (tokens if i == 0 else 0, finish, started) for i in range(o.n)}
            else:
                o.ended[choice] = (tokens, finish, started)
        self._settle_ready()

    def _settle_ready(self) -> None:
        """Settle every request whose choices have all ended (a failed write is tried again later)."""
        with self._lock:
            ready = [(rid, o) for rid, o in self.open.items() if len(o.ended) >= o.n]
        for rid, o in ready:
            completion = sum(t for t, _, _ in o.ended.values())
            finishes = {f for _, f, _ in o.ended.values()}
            outcome = next((f for f in ("error", "cancelled", "refused") if f in finishes), "finished")
            prompt = _prompt_billed(o)
            if self._guard(self.ledger.settle, rid, prompt, completion, outcome) is False:
                continue  # tried again at the next tick; the others are not held up
            with self._lock:
                self.open.pop(rid, None)
            self.limiter.release(o.scopes, o.ticket.worst_tokens - prompt - completion)

    def _progress(self) -> dict[str, tuple[bool, int]]:
        with self._lock:
            return {rid: (any(_started(r) for r in o.reqs), sum(r.completion_tokens for r in o.reqs))
                    for rid, o in self.open.items() if o.reqs}

    @staticmethod
    def _guard(fn, *args):
        """Run a ledger write; a failure is logged (the reservation stays open and is retried)."""
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 -- the database may be briefly unreachable
            log.exception("ledger write failed (%s); it is retried", fn.__name__)
            return False


def _prompt_billed(o: _Open) -> int:
    """The prompt tokens to bill: a prompt is billed once it was processed for any of its choices
    (not one cancelled while it waited, nor a refused request). A request of several prompts
    (completions) bills those that ran; one served outside the engine, its whole prompt."""
    started = {c for c, (_, _, s) in o.ended.items() if s}
    if not started:
        return 0
    if not o.reqs:
        return o.ticket.prompt_tokens
    prompts: dict[int, int] = {}
    for r in o.reqs:
        if r.meta.get("choice") in started:
            prompts[r.meta.get("prompt", 0)] = len(r.prompt_ids)
    return min(sum(prompts.values()), o.ticket.prompt_tokens)


def _started(req) -> bool:
    """Whether the engine processed (some of) the request's prompt."""
    return bool(getattr(req, "prefilled", 0) or req.output_ids)
