"""The FastAPI app: error handlers and one thin route per endpoint, each calling `Handlers`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastapi import FastAPI, Header
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from lightseek.serve.handlers import Handlers
from lightseek.serve.host import EngineHost, PendingHost
from lightseek.serve.schemas import (
    ApiError,
    ChatBody,
    CompletionBody,
    DetokenizeBody,
    EmbeddingBody,
    ModerationBody,
    TokenizeBody,
    error_response,
)

if TYPE_CHECKING:
    from lightseek.platform.gate import Gate


def build_app(host: EngineHost | PendingHost, model_id: str, adapters: list[str] | None = None,
              gate: Gate | None = None, protect_metrics: bool = False, moderator=None) -> FastAPI:
    """The API for ``model_id`` (and ``model_id:name`` for each adapter name) served by ``host``.
    With ``gate`` (the platform), every route but /health, /metrics and the schema needs an API
    key, and /admin and /usage are added; ``protect_metrics`` puts /metrics behind an admin key.
    With ``moderator`` (`lightseek.safety.cascade.Moderator`), prompts and outputs are moderated
    and /v1/moderations answers."""
    app = FastAPI(title="lightseek", version="1", description="OpenAI-compatible API for lightseek models.")
    h = Handlers(host, model_id, adapters, gate, moderator)
    Auth = Header(None, include_in_schema=False)  # noqa: N806 -- FastAPI reads it from the signature

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):  # an unknown path or method, in OpenAI's shape too
        if e.status_code == 404:
            message, code = f"no such endpoint: {request.method} {request.url.path}", "unknown_url"
        elif e.status_code == 405:
            message, code = f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
        else:
            message, code = str(e.detail), None
        return error_response(ApiError(e.status_code, message, code=code, headers=dict(e.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, "the request body is not valid JSON", code="invalid_json"))
        msg = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
        union = _union(e.errors())
        if union is not None:  # a field of several accepted forms, none of which matched: name them all
            loc, kinds = union
            msg = f"{'.'.join(loc)}: expected one of {', '.join(kinds)}"
        return error_response(ApiError(400, msg, param=".".join(loc) or None, code="invalid_value"))

    # FastAPI reads each body's type from the route function's signature, so each route names it
    @app.get("/health")
    async def health():
        return await h.health()

    @app.get("/v1/models")
    async def models(authorization: str | None = Auth):
        return await h.models(await h.authorize(authorization))

    @app.get("/v1/models/{model:path}")  # an adapter's id has a colon; keep anything after the slash
    async def model(model: str, authorization: str | None = Auth):
        listed = (await h.models(await h.authorize(authorization)))["data"]
        found = next((m for m in listed if m["id"] == model), None)
        if found is None:
            raise ApiError(404, f"the model {model!r} does not exist (see GET /v1/models)", param="model",
                           code="model_not_found")
        return found

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, authorization: str | None = Auth):
        return await h.completions(body, await h.authorize(authorization))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, authorization: str | None = Auth):
        return await h.chat(body, await h.authorize(authorization))

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingBody, authorization: str | None = Auth):
        return await h.embeddings(body, await h.authorize(authorization))

    @app.post("/v1/moderations")
    async def moderations(body: ModerationBody, authorization: str | None = Auth):
        return await h.moderations(body, await h.authorize(authorization))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeBody, authorization: str | None = Auth):
        await h.authorize(authorization)
        return await h.tokenize(body)

    @app.get("/tokenizer_info")
    async def tokenizer_info(authorization: str | None = Auth):
        await h.authorize(authorization)
        return await h.tokenizer_info()

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeBody, authorization: str | None = Auth):
        await h.authorize(authorization)
        return await h.detokenize(body)

    @app.get("/metrics")
    async def metrics(authorization: str | None = Auth):
        if protect_metrics:
            await _admin(h, authorization)
        return await h.metrics()

    if gate is not None:
        from lightseek.platform.web import add_platform_routes

        add_platform_routes(app, gate, lambda authorization: _admin(h, authorization))

    return app


async def _admin(h: Handlers, authorization: str | None):
    """The context of an admin key; 401 without a valid key, 403 for a key that is not an admin's."""
    ctx = await h.authorize(authorization)
    if ctx is not None and not ctx.admin:
        raise ApiError(403, "this needs an admin key", code="admin_only")
    return ctx


_FORM = re.compile(r"str|int|float|bool|none|[A-Z]\w*|[\w-]+\[.*\]")  # how pydantic names a union's members


def _union(errors: list[dict]) -> tuple[list[str], list[str]] | None:
    """(the field's location, the forms tried) when every error is one member of a union failing
    for the same field (pydantic puts each member's form, ``str`` or ``list[int]``, right after
    the field in the location); None otherwise."""
    locs = [[str(x) for x in err.get("loc", []) if x != "body"] for err in errors]
    if len(locs) < 2:
        return None
    n = 0
    while all(len(loc) > n for loc in locs) and len({loc[n] for loc in locs}) == 1:
        n += 1
    kinds = [loc[n] for loc in locs if len(loc) > n]
    if n == 0 or len(kinds) < len(locs) or not all(_FORM.fullmatch(k) for k in kinds):
        return None  # errors in different fields (`role`, `content`): not one union
    return locs[0][:n], list(dict.fromkeys(kinds))
