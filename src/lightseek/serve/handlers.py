"""What each endpoint does, apart from HTTP routing: `Handlers` checks a request, submits it
to the engine through the host and builds the OpenAI response (whole or streamed)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from lightseek.data.chat import TOOL_KEYS, encode_chat, validate_messages
from lightseek.errors import LightseekError
from lightseek.serve.engine import Event, GenParams, QueueFull, Request
from lightseek.serve.grammar import schema_of
from lightseek.serve.moderation import OutputGuard, moderate_input, policy_of
from lightseek.serve.schemas import (
    ApiError,
    ChatBody,
    ChatMessage,
    CommonParams,
    CompletionBody,
    DetokenizeBody,
    EmbeddingBody,
    ModerationBody,
    TokenizeBody,
    error_response,
)
from lightseek.serve.tools import call_format, check_tools, parse_calls, template_has_tools, template_messages

if TYPE_CHECKING:
    from lightseek.platform.accounts import KeyContext
    from lightseek.platform.gate import Gate
    from lightseek.serve.host import EngineHost, PendingHost


class Handlers:
    """The endpoints of one served model (``model_id``, and ``model_id:adapter`` for each name in
    ``adapters``; the list is read at each request, so names added later are served)."""

    def __init__(self, host: EngineHost | PendingHost, model_id: str, adapters: list[str] | None = None,
                 gate: Gate | None = None, moderator=None):
        self.host = host
        self.model_id = model_id
        self.adapters = adapters if adapters is not None else []
        self.gate = gate  # the platform (keys, limits, ledger), or None: an open server
        self.moderator = moderator  # content safety (lightseek.safety.cascade.Moderator), or None

    # looked up at each use: ``host`` may be a `PendingHost` that is filled in once the model loads
    @property
    def engine(self):
        return self.host.engine

    @property
    def tokenizer(self):
        return self.host.engine.tokenizer

    # --- shared steps ----------------------------------------------------------------------------
    def resolve_model(self, name: str) -> str | None:
        """The adapter that ``name`` asks for (None for the base model); a 404 for an unknown one."""
        if name == self.model_id:
            return None
        if name.startswith(self.model_id + ":") and name.split(":", 1)[1] in self.adapters:
            return name.split(":", 1)[1]
        raise ApiError(404, f"the model {name!r} does not exist (see GET /v1/models)", param="model",
                       code="model_not_found")

    def gen_params(self, body: CommonParams, logprobs: int | None, index: int,
                   prompt_logprobs: int | None = None) -> GenParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        seed = body.seed + index if body.seed is not None else None
        # a structured answer without a limit may use the rest of the context (as OpenAI's do):
        # 16 tokens would cut nearly every JSON answer
        try:
            default = self.engine.max_len if schema_of(body.response_format) is not None else 16
            return GenParams(max_tokens=body.max_completion_tokens or body.max_tokens or default,
                             temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=stop,
                             seed=seed, logprobs=logprobs, ignore_eos=body.ignore_eos,
                             response_format=body.response_format, prompt_logprobs=prompt_logprobs,
                             logit_bias=body.token_bias(), presence_penalty=body.presence_penalty,
                             frequency_penalty=body.frequency_penalty)
        except LightseekError as e:
            raise ApiError(400, str(e), param=_param_of(e, None), code="invalid_value") from None

    async def authorize(self, authorization: str | None) -> KeyContext | None:
        """The caller's key context (None on a server without the platform); a 401 for a bad key."""
        if self.gate is None:
            return None
        from lightseek.platform.accounts import AuthError

        try:
            return await asyncio.to_thread(self.gate.authenticate, authorization)
        except AuthError as e:
            raise ApiError(401, str(e), code=e.code) from None

    async def admit(self, ctx: KeyContext | None, api_id: str, adapter: str | None, prompt_tokens: int,
                    max_completion_tokens: int, n: int) -> dict[str, str]:
        """The platform's checks before a request runs: the key may use the model (403), its rate
        limits (429) and budgets (429 insufficient_quota) allow it. Returns rate-limit headers."""
        if ctx is None:
            return {}
        from lightseek.platform.gate import AccessError
        from lightseek.platform.ledger import BudgetError
        from lightseek.platform.ratelimit import RateLimited

        try:
            self.gate.check_access(ctx, self.model_id, adapter)
            admitted = asyncio.ensure_future(asyncio.to_thread(self.gate.admit, ctx, api_id, self.model_id, adapter,
                                                               prompt_tokens, max_completion_tokens, n))
            try:
                return await asyncio.shield(admitted)
            except asyncio.CancelledError:  # the reservation may still be made: undo it once it is
                admitted.add_done_callback(lambda f: f.cancelled() or f.exception() or self.gate.refuse(api_id))
                raise
        except AccessError as e:
            raise ApiError(403, str(e), param="model", code="model_not_allowed") from None
        except RateLimited as e:
            raise ApiError(429, str(e), kind="rate_limit_error", code="rate_limit_exceeded",
                           headers=e.headers) from None
        except BudgetError as e:
            raise ApiError(429, str(e), kind="insufficient_quota", code="insufficient_quota") from None

    async def run(self, prompts: list[list[int]], body: CommonParams, adapter, logprobs, api_id: str,
                  ctx: KeyContext | None = None,
                  prompt_logprobs: int | None = None) -> tuple[list[Request], asyncio.Queue, dict[str, str]]:
        """Submit ``body.n`` requests for each of ``prompts`` (choice ``p * n + j`` is the ``j``-th
        of prompt ``p``, as OpenAI numbers them); their events arrive in the returned queue. With
        the platform, the request is admitted (and its worst case reserved) first.
        ``prompt_logprobs``: each choice also scores its prompt while prefilling it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        choices = len(prompts) * body.n
        if choices > self.engine.max_waiting:  # it could never be queued: not a retry later, a 400
            raise ApiError(400, f"{choices} choices ({len(prompts)} prompts x n={body.n}) in one request; this server "
                           f"queues at most {self.engine.max_waiting} (serve --max-waiting)", param="prompt",
                           code="invalid_value")
        params = [self.gen_params(body, logprobs, i % body.n, prompt_logprobs)  # seeds as if sent alone
                  for i in range(choices)]
        headers = await self.admit(ctx, api_id, adapter, sum(map(len, prompts)), sum(p.max_tokens for p in params),
                                   choices)
        reqs: list[Request] = []
        try:
            for i, p in enumerate(params):
                reqs.append(self.host.submit(prompts[i // body.n], p, adapter, queue.put_nowait,
                                             {"id": api_id, "choice": i, "prompt": i // body.n, "model": body.model,
                                              "user": body.user, "key": ctx.key_id if ctx is not None else None,
                                              "policy": getattr(ctx, "safety_policy", None)},
                                             loop))
        except BaseException as e:  # whatever stops the submission, nothing admitted is left open
            for r in reqs:
                self.host.cancel(r)
            if ctx is not None:
                self.gate.refuse(api_id)
            if not isinstance(e, (QueueFull, LightseekError)):
                raise
            if isinstance(e, QueueFull):
                raise ApiError(429, f"the server is busy ({e}); retry shortly", kind="rate_limit_error",
                               code="queue_full", headers={"Retry-After": "1"}) from None
            where = f"prompt[{len(reqs) // body.n}]: " if len(prompts) > 1 else ""  # which one it was
            raise ApiError(400, where + str(e), param=_param_of(e, "prompt"), code="invalid_value") from None
        if ctx is not None:
            self.gate.track(api_id, reqs)
        return reqs, queue, headers

    @staticmethod
    def usage(reqs: list[Request]) -> dict:
        """Token counts: each prompt once, however many choices it has; every choice's output."""
        p = sum({r.meta.get("prompt", 0): len(r.prompt_ids) for r in reqs}.values())
        c = sum(r.completion_tokens for r in reqs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    @staticmethod
    def finish(r: Request) -> str:
        if OutputGuard.filtered(r):
            return "content_filter"
        return {"stop": "stop", "cancelled": "stop", "error": "error"}.get(r.finish_reason, "length")

    async def collect(self, reqs, queue, guard: OutputGuard) -> None:
        try:
            while not all(guard.ended(r) for r in reqs):
                guard.feed(await queue.get())
        finally:  # the handler was cancelled or a check failed: stop generating for nobody
            for r in reqs:
                if not r.done:
                    self.host.cancel(r)
        if any(r.finish_reason == "error" and not OutputGuard.filtered(r) for r in reqs):
            raise ApiError(500, "generation failed on the server (see its log); retry the request",
                           kind="server_error", code="generation_failed")

    def stream(self, reqs, queue, chunk, final_usage: bool, headers: dict[str, str],
               guard: OutputGuard) -> StreamingResponse:
        """Server-sent events: ``chunk(i, event)`` per choice as events arrive, then [DONE]. A
        choice the content policy stops gets a last chunk with finish_reason content_filter (the
        event that tripped the check is not sent)."""
        held: dict[int, list[int]] = {}

        async def gen():
            try:
                while not all(guard.ended(r) for r in reqs) or not queue.empty():
                    events = [await queue.get()]
                    while not queue.empty():  # a client that fell behind gets its backlog in one chunk per choice
                        events.append(queue.get_nowait())
                    shown = []
                    for ev in _merge(events):
                        if guard.filtered(ev.request):
                            continue  # stopped earlier: what is left of it was never shown
                        if guard.feed(ev):
                            ev = Event(ev.request, [], "", True)
                        elif ev.text:
                            ev = Event(ev.request, ev.token_ids, guard.redact(ev.text), ev.finished)
                        shown.append(ev)
                    out = []
                    for ev in shown:  # tokens whose text is held back go out with the next chunk's
                        ev = Event(ev.request, held.pop(ev.request.id, []) + ev.token_ids, ev.text, ev.finished)
                        if ev.text or ev.finished:
                            out.append(f"data: {json.dumps(chunk(reqs.index(ev.request), ev), ensure_ascii=False)}\n\n")
                        else:
                            held[ev.request.id] = ev.token_ids
                    if out:
                        yield "".join(out)
                if final_usage:
                    yield f"data: {json.dumps(chunk(None, None) | {'choices': [], 'usage': self.usage(reqs)})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # a client that went away: free its slots now
                for r in reqs:
                    if not r.done:
                        self.host.cancel(r)

        return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)

    async def respond(self, body: CommonParams, run, rid: str, kind: str, chunk_kind: str, delta, choice):
        """The OpenAI response for ``reqs``: streamed chunks (``delta(i, event)`` per choice) or,
        once all are done, the whole choices (``choice(request)``), with usage."""
        reqs, queue, headers = run
        guard = OutputGuard(self.moderator, self.host, rid, reqs[0].meta.get("key"), reqs[0].meta.get("policy"))
        created = int(time.time())

        def head(obj: str) -> dict:
            return {"id": rid, "object": obj, "created": created, "model": body.model}

        def chunk(i, ev):
            if ev is None:
                return head(chunk_kind)
            return head(chunk_kind) | {"choices": [{"index": i, "logprobs": None, **delta(i, ev),
                                                    "finish_reason": self.finish(ev.request) if ev.finished else None}]}

        if body.stream:
            return self.stream(reqs, queue, chunk, bool(body.stream_options and body.stream_options.include_usage),
                               headers, guard)
        await self.collect(reqs, queue, guard)

        def whole(r: Request) -> dict:
            c = choice(r)
            text_of = c["message"] if "message" in c else c
            key = "content" if "message" in c else "text"
            if guard.filtered(r):  # nothing of the refused text, not even its tokens' logprobs
                text_of[key] = ""
                c.pop("finish_reason", None)
                text_of.pop("tool_calls", None)
                c["logprobs"] = None
            else:
                text_of[key] = guard.redact(text_of[key])
            return c
        out = head(kind) | {"choices": [{"index": i, "finish_reason": self.finish(r), **whole(r)}
                                        for i, r in enumerate(reqs)],
                            "usage": self.usage(reqs)}
        return JSONResponse(out, headers=headers) if headers else out

    def chat_ids(self, messages: list[ChatMessage], tools: list[dict] | None = None) -> list[int]:
        """The conversation's token ids with the generation prompt (and the tools, for a template
        with a tool-call format); a 400 naming a bad message."""
        try:
            raw = [{"role": m.role, "content": m.text(f"messages[{i}]") if m.content is not None else None,
                    **{k: v for k, v in (m.model_extra or {}).items() if k in TOOL_KEYS}}
                   for i, m in enumerate(messages)]
            if tools is None:
                raw = [{**m, "content": m["content"] or ""} for m in raw]
            msgs = validate_messages(template_messages(raw), tools=tools is not None)
            return encode_chat(self.tokenizer, msgs, add_generation_prompt=True, tools=tools)[0]
        except LightseekError as e:
            raise ApiError(400, f"messages: {e}", param="messages", code="invalid_value") from None

    # --- endpoints -------------------------------------------------------------------------------
    async def health(self):
        if getattr(self.host, "ready", True) and not self.host.thread.is_alive():
            return error_response(ApiError(503, "the engine thread has stopped; restart the server",
                                           kind="server_error", code="engine_stopped"))
        if not getattr(self.host, "ready", True):
            return error_response(ApiError(503, "the model is still loading", kind="server_error",
                                           code="model_loading", headers={"Retry-After": "5"}))
        return {"status": "ok"}

    async def models(self, ctx: KeyContext | None = None):
        """The served models; with the platform, those the caller's key may use."""
        now = int(time.time())
        if ctx is not None and ctx.allowed_models is not None and self.model_id not in ctx.allowed_models:
            return {"object": "list", "data": []}
        adapters = [a for a in self.adapters if ctx is None or ctx.allowed_adapters is None
                    or a in ctx.allowed_adapters]
        data = [{"id": self.model_id, "object": "model", "created": now, "owned_by": "lightseek"}]
        data += [{"id": f"{self.model_id}:{a}", "object": "model", "created": now, "owned_by": "lightseek",
                  "parent": self.model_id} for a in adapters]
        return {"object": "list", "data": data}

    async def completions(self, body: CompletionBody, ctx: KeyContext | None = None):
        adapter = self.resolve_model(body.model)
        body.unsupported_options()
        prompts = token_inputs(body.prompt, self.tokenizer, "prompt")
        if not prompts:
            raise ApiError(400, "prompt: give at least one prompt", param="prompt", code="invalid_value")
        empty = next((i for i, (ids, _) in enumerate(prompts) if not ids), None)
        if empty is not None:
            where = f"prompt[{empty}]" if len(prompts) > 1 else "prompt"
            raise ApiError(400, f"{where}: the prompt is empty", param="prompt", code="invalid_value")
        ids = [x for x, _ in prompts]
        texts = [t for _, t in prompts]
        rid = f"cmpl-{uuid.uuid4().hex}"
        await moderate_input(self.moderator, texts, rid, ctx, "prompt")
        # echo with logprobs scores the prompt's tokens too, as OpenAI's API does: the engine
        # scores each while prefilling it
        scored = body.logprobs if body.echo else None
        run = await self.run(ids, body, adapter, body.logprobs, rid, ctx, prompt_logprobs=scored)
        n = body.n
        streamed = _StreamedLogprobs()
        echoed: set[int] = set()

        def delta(i, ev) -> dict:
            d = {"text": ev.text}
            first = body.echo and i not in echoed
            if first:  # the prompt first, as OpenAI streams an echo
                echoed.add(i)
                d["text"] = texts[i // n] + ev.text
            if body.logprobs is not None:
                entries = streamed.take(i, ev)
                if first:
                    entries = _prompt_entries(ids[i // n], ev.request.prompt_logprobs) + entries
                d["logprobs"] = _completion_logprobs_of(entries, self.tokenizer, streamed.offset(i))
                streamed.advance(i, d["logprobs"]["tokens"])
            return d

        def choice(r: Request) -> dict:
            p = r.meta["prompt"]
            logprobs = None
            if body.logprobs is not None:
                logprobs = _completion_logprobs(r, self.tokenizer, ids[p] if scored is not None else None)
            return {"text": (texts[p] if body.echo else "") + r.text, "logprobs": logprobs}

        return await self.respond(body, run, rid, "text_completion", "text_completion", delta, choice)

    async def chat(self, body: ChatBody, ctx: KeyContext | None = None):
        adapter = self.resolve_model(body.model)
        if not body.messages:
            raise ApiError(400, "messages: give at least one message", param="messages", code="invalid_value")
        template = self.tokenizer.chat.chat_template if self.tokenizer.chat is not None else None
        body.unsupported_options(template if template_has_tools(template) else None)
        tools = check_tools(body.tools, body.tool_choice) if body.tools and body.tool_choice != "none" else None
        if tools is not None:
            forced = call_format(tools, body.tool_choice)
            if forced is not None and body.response_format is not None:
                raise ApiError(400, "response_format: cannot be combined with a required tool call (tool_choice)",
                               param="response_format", code="invalid_value")
            body.response_format = forced or body.response_format
        ids = self.chat_ids(body.messages, tools)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        # every message is moderated, whoever it claims to be from, and the arguments of the
        # calls it carries: all of it goes into the prompt
        said = [m.text(f"messages[{i}]") for i, m in enumerate(body.messages)]
        said += [str((c.get("function") or {}).get("arguments", "")) for m in body.messages
                 for c in ((m.model_extra or {}).get("tool_calls") or []) if isinstance(c, dict)]
        await moderate_input(self.moderator, said, rid, ctx, "messages")
        run = await self.run([ids], body, adapter, (body.top_logprobs or 0) if body.logprobs else None, rid, ctx)
        started: set[int] = set()

        streamed = _StreamedLogprobs()

        def delta(i, ev) -> dict:
            d = {"content": ev.text} if ev.text else {}
            if i not in started:  # the first chunk of a choice names the role
                started.add(i)
                d = {"role": "assistant", **d}
            if not body.logprobs:
                return {"delta": d}
            return {"delta": d, "logprobs": _chat_logprobs_of(streamed.take(i, ev), self.tokenizer)}

        def choice(r: Request) -> dict:
            out = {"message": {"role": "assistant", "content": r.text},
                   "logprobs": _chat_logprobs(r, self.tokenizer) if body.logprobs else None}
            if tools is not None:
                content, calls = parse_calls(r.text, {t["function"]["name"] for t in tools})
                if calls:
                    out["message"] = {"role": "assistant", "content": content, "tool_calls": calls}
                    out["finish_reason"] = "tool_calls"
            return out

        if tools is not None and body.stream:  # a call is only known whole: answer, then send it as chunks
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            body.stream = False
            whole = await self.respond(body, run, rid, "chat.completion", "chat.completion.chunk", delta, choice)
            return _as_stream(whole if isinstance(whole, dict) else json.loads(whole.body), include_usage, run[2])
        return await self.respond(body, run, rid, "chat.completion", "chat.completion.chunk", delta, choice)

    async def embeddings(self, body: EmbeddingBody, ctx: KeyContext | None = None):
        adapter = self.resolve_model(body.model)
        inputs = token_inputs(body.input, self.tokenizer, "input")
        if not inputs or any(not ids for ids, _ in inputs):
            raise ApiError(400, "input: give non-empty texts or token lists", param="input", code="invalid_value")
        if len(inputs) > 256:
            raise ApiError(400, "input: at most 256 inputs per request", param="input", code="invalid_value")
        dim = self.engine.model.cfg.dim
        if body.dimensions is not None and body.dimensions != dim:
            raise ApiError(400, f"dimensions: this model's embeddings have {dim}", param="dimensions",
                           code="invalid_value")
        if body.encoding_format not in ("float", "base64"):
            raise ApiError(400, "encoding_format: 'float' or 'base64'", param="encoding_format", code="invalid_value")
        ids = [x for x, _ in inputs]
        max_len = self.engine.max_len
        too_long = [i for i, x in enumerate(ids) if len(x) > max_len]
        if too_long:
            raise ApiError(400, f"input[{too_long[0]}]: {len(ids[too_long[0]])} tokens; the context holds "
                           f"{max_len}", param="input", code="context_length_exceeded")
        n = sum(len(x) for x in ids)
        rid = f"emb-{uuid.uuid4().hex}"
        headers = await self.admit(ctx, rid, adapter, n, 0, 1)
        try:
            vectors = await self.host.call(lambda eng: _embed(eng.model, ids, adapter))
        except BaseException:
            if ctx is not None:
                self.gate.refuse(rid)
            raise
        if ctx is not None:
            self.gate.finish(rid)
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":
                import base64

                import numpy as np

                emb: Any = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
            else:
                emb = v
            data.append({"object": "embedding", "index": i, "embedding": emb})
        out = {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": n, "total_tokens": n}}
        return JSONResponse(out, headers=headers) if headers else out

    async def moderations(self, body: ModerationBody, ctx: KeyContext | None = None):
        """OpenAI's moderation endpoint, answered by this server's safety cascade."""
        if self.moderator is None:
            raise ApiError(404, "moderation is not enabled on this server (start it with --safety FOLDER)",
                           code="moderation_disabled")
        texts = body.texts()
        rid = f"modr-{uuid.uuid4().hex}"
        decisions = await asyncio.to_thread(self.moderator.check, texts, "moderation", rid,
                                            ctx.key_id if ctx else None, policy_of(self.moderator, ctx))
        return {"id": rid, "model": body.model or "lightseek-moderation", "results": [d.openai() for d in decisions]}

    async def tokenize(self, body: TokenizeBody):
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of prompt and messages", param="prompt", code="invalid_value")
        if body.prompt is not None:  # as a completions prompt is read
            ids = self.tokenizer.encode(body.prompt, allow_special=True)
        else:
            ids = self.chat_ids(body.messages)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.engine.max_len}

    async def tokenizer_info(self):
        """The tokenizer's special tokens, chat template and context length, in the shape vLLM's
        server gives them (an evaluation harness reads them to tokenize through the server)."""
        tokenizer = self.tokenizer
        chat = tokenizer.chat
        eos = chat.eos_token if chat is not None else tokenizer.decode([tokenizer.eot_id], skip_special=False)
        return {"tokenizer_class": "lightseek", "eos_token": eos, "bos_token": chat.bos_token if chat else None,
                "pad_token": (chat.pad_token if chat else None) or tokenizer.decode([tokenizer.pad_id], skip_special=False),
                "chat_template": chat.chat_template if chat else None, "model_max_length": self.engine.max_len,
                "vocab_size": tokenizer.vocab_size}

    async def detokenize(self, body: DetokenizeBody):
        tokenizer = self.tokenizer
        bad = [t for t in body.tokens if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise ApiError(400, f"tokens: ids out of range [0, {tokenizer.vocab_size}): {bad[:3]}", param="tokens",
                           code="invalid_value")
        return {"prompt": tokenizer.decode(body.tokens, skip_special=False)}  # /tokenize's inverse

    async def metrics(self):
        """The Prometheus text format: counters, queue gauges, tokens per expert, and latency
        histograms (time to first token, inter-token, whole request) with buckets."""
        m, st, sums = self.host.snapshot()
        lines = [
            "# TYPE lightseek_requests_total counter", f"lightseek_requests_total {m['requests']}",
            "# TYPE lightseek_prompt_tokens_total counter", f"lightseek_prompt_tokens_total {m['prompt_tokens']}",
            "# TYPE lightseek_generation_tokens_total counter",
            f"lightseek_generation_tokens_total {m['generation_tokens']}",
            "# TYPE lightseek_requests_running gauge", f"lightseek_requests_running {st['running']}",
            "# TYPE lightseek_requests_waiting gauge", f"lightseek_requests_waiting {st['waiting']}",
            "# TYPE lightseek_slots_free gauge", f"lightseek_slots_free {st['free_slots']}",
            "# TYPE lightseek_prefix_cache_hit_tokens_total counter",
            f"lightseek_prefix_cache_hit_tokens_total {st['prefix_hit_tokens']}",
            "# TYPE lightseek_engine_steps_total counter", f"lightseek_engine_steps_total {m['steps']}",
            "# TYPE lightseek_batch_size_mean gauge",
            f"lightseek_batch_size_mean {m['batch_sum'] / max(m['steps'], 1):.4f}",
            "# TYPE lightseek_kv_cache_usage gauge", f"lightseek_kv_cache_usage {st['kv_usage']:.6f}",
            "# TYPE lightseek_expert_tokens_total counter",
        ]
        if sums is not None:
            n_dense = self.engine.model.cfg.n_dense_layers
            for i, row in enumerate(sums[0].tolist()):
                lines += [f'lightseek_expert_tokens_total{{layer="{n_dense + i}",expert="{e}"}} {int(v)}'
                          for e, v in enumerate(row)]
        text = "\n".join(lines) + "\n" + self.host.latencies.exposition()
        if self.moderator is not None:
            text += self.moderator.metrics.exposition()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _as_stream(resp: dict, include_usage: bool, headers: dict[str, str]) -> StreamingResponse:
    """A whole chat completion as server-sent chunks: per choice its message as one delta (text
    or tool calls, each call with its index), then its finish reason; usage last if asked for."""
    head = {k: resp[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    chunks = []
    for c in resp["choices"]:
        msg = dict(c["message"])
        if "tool_calls" in msg:
            msg["tool_calls"] = [{"index": j, **call} for j, call in enumerate(msg["tool_calls"])]
        if msg.get("content") is None:
            msg.pop("content", None)
        chunks.append(head | {"choices": [{"index": c["index"], "delta": msg, "logprobs": None,
                                           "finish_reason": None}]})
        chunks.append(head | {"choices": [{"index": c["index"], "delta": {}, "logprobs": None,
                                           "finish_reason": c["finish_reason"]}]})
    if include_usage:
        chunks.append(head | {"choices": [], "usage": resp["usage"]})
    body = "".join(f"data: {json.dumps(x, ensure_ascii=False)}\n\n" for x in chunks) + "data: [DONE]\n\n"
    return StreamingResponse(iter([body]), media_type="text/event-stream", headers=headers)


def _param_of(e: LightseekError, otherwise: str | None) -> str | None:
    """The request field a request error is about: the generation option its message names."""
    named = ("response_format", "logit_bias", "presence_penalty", "frequency_penalty")
    return next((field for field in named if field in str(e)), otherwise)


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
    return _chat_logprobs_of(r.logprobs[:r.completion_tokens], tokenizer)  # not a token the grammar refused


def _chat_logprobs_of(entries: list[dict], tokenizer) -> dict:
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token], skip_special=False)  # the end token as itself
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [entry(e["token"], e["logprob"]) | {"top_logprobs": [entry(i, v) for i, v in e.get("top", [])]}
                        for e in entries]}


def _completion_logprobs(r: Request, tokenizer, prompt_ids: list[int] | None = None) -> dict:
    """OpenAI's completions logprobs of the generated tokens, after the prompt's when an echoed
    prompt was scored (``prompt_ids``; the engine scored them into ``r.prompt_logprobs``)."""
    entries = r.logprobs[:r.completion_tokens]  # the end token that finished it too, as OpenAI's API gives it
    if prompt_ids is not None:
        entries = _prompt_entries(prompt_ids, r.prompt_logprobs) + entries
    return _completion_logprobs_of(entries, tokenizer)


def _prompt_entries(prompt_ids: list[int], scored: list[dict]) -> list[dict]:
    """A scored prompt's logprob entries: its first token has none (nothing comes before it)."""
    return [{"token": prompt_ids[0], "logprob": None, "top": None}, *scored]


def _completion_logprobs_of(entries: list[dict], tokenizer, start: int = 0) -> dict:
    """The completions form of ``entries``; ``start``: the text offset of the first token."""
    def text(token: int) -> str:  # special tokens as themselves: an echoed chat prompt has them
        return tokenizer.decode([token], skip_special=False)

    tokens = [text(e["token"]) for e in entries]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=start))[:len(tokens)]
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [None if (top := e.get("top", [])) is None else {text(i): v for i, v in top}
                             for e in entries],
            "text_offset": offsets}


class _StreamedLogprobs:
    """Which of each choice's logprob entries a stream has sent: a chunk carries those of its
    event's tokens (the engine records one entry per token, in order)."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}
        self.chars: dict[int, int] = {}

    def take(self, i: int, ev: Event) -> list[dict]:
        start = self.sent.get(i, 0)
        self.sent[i] = start + len(ev.token_ids) + (ev.finished and ev.request.end_token is not None)
        return ev.request.logprobs[start:self.sent[i]]

    def offset(self, i: int) -> int:
        return self.chars.get(i, 0)

    def advance(self, i: int, tokens: list[str]) -> None:
        self.chars[i] = self.chars.get(i, 0) + sum(map(len, tokens))


def token_inputs(value: str | list, tokenizer, field: str) -> list[tuple[list[int], str]]:
    """Each input of a completions prompt or an embeddings input, as (token ids, text): a string,
    token ids, or a list of either (as OpenAI's API takes them). Strings are encoded with their
    special tokens read as such (a client that renders a chat template into a completions prompt
    means ``<|im_start|>`` as the token, as vLLM's and llama.cpp's servers read it; a chat
    message's content, written by a user, is never read that way); token ids are taken as
    given, any id of the vocabulary, and decoded."""
    items = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((tokenizer.encode(item, allow_special=True), item))
            continue
        bad = next((t for t in item if not 0 <= t < tokenizer.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"{field}: token id {bad} is not in the vocabulary (0-{tokenizer.vocab_size - 1})",
                           param=field, code="invalid_value")
        out.append((list(item), tokenizer.decode(item, skip_special=False)))
    return out
