"""The engine's thread (`EngineHost`) and its stand-in while the model loads (`PendingHost`).

Handlers never wait for an engine step: they hand requests over through `EngineHost.submit`
and receive each request's events in their own event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from lightseek.serve.engine import Engine, GenParams, QueueFull, Request
from lightseek.serve.schemas import ApiError

# Latency histogram buckets (seconds): from a cached prompt's first token on a small model to a
# long queue; inter-token latency from a GPU's fastest decode step to a loaded CPU's slowest.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Latencies:
    """The server's latency histograms, in a registry of their own (one per host, so that two
    servers in one process never share counts): time to first token, time between a request's
    token deliveries, and each finished request's whole time, all from its submission."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.ttft = Histogram("lightseek_time_to_first_token_seconds", "Submission to first generated token.",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("lightseek_inter_token_latency_seconds", "Time between a request's token deliveries.",
                             buckets=ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram("lightseek_request_latency_seconds", "Submission to the end of a finished request.",
                             buckets=E2E_BUCKETS, registry=self.registry)

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


class EngineHost:
    """Runs the engine in one thread. Other threads never wait for a step: `submit` checks a
    request and hands it over through a queue, `cancel` likewise; the engine thread takes both
    in before each step and calls each request's listener with its events."""

    def __init__(self, engine: Engine, usage_log: str | Path | None = None, on_end=None):
        self.engine = engine
        # called on the engine thread with each request that ended, however it ended (the
        # platform's ledger settles from it); it must not block
        self.on_end = on_end
        # one JSON line per ended request (finished, stopped or cancelled): the exact token
        # counts billing needs, including requests whose client went away mid-stream
        self.usage_log = open(usage_log, "a", encoding="utf-8") if usage_log else None  # noqa: SIM115
        self._inbox: deque = deque()      # ("submit", request, listener) | ("cancel", request, None)
        self._wake = threading.Event()
        self.listeners: dict[int, Any] = {}
        self.metrics = {"requests": 0, "prompt_tokens": 0, "generation_tokens": 0, "batch_sum": 0, "steps": 0}
        self.latencies = Latencies()
        self._last_token: dict[int, float] = {}
        self._started: dict[int, float] = {}
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name="lightseek-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt_ids, params: GenParams, adapter: str | None, on_event, meta: dict | None,
               loop: asyncio.AbstractEventLoop) -> Request:
        """Queue a request; ``on_event(event)`` is called with each of its events in ``loop``'s
        thread (one wake-up of the loop per step carries every event of that step)."""
        req = self.engine.make_request(prompt_ids, params, adapter)  # ConfigError for bad input
        req.meta = dict(meta or {})
        queued = len(self.engine.waiting) + sum(1 for kind, *_ in list(self._inbox) if kind == "submit")
        if queued >= self.engine.max_waiting:
            raise QueueFull(f"{queued} requests are waiting already")
        self._started[req.id] = time.perf_counter()
        self._inbox.append(("submit", req, (on_event, loop)))
        self._wake.set()
        return req

    def cancel(self, req: Request) -> None:
        self._inbox.append(("cancel", req, None))
        self._wake.set()

    async def call(self, fn):
        """Run ``fn(engine)`` on the engine thread between steps (the model is not re-entrant:
        adapter choice and routing statistics live on it); returns its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result, error):
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(result)

        def run(engine):
            try:
                result = fn(engine)
            except Exception as e:  # noqa: BLE001 -- handed back to the caller's coroutine
                loop.call_soon_threadsafe(done, None, e)
            else:
                loop.call_soon_threadsafe(done, result, None)

        self._inbox.append(("call", run, None))
        self._wake.set()
        return await fut

    def snapshot(self) -> tuple[dict, dict, Any]:
        """Metrics, engine stats and routing sums (read without stopping the engine)."""
        return dict(self.metrics), self.engine.stats(), self.engine.model.routing_sums()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self.thread.join(timeout=5)
        if self.usage_log is not None:
            self.usage_log.close()

    def _record_usage(self, req: Request) -> None:
        # neither a failing callback nor a full disk may stop the engine thread
        if self.on_end is not None:
            try:
                self.on_end(req)
            except Exception:  # noqa: BLE001
                logging.getLogger("lightseek.serve").exception("the end-of-request callback failed")
        if self.usage_log is None:
            return
        rec = {"time": time.time(), **req.meta, "request": req.id, "adapter": req.adapter,
               "prompt_tokens": len(req.prompt_ids), "completion_tokens": req.completion_tokens,
               "finish_reason": req.finish_reason}
        try:
            self.usage_log.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.usage_log.flush()
        except (OSError, TypeError, ValueError):
            logging.getLogger("lightseek.serve").exception("could not write the usage log")

    def _forget(self, req: Request) -> None:
        self.listeners.pop(req.id, None)
        self._last_token.pop(req.id, None)
        self._started.pop(req.id, None)

    def _take_inbox(self) -> None:
        while self._inbox:
            kind, req, listener = self._inbox.popleft()
            if kind == "submit":
                self.listeners[req.id] = listener
                self.metrics["requests"] += 1
                self.metrics["prompt_tokens"] += len(req.prompt_ids)
                self.engine.enqueue(req)
            elif kind == "call":
                req(self.engine)  # a function, see `call`
            else:
                if not req.done:
                    self.engine.cancel(req)
                    self._record_usage(req)
                self._forget(req)

    def _loop(self) -> None:
        while not self._stop:
            self._take_inbox()
            if self.engine.idle:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            batch = len(self.engine.running)
            try:
                events = self.engine.step()
            except Exception:  # a failing step must not silently stop every stream and the server
                logging.getLogger("lightseek.serve").exception("engine step failed; its requests end with an error")
                events = self.engine.fail_running()
            deliveries: dict[asyncio.AbstractEventLoop, list] = {}
            now = time.perf_counter()
            self.metrics["steps"] += 1
            self.metrics["batch_sum"] += batch
            for e in events:
                rid = e.request.id
                if e.token_ids:
                    self.metrics["generation_tokens"] += len(e.token_ids)
                    if rid in self._last_token:
                        self.latencies.itl.observe(now - self._last_token[rid])
                    elif rid in self._started:
                        self.latencies.ttft.observe(now - self._started[rid])
                    self._last_token[rid] = now
                if rid in self.listeners:
                    on_event, loop = self.listeners[rid]
                    deliveries.setdefault(loop, []).append((on_event, e))
                if e.finished:
                    if rid in self._started:
                        self.latencies.e2e.observe(now - self._started[rid])
                    self._record_usage(e.request)
                    self._forget(e.request)
            for loop, items in deliveries.items():
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list) -> None:
    for on_event, event in items:
        on_event(event)


class PendingHost:
    """Stands in for the `EngineHost` while the model loads (`lightseek serve` answers at once):
    /health and every other endpoint answer 503 with Retry-After until `target` is set."""

    def __init__(self) -> None:
        self.target: EngineHost | None = None
        self.ready = False

    def set(self, target: EngineHost) -> None:
        self.target = target
        self.ready = True

    def __getattr__(self, name: str):
        target = self.__dict__.get("target")
        if target is None:
            raise ApiError(503, "the model is still loading; retry shortly", kind="server_error",
                           code="model_loading", headers={"Retry-After": "5"})
        return getattr(target, name)
