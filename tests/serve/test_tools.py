"""Tool calls on a model whose chat template has a tool-call format (a tiny Qwen2 with a
Hermes-style template): the prompt is what transformers renders, a required or named call
always parses and follows the tool's parameters, streamed calls arrive as tool_calls deltas,
and a conversation with calls and their results is accepted."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai", reason="the API tests need the `openai` client (pip install -e .[test])")
pytest.importorskip("transformers", reason="the tiny model is built with transformers")
pytest.importorskip("llguidance", reason="forced calls are constrained by llguidance")

from lightseek.data.chat import encode_chat
from lightseek.data.tokenizer import Tokenizer
from lightseek.model.checkpoint import load_model
from lightseek.models.importer import import_model
from lightseek.serve.app import EngineHost, build_app
from lightseek.serve.engine import Engine
from tests.models.tiny import hf_model, save_hf_folder
from tests.serve.test_api import start

TOOL_TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these functions:
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tc in message.tool_calls %}
<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 9},
                                                "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
    "additionalProperties": False}}}
MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools")
    src = save_hf_folder(hf_model("qwen2", max_position_embeddings=1024), tmp / "src")
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": TOOL_TEMPLATE}))
    ckpt = import_model(src, tmp / "ckpt", show_progress=False)
    host = EngineHost(Engine(load_model(ckpt), Tokenizer.load(ckpt / "tokenizer.json"), max_slots=2, max_waiting=8,
                             prefill_chunk=32))
    srv, thread, url = start(build_app(host, "tiny", []))
    yield src, ckpt, openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    srv.should_exit = True
    thread.join(timeout=5)
    host.close()


def test_the_prompt_with_tools_is_what_transformers_renders(tool_model) -> None:
    import transformers

    src, ckpt, _ = tool_model
    theirs = transformers.AutoTokenizer.from_pretrained(str(src))
    history = MSGS + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                      "arguments": {"city": "Paris", "unit": "celsius"}}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "18 C, clear"}]
    # (single-digit numbers only: this tiny tokenizer file groups digits, transformers' Qwen2 class splits them)
    for msgs in (MSGS, history):
        ref = theirs.apply_chat_template(msgs, tools=[WEATHER], add_generation_prompt=True, tokenize=True)
        ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
        ours = encode_chat(Tokenizer.load(ckpt / "tokenizer.json"), msgs, add_generation_prompt=True,
                           tools=[WEATHER])[0]
        assert ours == list(ref)


def test_a_named_or_required_call_always_parses_and_follows_the_schema(tool_model) -> None:
    import jsonschema

    _, _, client = tool_model
    r = client.chat.completions.create(model="tiny", messages=MSGS, tools=[WEATHER, TIME], max_tokens=200,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    for seed in range(3):
        r = client.chat.completions.create(model="tiny", messages=MSGS, tools=[WEATHER, TIME], max_tokens=200,
                                           tool_choice="required", temperature=1.0, seed=seed)
        (call,) = r.choices[0].message.tool_calls
        spec = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
        jsonschema.validate(json.loads(call.function.arguments), spec["function"]["parameters"])


def test_streamed_calls_and_a_conversation_with_results(tool_model) -> None:
    _, _, client = tool_model
    chunks = list(client.chat.completions.create(
        model="tiny", messages=MSGS, tools=[WEATHER], max_tokens=200, tool_choice="required", stream=True,
        stream_options={"include_usage": True}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0
    history = MSGS + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                      "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "18 C, clear"}]
    r = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], max_tokens=5)
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")
    with pytest.raises(openai.BadRequestError, match="no tool named"):
        client.chat.completions.create(model="tiny", messages=MSGS, tools=[WEATHER], max_tokens=5,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="role must be one of"):  # tool results need the tools
        client.chat.completions.create(model="tiny", messages=history, max_tokens=5)


def test_padded_embedding_rows_are_never_sampled(tool_model) -> None:
    """The tiny model's embedding has 320 rows for a 300-token tokenizer, as real ones are padded:
    sampling hot and long never yields an id without text (it used to end in a server error)."""
    from lightseek.model.generate import generate_ids
    from lightseek.model.sampling import SamplingParams

    _, ckpt, client = tool_model
    model, tok = load_model(ckpt), Tokenizer.load(ckpt / "tokenizer.json")
    assert model.cfg.vocab_size > tok.vocab_size
    ids = list(generate_ids(model, tok.encode("Glaucoma"), SamplingParams(temperature=2.0, max_new_tokens=300,
                                                                          seed=0), vocab=tok.vocab_size))
    assert len(ids) == 300 and max(ids) < tok.vocab_size
    r = client.completions.create(model="tiny", prompt="Glaucoma", max_tokens=300, temperature=2.0, seed=1,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 300


def test_malformed_tool_input_is_a_400(tool_model) -> None:
    _, _, client = tool_model
    bad_history = MSGS + [{"role": "assistant", "content": None, "tool_calls": ["not a call"]}]
    for kw in ({"messages": bad_history, "tools": [WEATHER]},
               {"messages": MSGS, "tools": [WEATHER], "tool_choice": {"type": "function", "function": "get_weather"}},
               {"messages": MSGS, "tools": [{"type": "function", "function": {"parameters": {}}}]},
               {"messages": MSGS, "tools": [WEATHER], "tool_choice": "sometimes"}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", max_tokens=4, **kw)
