"""The one chat template, used by training (SFT), evaluation and the server alike.

A conversation is a list of `{"role": ..., "content": ...}` messages, rendered turn by turn as

    <|{role}|>\\n{content}<|end|>\\n

and, when a reply is wanted, followed by the generation prompt `<|assistant|>\\n`.

`encode_chat` is the canonical tokenisation: role tags and `<|end|>` are special ids, while
message content is always encoded as plain text, so a user typing "<|assistant|>" cannot forge
a turn. `render` gives the same conversation as a string for display and logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import DataError

ROLES = ("system", "user", "assistant")
END_TOKEN = "<|end|>"


def end_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """The ids that end a generation: end of text, and the end of a chat turn (a reply is over)."""
    return tokenizer.eot_id, tokenizer.token_id(END_TOKEN)


def role_token(role: str) -> str:
    """The special token that opens a turn by `role`, e.g. "<|user|>"."""
    return f"<|{role}|>"


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check the shape of a conversation and return it as plain dicts.

    Raises DataError naming the index of the first bad message.
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
        if role not in ROLES:
            raise DataError(
                f"chat message {i}: role must be one of {', '.join(ROLES)}, got {role!r}"
            )
        if not isinstance(content, str):
            raise DataError(
                f"chat message {i}: content must be a string, got {type(content).__name__}"
            )
        checked.append({"role": role, "content": content})
    return checked


def render(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as template text (for display; train and serve with `encode_chat`)."""
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
) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and a loss mask of the same length.

    The mask is True exactly on assistant content tokens and the `<|end|>` closing each
    assistant turn: the tokens a model should learn to produce. Everything else (role tags,
    the newlines of the template, system and user turns, a generation prompt) is False.
    """
    checked = validate_messages(messages)
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
