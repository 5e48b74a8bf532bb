"""The FastAPI app: error handlers and one thin route per endpoint, each calling `Handlers`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from lightseek.serve.handlers import Handlers
from lightseek.serve.host import EngineHost, PendingHost
from lightseek.serve.schemas import (
    ApiError,
    ChatBody,
    CompletionBody,
    DetokenizeBody,
    EmbeddingBody,
    TokenizeBody,
    error_response,
)


def build_app(host: EngineHost | PendingHost, model_id: str, adapters: list[str] | None = None) -> FastAPI:
    """The API for ``model_id`` (and ``model_id:name`` for each adapter name) served by ``host``."""
    app = FastAPI(title="lightseek", version="1", description="OpenAI-compatible API for lightseek models.")
    h = Handlers(host, model_id, adapters)

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

    # FastAPI reads each body's type from the route function's signature, so each route names it
    @app.get("/health")
    async def health():
        return await h.health()

    @app.get("/v1/models")
    async def models():
        return await h.models()

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        return await h.completions(body)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        return await h.chat(body)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingBody):
        return await h.embeddings(body)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeBody):
        return await h.tokenize(body)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeBody):
        return await h.detokenize(body)

    @app.get("/metrics")
    async def metrics():
        return await h.metrics()

    return app
