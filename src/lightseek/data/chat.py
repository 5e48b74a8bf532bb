"""Chat templates, used by training (SFT), evaluation and the server alike.

A conversation is a list of `{"role": ..., "content": ...}` messages. A native lightseek
tokenizer renders it turn by turn as

    <|{role}|>\\n{content}<|end|>\\n

and, when a reply is wanted, follows it with the generation prompt `<|assistant|>\\n`. An
imported model brings its own Jinja template (in its `tokenizer_config.json`), rendered as
transformers renders it.

`encode_chat` is the canonical tokenisation: the template's own tokens (role tags, end of turn)
are special ids, while message content is always encoded as plain text, so a user typing
"<|assistant|>" or "<|im_start|>" cannot forge a turn. `render` gives the same conversation as a
string for display and logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import DataError

ROLES = ("system", "user", "assistant")
END_TOKEN = "<|end|>"


def role_token(role: str) -> str:
    """The special token that opens a turn by `role`, e.g. "<|user|>"."""
    return f"<|{role}|>"


TOOL_KEYS = ("tool_calls", "tool_call_id", "name")


def validate_messages(messages: Any, tools: bool = False) -> list[dict[str, str]]:
    """Check the shape of a conversation and return it as plain dicts.

    With ``tools`` (a conversation for a template with a tool-call format), a message may also
    have the role "tool" (a tool's result, with its ``tool_call_id``), and an assistant message
    may carry ``tool_calls`` instead of content. Raises DataError naming the index of the first
    bad message.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise DataError(f"chat messages must be a list of dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise DataError("chat messages must be a non-empty list")
    checked: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(f"chat message {i} must be a dict, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        roles = (*ROLES, "tool") if tools else ROLES
        if role not in roles:
            raise DataError(
                f"chat message {i}: role must be one of {', '.join(roles)}, got {role!r}"
            )
        if content is None and tools and role == "assistant" and message.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise DataError(
                f"chat message {i}: content must be a string, got {type(content).__name__}"
            )
        extra = {k: message[k] for k in TOOL_KEYS if tools and message.get(k) is not None}
        checked.append({"role": role, "content": content, **extra})
    return checked


def render(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False,
           tokenizer: Tokenizer | None = None) -> str:
    """The conversation as template text (for display; train and serve with `encode_chat`),
    with the imported model's own template when ``tokenizer`` has one."""
    if tokenizer is not None and tokenizer.chat is not None:
        return _render_template(tokenizer, validate_messages(messages), add_generation_prompt)
    turns = [
        f"{role_token(m['role'])}\n{m['content']}{END_TOKEN}\n" for m in validate_messages(messages)
    ]
    if add_generation_prompt:
        turns.append(f"{role_token('assistant')}\n")
    return "".join(turns)


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = False,
    tools: list[dict] | None = None,
) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and a loss mask of the same length.

    The mask is True exactly on assistant content tokens and the `<|end|>` closing each
    assistant turn: the tokens a model should learn to produce. Everything else (role tags,
    the newlines of the template, system and user turns, a generation prompt) is False.
    """
    checked = validate_messages(messages, tools=tools is not None)
    if tokenizer.chat is not None:
        return _encode_template(tokenizer, checked, add_generation_prompt, tools)
    if tools is not None:
        raise DataError("tools need a model whose chat template has a tool-call format")
    end_id = tokenizer.token_id(END_TOKEN)
    newline = tokenizer.encode("\n")
    contents = tokenizer.encode_batch([m["content"] for m in checked])
    ids: list[int] = []
    mask: list[bool] = []

    def add(piece: list[int], learn: bool) -> None:
        ids.extend(piece)
        mask.extend([learn] * len(piece))

    for message, content_ids in zip(checked, contents):
        learn = message["role"] == "assistant"
        add([tokenizer.token_id(role_token(message["role"]))], False)
        add(newline, False)
        add(content_ids, learn)
        add([end_id], learn)
        add(newline, False)
    if add_generation_prompt:
        add([tokenizer.token_id(role_token("assistant"))], False)
        add(newline, False)
    return ids, mask


# --- imported models' Jinja templates ---------------------------------------------------------
# A placeholder stands for each message's content while the template renders, so that the
# template's own text (tokenised with special tokens) and the content (tokenised as plain text)
# can be told apart afterwards. Private-use code points never occur in a template.
_OPEN, _CLOSE = "\ue000", "\ue001"


@lru_cache(maxsize=8)
def _compile(template: str):
    """A Jinja template compiled the way transformers compiles chat templates (sandboxed,
    trim_blocks, lstrip_blocks, loop controls, ``raise_exception``, ``tojson``)."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 is a core dependency
        raise DataError("chat templates need jinja2: pip install jinja2") from None
    import json as _json
    from datetime import datetime

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **kw: _json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise DataError(f"the model's chat template does not compile: {e}") from None


def _render_template(tokenizer: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool,
                     tools: list[dict] | None = None) -> str:
    import jinja2

    chat = tokenizer.chat
    if not chat.chat_template:
        raise DataError("this model has no chat template (its tokenizer_config.json names none); "
                        "use plain prompts")
    try:
        return _compile(chat.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=chat.bos_token or "",
            eos_token=chat.eos_token, pad_token=chat.pad_token or "", **({"tools": tools} if tools else {}))
    except jinja2.exceptions.TemplateError as e:
        raise DataError(f"the model's chat template refused the conversation: {e}") from None


def _encode_template(tokenizer: Tokenizer, messages: list[dict[str, str]],
                     add_generation_prompt: bool, tools: list[dict] | None = None) -> tuple[list[int], list[bool]]:
    """`encode_chat` through the model's own template. The mask is True on assistant content and
    on the template's tokens after it up to and including the turn's end-of-turn token."""
    # an empty content (an assistant turn that only calls tools) gets no mark: templates test it
    marked = [{**m, "content": f"{_OPEN}{i}{_CLOSE}"} if m["content"] else m for i, m in enumerate(messages)]
    text = _render_template(tokenizer, marked, add_generation_prompt, tools)
    pieces: list[tuple[str, int | None]] = []  # (template text, None) or (content, message index)
    for i in range(len(messages)):
        if not messages[i]["content"]:
            continue
        mark = f"{_OPEN}{i}{_CLOSE}"
        before, sep, text = text.partition(mark)
        if not sep:  # the template dropped or rewrote this message's content: no exact mask
            whole = _render_template(tokenizer, messages, add_generation_prompt, tools)
            if any(m["role"] == "assistant" for m in messages):
                raise DataError(f"the model's chat template rewrites message {i}'s content, so the "
                                "assistant tokens cannot be located for training")
            ids = tokenizer.encode(whole, allow_special=True)
            return ids, [False] * len(ids)
        pieces += [(before, None), (messages[i]["content"], i)]
    pieces.append((text, None))

    ends = set(tokenizer.end_ids)
    ids: list[int] = []
    mask: list[bool] = []
    after_assistant = False
    for piece, index in pieces:
        if index is not None:
            piece_ids = tokenizer.encode(piece)
            after_assistant = messages[index]["role"] == "assistant"
            ids += piece_ids
            mask += [after_assistant] * len(piece_ids)
            continue
        piece_ids = tokenizer.encode(piece, allow_special=True)
        learn = after_assistant  # the reply's closing tokens, through its end-of-turn token
        for tok in piece_ids:
            ids.append(tok)
            mask.append(learn)
            if learn and tok in ends:
                learn = False
        after_assistant = False
    return ids, mask
