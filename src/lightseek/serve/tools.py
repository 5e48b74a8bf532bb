"""Tool calls through the model's own chat template.

A template has a tool-call format when it reads the ``tools`` variable (Qwen2/2.5, Hermes,
Mistral and Llama 3.1 templates do; SmolLM2's does not, and tools are refused there). The tools
go into the template as OpenAI clients send them; the model's reply is read back in the Hermes
format those templates teach (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), or as
one bare JSON object with a name and arguments.

``tool_choice``: "none" (the tools are not shown), "auto" (the model decides; its reply is
parsed), "required" or a named function: the reply is constrained by the grammar engine to a
JSON object naming one of the tools (or that one) with arguments that follow its parameters'
schema, so it always parses.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import lru_cache

from lightseek.serve.schemas import ApiError

_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


@lru_cache(maxsize=8)
def template_has_tools(template: str | None) -> bool:
    """Whether the chat template reads the ``tools`` variable."""
    if not template:
        return False
    import jinja2
    from jinja2 import meta

    try:
        return "tools" in meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateSyntaxError:
        return False


def check_tools(tools: list, tool_choice) -> list[dict]:
    """The function tools of a request, checked; a 400 naming the first bad one."""
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ApiError(400, f"tools[{i}]: a tool is {{'type': 'function', 'function': {{'name': ...}}}}",
                           param=f"tools[{i}]", code="invalid_value")
        if not isinstance(fn.get("parameters", {}), dict):
            raise ApiError(400, f"tools[{i}].function.parameters: a JSON schema object", param=f"tools[{i}]",
                           code="invalid_value")
        out.append(t)
    names = [t["function"]["name"] for t in out]
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in names:
            raise ApiError(400, f"tool_choice: no tool named {name!r} among the tools", param="tool_choice",
                           code="invalid_value")
    elif tool_choice not in (None, "none", "auto", "required"):
        raise ApiError(400, f"tool_choice: {tool_choice!r}: none, auto, required or a named function",
                       param="tool_choice", code="invalid_value")
    return out


def call_format(tools: list[dict], tool_choice) -> dict | None:
    """The response_format that forces a call ("required", or a named function); None otherwise."""
    if tool_choice != "required" and not isinstance(tool_choice, dict):
        return None
    chosen = [t for t in tools if not isinstance(tool_choice, dict)
              or t["function"]["name"] == tool_choice["function"]["name"]]
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                  "arguments": t["function"].get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}


def template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages as templates expect them: a call's arguments as an object, not a string."""
    out = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            if not isinstance(calls, list):
                raise ApiError(400, f"messages[{i}].tool_calls: a list of calls", param="messages",
                               code="invalid_value")
            for j, c in enumerate(calls):
                if not isinstance(c, dict) or not isinstance(c.get("function"), dict) \
                        or not isinstance(c["function"].get("name"), str):
                    raise ApiError(400, f"messages[{i}].tool_calls[{j}]: {{'type': 'function', 'function': "
                                   "{'name': ..., 'arguments': ...}}", param="messages", code="invalid_value")
                fn = dict(c["function"])
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                fixed.append({**c, "function": fn, **fn})  # some templates read call.name, others call.function.name
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out


def parse_calls(text: str, names: set[str]) -> tuple[str | None, list[dict]]:
    """(the text outside the calls, or None; OpenAI tool_calls) read from a reply."""
    found = []
    for m in _CALL.finditer(text):
        try:
            found.append(json.loads(m.group(1)))
        except ValueError:
            continue
    rest = _CALL.sub("", text).strip() if found else text
    if not found:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "name" in obj and ("arguments" in obj or "parameters" in obj):
            found, rest = [obj], ""
    calls = []
    for obj in found:
        if not isinstance(obj, dict) or obj.get("name") not in names:
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": args if isinstance(args, str) else json.dumps(args)}})
    if not calls:
        return text, []
    return rest or None, calls
