"""The API's request bodies (pydantic models) and its errors in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}},
                        status_code=e.status, headers=e.headers)


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
    # text, json_object or json_schema (`serve.grammar`); on completions an extension, as in vLLM
    response_format: dict | None = None
    logit_bias: dict[str, float] | None = None  # token id (as JSON writes keys: a string) -> bias
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)

    def token_bias(self) -> dict[int, float]:
        """``logit_bias`` with its keys as token ids; a 400 naming a key that is not one."""
        out = {}
        for key, bias in (self.logit_bias or {}).items():
            try:
                out[int(key)] = bias
            except ValueError:
                raise ApiError(400, f"logit_bias: {key!r} is not a token id", param="logit_bias",
                               code="invalid_value") from None
        return out


class CompletionBody(CommonParams):
    # text, or token ids (as evaluation harnesses send them), alone or as a list of one
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    # accepted at their defaults only, refused otherwise rather than silently ignored
    best_of: int | None = None
    suffix: str | None = None

    def unsupported_options(self) -> None:
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(400, "best_of: choosing the best of several answers on the server is not supported; ask "
                           "for n choices and their logprobs and choose on the client", param="best_of",
                           code="unsupported_value")
        if self.suffix:
            raise ApiError(400, "suffix: inserting text before a suffix is not supported by this model",
                           param="suffix", code="unsupported_value")


class ContentPart(BaseModel):
    """One part of a message's content as OpenAI clients send it (``{"type": "text", "text": ...}``);
    only text parts are served, others are refused by their type in `ChatMessage.text`."""
    model_config = ConfigDict(extra="allow")
    type: str | None = None  # checked in `ChatMessage.text`, so that its absence is named
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def text(self, where: str) -> str:
        """The message's text: its string content, or its text parts joined by newlines (as
        OpenAI's own endpoint reads them). ``where`` names the message in errors (``messages[2]``)."""
        if not isinstance(self.content, list):
            return self.content or ""
        texts = []
        for j, part in enumerate(self.content):
            if part.type is None:
                raise ApiError(400, f"{where}.content[{j}]: a content part needs its 'type' ('text')",
                               param=f"{where}.content", code="invalid_value")
            if part.type != "text":
                raise ApiError(400, f"{where}.content[{j}]: content parts of type {part.type!r} are not supported: "
                                    "this model reads text parts only", param=f"{where}.content", code="invalid_value")
            if part.text is None:
                raise ApiError(400, f"{where}.content[{j}]: a text part needs its 'text'", param=f"{where}.content",
                               code="invalid_value")
            texts.append(part.text)
        return "\n".join(texts)


class ChatBody(CommonParams):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # tools are refused by `unsupported_options` rather than silently ignored
    tools: list | None = None
    tool_choice: str | dict | None = None

    def unsupported_options(self, tool_template: str | None) -> None:
        """A 400 for what this server would otherwise ignore and the client relies on: tools for a
        model whose chat template (``tool_template``: None when it has no tool-call format)
        cannot show them, or a tool_choice that names tools the request does not give."""
        if self.tools and tool_template is None and self.tool_choice != "none":
            raise ApiError(400, "tools: this model's chat template has no tool-call format; send the request "
                           "without tools and tool_choice", param="tools", code="unsupported_value")
        if not self.tools and self.tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice: asks for a tool call but the request gives no tools",
                           param="tool_choice", code="invalid_value")


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    model: str | None = None


class ModerationBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str] | list[dict]
    model: str | None = None

    def texts(self) -> list[str]:
        """The texts to moderate; a 400 naming an input that is not text."""
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        out = []
        for i, x in enumerate(items):
            if isinstance(x, dict):
                if x.get("type") != "text" or not isinstance(x.get("text"), str):
                    raise ApiError(400, f"input[{i}]: only text inputs are moderated here (type 'text'), "
                                   f"not {x.get('type')!r}", param="input", code="invalid_value")
                x = x["text"]
            out.append(x)
        if not out or len(out) > 256:
            raise ApiError(400, "input: give 1 to 256 texts", param="input", code="invalid_value")
        return out


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[str] | list[int] | list[list[int]]  # texts or token ids, as for completions' prompt
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokens: list[int]
    model: str | None = None
