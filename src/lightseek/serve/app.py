"""The OpenAI-compatible HTTP API over the engine (FastAPI); the entry point that re-exports its parts.

- `schemas`: the request bodies and `ApiError`, errors in OpenAI's shape
  ``{"error": {"message", "type", "param", "code"}}``: 400 for bad JSON or parameters, 404 for an
  unknown model, 429 (with Retry-After) when the queue is full; bad input never yields a 5xx.
- `host`: `EngineHost`, the engine in one background thread, and `PendingHost`, which answers
  503 while the model loads.
- `handlers`: `Handlers`, what each endpoint does: submits to the host and receives the events
  through asyncio queues, then answers whole or streamed.
- `routes`: `build_app`, the FastAPI app and its routes.
"""

from lightseek.serve.handlers import _merge
from lightseek.serve.host import EngineHost, PendingHost
from lightseek.serve.routes import build_app

__all__ = ["EngineHost", "PendingHost", "_merge", "build_app"]
