"""The OpenAI-compatible HTTP API over the engine (FastAPI).

The engine runs in one background thread (`EngineHost`); handlers submit requests to it and
receive its events through asyncio queues. Errors have OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``: 400 for bad JSON or parameters, 404 for
an unknown model, 429 (with Retry-After) when the queue is full; bad input never yields a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lightseek.data.chat import encode_chat, validate_messages
from lightseek.errors import LightseekError
from lightseek.serve.engine import Engine, Event, GenParams, QueueFull, Request


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}},
                        status_code=e.status, headers=e.headers)


# --- the engine thread -------------------------------------------------------------------------
class EngineHost:
    """Runs the engine in one thread. Other threads never wait for a step: `submit` checks a
    request and hands it over through a queue, `cancel` likewise; the engine thread takes both
    in before each step and calls each request's listener with its events."""

    def __init__(self, engine: Engine, usage_log: str | Path | None = None):
        self.engine = engine
        # one JSON line per ended request (finished, stopped or cancelled): the exact token
        # counts billing needs, including requests whose client went away mid-stream
        self.usage_log = open(usage_log, "a", encoding="utf-8") if usage_log else None  # noqa: SIM115
        self._inbox: deque = deque()      # ("submit", request, listener) | ("cancel", request, None)
        self._wake = threading.Event()
        self.listeners: dict[int, Any] = {}
        self.metrics = {"requests": 0, "prompt_tokens": 0, "generation_tokens": 0, "ttft_sum": 0.0,
                        "ttft_count": 0, "itl_sum": 0.0, "itl_count": 0, "batch_sum": 0, "steps": 0}
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
            except Exception as e:  # handed back to the caller's coroutine
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
        if self.usage_log is None:
            return
        rec = {"time": time.time(), **req.meta, "request": req.id, "adapter": req.adapter,
               "prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.output_ids),
               "finish_reason": req.finish_reason}
        self.usage_log.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.usage_log.flush()

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
            events = self.engine.step()
            deliveries: dict[asyncio.AbstractEventLoop, list] = {}
            now = time.perf_counter()
            self.metrics["steps"] += 1
            self.metrics["batch_sum"] += batch
            for e in events:
                rid = e.request.id
                if e.token_ids:
                    self.metrics["generation_tokens"] += len(e.token_ids)
                    if rid in self._last_token:
                        self.metrics["itl_sum"] += now - self._last_token[rid]
                        self.metrics["itl_count"] += 1
                    elif rid in self._started:
                        self.metrics["ttft_sum"] += now - self._started[rid]
                        self.metrics["ttft_count"] += 1
                    self._last_token[rid] = now
                if rid in self.listeners:
                    on_event, loop = self.listeners[rid]
                    deliveries.setdefault(loop, []).append((on_event, e))
                if e.finished:
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


class _Lazy:
    def __init__(self, get) -> None:
        self._get = get

    def __getattr__(self, name: str):
        return getattr(self._get(), name)


# --- request bodies ----------------------------------------------------------------------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class CommonParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # an extension (as in vLLM): generate max_tokens whatever the model says


class CompletionBody(CommonParams):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None


class ChatBody(CommonParams):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    model: str | None = None


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[str]
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokens: list[int]
    model: str | None = None


# --- the app -----------------------------------------------------------------------------------
def build_app(host: EngineHost, model_id: str, adapters: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="lightseek", version="1", description="OpenAI-compatible API for lightseek models.")
    # looked up at each use: ``host`` may be a `PendingHost` that is filled in once the model loads
    engine, tokenizer = _Lazy(lambda: host.engine), _Lazy(lambda: host.engine.tokenizer)
    adapters = adapters if adapters is not None else []

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, "the request body is not valid JSON", code="invalid_json"))
        msg = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
        return error_response(ApiError(400, msg, param=".".join(loc) or None, code="invalid_value"))

    def resolve_model(name: str) -> str | None:
        if name == model_id:
            return None
        if name.startswith(model_id + ":") and name.split(":", 1)[1] in adapters:
            return name.split(":", 1)[1]
        raise ApiError(404, f"the model {name!r} does not exist (see GET /v1/models)", param="model",
                       code="model_not_found")

    def gen_params(body: CommonParams, logprobs: int | None, index: int) -> GenParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        seed = body.seed + index if body.seed is not None else None
        try:
            return GenParams(max_tokens=body.max_completion_tokens or body.max_tokens or 16,
                             temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=stop,
                             seed=seed, logprobs=logprobs, ignore_eos=body.ignore_eos)
        except LightseekError as e:
            raise ApiError(400, str(e), code="invalid_value") from None

    async def run(prompt_ids: list[int], body: CommonParams, adapter, logprobs,
                  api_id: str) -> tuple[list[Request], asyncio.Queue]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        reqs: list[Request] = []
        try:
            for i in range(body.n):
                reqs.append(host.submit(prompt_ids, gen_params(body, logprobs, i), adapter, queue.put_nowait,
                                        {"id": api_id, "choice": i, "model": body.model, "user": body.user}, loop))
        except QueueFull as e:
            for r in reqs:
                host.cancel(r)
            raise ApiError(429, f"the server is busy ({e}); retry shortly", kind="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except LightseekError as e:
            for r in reqs:
                host.cancel(r)
            raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        return reqs, queue

    def usage(reqs: list[Request]) -> dict:
        p = len(reqs[0].prompt_ids)
        c = sum(len(r.output_ids) for r in reqs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def finish(r: Request) -> str:
        return "stop" if r.finish_reason in ("stop", "cancelled") else "length"

    async def collect(reqs, queue) -> None:
        while not all(r.done for r in reqs):
            await queue.get()

    def stream(reqs, queue, chunk, final_usage: bool):
        async def gen():
            try:
                while not all(r.done for r in reqs) or not queue.empty():
                    events = [await queue.get()]
                    while not queue.empty():  # a client that fell behind gets its backlog in one chunk per choice
                        events.append(queue.get_nowait())
                    out = [f"data: {json.dumps(chunk(reqs.index(ev.request), ev), ensure_ascii=False)}\n\n"
                           for ev in _merge(events) if ev.text or ev.finished]
                    if out:
                        yield "".join(out)
                if final_usage:
                    yield f"data: {json.dumps(chunk(None, None) | {'choices': [], 'usage': usage(reqs)})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # a client that went away: free its slots now
                for r in reqs:
                    if not r.done:
                        host.cancel(r)

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def respond(body: CommonParams, reqs, queue, rid: str, kind: str, chunk_kind: str, delta, choice):
        """The OpenAI response for ``reqs``: streamed chunks (``delta(i, event)`` per choice) or,
        once all are done, the whole choices (``choice(request)``), with usage."""
        created = int(time.time())

        def head(obj: str) -> dict:
            return {"id": rid, "object": obj, "created": created, "model": body.model}

        def chunk(i, ev):
            if ev is None:
                return head(chunk_kind)
            return head(chunk_kind) | {"choices": [{"index": i, **delta(i, ev), "logprobs": None,
                                                    "finish_reason": finish(ev.request) if ev.finished else None}]}

        if body.stream:
            return stream(reqs, queue, chunk, bool(body.stream_options and body.stream_options.include_usage))
        await collect(reqs, queue)
        return head(kind) | {"choices": [{"index": i, **choice(r), "finish_reason": finish(r)} for i, r in enumerate(reqs)],
                             "usage": usage(reqs)}

    def chat_ids(messages: list[ChatMessage]) -> list[int]:
        """The conversation's token ids with the generation prompt; a 400 naming a bad message."""
        try:
            msgs = validate_messages([{"role": m.role, "content": m.content or ""} for m in messages])
        except LightseekError as e:
            raise ApiError(400, f"messages: {e}", param="messages", code="invalid_value") from None
        return encode_chat(tokenizer, msgs, add_generation_prompt=True)[0]

    @app.get("/health")
    async def health():
        if not getattr(host, "ready", True):
            return error_response(ApiError(503, "the model is still loading", kind="server_error",
                                           code="model_loading", headers={"Retry-After": "5"}))
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        data = [{"id": model_id, "object": "model", "created": now, "owned_by": "lightseek"}]
        data += [{"id": f"{model_id}:{a}", "object": "model", "created": now, "owned_by": "lightseek",
                  "parent": model_id} for a in adapters]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        adapter = resolve_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt: give one prompt per request", param="prompt", code="invalid_value")
        ids = tokenizer.encode(prompts[0])
        if not ids:
            raise ApiError(400, "prompt: the prompt is empty", param="prompt", code="invalid_value")
        rid = f"cmpl-{uuid.uuid4().hex}"
        reqs, queue = await run(ids, body, adapter, body.logprobs, rid)
        return await respond(
            body, reqs, queue, rid, "text_completion", "text_completion", lambda i, ev: {"text": ev.text},
            lambda r: {"text": (prompts[0] if body.echo else "") + r.text,
                       "logprobs": _completion_logprobs(r, tokenizer) if body.logprobs is not None else None})

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        adapter = resolve_model(body.model)
        if not body.messages:
            raise ApiError(400, "messages: give at least one message", param="messages", code="invalid_value")
        ids = chat_ids(body.messages)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        reqs, queue = await run(ids, body, adapter, (body.top_logprobs or 0) if body.logprobs else None, rid)
        started: set[int] = set()

        def delta(i, ev) -> dict:
            d = {"content": ev.text} if ev.text else {}
            if i not in started:  # the first chunk of a choice names the role
                started.add(i)
                d = {"role": "assistant", **d}
            return {"delta": d}

        return await respond(
            body, reqs, queue, rid, "chat.completion", "chat.completion.chunk", delta,
            lambda r: {"message": {"role": "assistant", "content": r.text},
                       "logprobs": _chat_logprobs(r, tokenizer) if body.logprobs else None})

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingBody):
        adapter = resolve_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not t for t in texts):
            raise ApiError(400, "input: give non-empty strings", param="input", code="invalid_value")
        if len(texts) > 256:
            raise ApiError(400, "input: at most 256 strings per request", param="input", code="invalid_value")
        dim = engine.model.cfg.dim
        if body.dimensions is not None and body.dimensions != dim:
            raise ApiError(400, f"dimensions: this model's embeddings have {dim}", param="dimensions",
                           code="invalid_value")
        if body.encoding_format not in ("float", "base64"):
            raise ApiError(400, "encoding_format: 'float' or 'base64'", param="encoding_format", code="invalid_value")
        ids = [tokenizer.encode(t) for t in texts]
        too_long = [i for i, x in enumerate(ids) if len(x) > engine.max_len]
        if too_long:
            raise ApiError(400, f"input[{too_long[0]}]: {len(ids[too_long[0]])} tokens; the context holds "
                           f"{engine.max_len}", param="input", code="context_length_exceeded")
        vectors = await host.call(lambda eng: _embed(eng.model, ids, adapter))
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":
                import base64

                import numpy as np

                emb: Any = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
            else:
                emb = v
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(x) for x in ids)
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeBody):
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of prompt and messages", param="prompt", code="invalid_value")
        ids = tokenizer.encode(body.prompt) if body.prompt is not None else chat_ids(body.messages)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeBody):
        bad = [t for t in body.tokens if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise ApiError(400, f"tokens: ids out of range [0, {tokenizer.vocab_size}): {bad[:3]}", param="tokens",
                           code="invalid_value")
        return {"prompt": tokenizer.decode(body.tokens)}

    @app.get("/metrics")
    async def metrics():
        m, st, sums = host.snapshot()
        lines = [
            "# TYPE lightseek_requests_total counter", f"lightseek_requests_total {m['requests']}",
            "# TYPE lightseek_prompt_tokens_total counter", f"lightseek_prompt_tokens_total {m['prompt_tokens']}",
            "# TYPE lightseek_generation_tokens_total counter",
            f"lightseek_generation_tokens_total {m['generation_tokens']}",
            "# TYPE lightseek_time_to_first_token_seconds summary",
            f"lightseek_time_to_first_token_seconds_sum {m['ttft_sum']:.6f}",
            f"lightseek_time_to_first_token_seconds_count {m['ttft_count']}",
            "# TYPE lightseek_inter_token_latency_seconds summary",
            f"lightseek_inter_token_latency_seconds_sum {m['itl_sum']:.6f}",
            f"lightseek_inter_token_latency_seconds_count {m['itl_count']}",
            "# TYPE lightseek_requests_running gauge", f"lightseek_requests_running {st['running']}",
            "# TYPE lightseek_requests_waiting gauge", f"lightseek_requests_waiting {st['waiting']}",
            "# TYPE lightseek_slots_free gauge", f"lightseek_slots_free {st['free_slots']}",
            "# TYPE lightseek_engine_steps_total counter", f"lightseek_engine_steps_total {m['steps']}",
            "# TYPE lightseek_batch_size_mean gauge",
            f"lightseek_batch_size_mean {m['batch_sum'] / max(m['steps'], 1):.4f}",
            "# TYPE lightseek_kv_cache_usage gauge", f"lightseek_kv_cache_usage {st['kv_usage']:.6f}",
            "# TYPE lightseek_expert_tokens_total counter",
        ]
        if sums is not None:
            for i, row in enumerate(sums[0].tolist()):
                layer = engine.model.cfg.n_dense_layers + i
                lines += [f'lightseek_expert_tokens_total{{layer="{layer}",expert="{e}"}} {int(v)}'
                          for e, v in enumerate(row)]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app


def _merge(events: list[Event]) -> list[Event]:
    """Consecutive events of one request as one (text and ids joined), in first-seen order."""
    merged: dict[int, Event] = {}
    for ev in events:
        m = merged.get(ev.request.id)
        merged[ev.request.id] = ev if m is None else Event(ev.request, m.token_ids + ev.token_ids, m.text + ev.text,
                                                            ev.finished)
    return list(merged.values())


def _embed(model, ids: list[list[int]], adapter: str | None) -> list[list[float]]:
    """Mean of the final hidden states over each text's tokens, L2-normalised."""
    import torch

    from lightseek.adapters.lora import use_adapters

    out = []
    with torch.no_grad(), use_adapters(model, adapter):
        for x in ids:  # one at a time: no padding to reason about
            h = model(torch.tensor([x]), return_hidden=True, last_only=True).hidden[0]
            v = h.float().mean(0)
            out.append((v / v.norm().clamp_min(1e-12)).tolist())
    return out


def _chat_logprobs(r: Request, tokenizer) -> dict:
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [entry(e["token"], e["logprob"]) | {"top_logprobs": [entry(i, v) for i, v in e.get("top", [])]}
                        for e in r.logprobs[:len(r.output_ids)]]}


def _completion_logprobs(r: Request, tokenizer) -> dict:
    entries = r.logprobs[:len(r.output_ids)]  # not the end-of-text token that finished it
    tokens = [tokenizer.decode([e["token"]]) for e in entries]
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{tokenizer.decode([i]): v for i, v in e.get("top", [])} for e in entries],
            "text_offset": offsets}
