"""The HTTP API, driven by the official `openai` client against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai", reason="the API tests need the `openai` client (pip install -e .[test])")
uvicorn = pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e .[serve])")

from lightseek.data.chat import encode_chat
from lightseek.data.tokenizer import Tokenizer
from lightseek.model.checkpoint import load_model
from lightseek.serve.app import EngineHost, build_app
from lightseek.serve.engine import Engine


def http(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or a JSON POST when ``data`` is given, without raising on 4xx."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start(app):
    """A uvicorn server for ``app`` on a free loopback port, in a thread; returns (server, url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    return srv, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(debug_checkpoint, strong_adapter):
    model = load_model(debug_checkpoint)
    tok = Tokenizer.load(debug_checkpoint / "tokenizer.json")
    strong_adapter(model, "shakes")
    host = EngineHost(Engine(model, tok, max_slots=4, max_waiting=4, prefill_chunk=16))
    srv, thread, url = start(build_app(host, "debug", ["shakes"]))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    yield client, tok, url, host
    srv.should_exit = True
    thread.join(timeout=5)
    host.close()


def test_models_and_completion_usage(server) -> None:
    client, tok, url, _ = server
    assert [m.id for m in client.models.list().data] == ["debug", "debug:shakes"]
    assert client.models.retrieve("debug:shakes").id == "debug:shakes"
    with pytest.raises(openai.NotFoundError, match="'nope' does not exist"):
        client.models.retrieve("nope")
    for path, data, status, code in (("/v1/nothing", None, 404, "unknown_url"),
                                     ("/v1/completions", None, 405, "method_not_allowed")):
        got, body = http(url + path, data)
        assert got == status and json.loads(body)["error"]["code"] == code
    r = client.completions.create(model="debug", prompt="To be, or not", max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == len(tok.encode("To be, or not"))
    assert r.usage.completion_tokens <= 8 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens



def test_a_prompt_of_token_ids_completes_as_its_text(server) -> None:
    """Evaluation harnesses send completions prompts as token ids (alone or as a list of one): the
    same tokens give the same answer as the text; echo gives the text back; an id outside the
    vocabulary or a value of no accepted form is a 400 that says which."""
    client, tok, url, _ = server
    text = "To be, or not"
    ids = tok.encode(text)
    by_text = client.completions.create(model="debug", prompt=text, max_tokens=6, temperature=0)
    for prompt in (ids, [ids]):
        r = client.completions.create(model="debug", prompt=prompt, max_tokens=6, temperature=0, echo=True)
        assert r.choices[0].text == text + by_text.choices[0].text
        assert r.usage.prompt_tokens == len(ids)
    for prompt, msg in (([tok.vocab_size], f"token id {tok.vocab_size} is not in the vocabulary"),
                        ([-1], "token id -1"),
                        ([1, "a"], "prompt: expected one of str, list[str], list[int], list[list[int]]")):
        status, body = http(f"{url}/v1/completions", json.dumps({"model": "debug", "prompt": prompt}).encode())
        err = json.loads(body)["error"]
        assert status == 400 and msg in err["message"] and err["param"] == "prompt", err
    # a message's content of no accepted form is named at the message; two bad fields, the first
    status, body = http(f"{url}/v1/chat/completions", json.dumps(
        {"model": "debug", "messages": [{"role": "user", "content": 5}]}).encode())
    assert status == 400 and json.loads(body)["error"]["message"] == \
        "messages.0.content: expected one of str, list[ContentPart]"
    status, body = http(f"{url}/v1/chat/completions", json.dumps(
        {"model": "debug", "messages": [{"role": 5, "content": 5}]}).encode())
    assert status == 400 and json.loads(body)["error"]["message"].startswith("messages.0.role:")

def test_several_prompts_in_one_request(server) -> None:
    """As OpenAI's completions (and evaluation harnesses batching their prompts): a list of
    prompts, texts or token ids, gets ``n`` choices per prompt, numbered prompt-major; each is
    the answer that prompt gets alone (greedy, or sampled with the same seed), an echo or a
    scored echo is its own prompt's, and usage counts every prompt once."""
    client, tok, url, _ = server
    texts = ["To be, or not", "My lord, the king"]
    kw = {"model": "debug", "max_tokens": 6, "extra_body": {"ignore_eos": True}}
    alone = [client.completions.create(prompt=t, temperature=0, logprobs=1, echo=True, **kw) for t in texts]
    for prompt in (texts, [tok.encode(t) for t in texts]):
        both = client.completions.create(prompt=prompt, temperature=0, logprobs=1, echo=True, n=2, **kw)
        assert [c.index for c in both.choices] == [0, 1, 2, 3]
        for i, c in enumerate(both.choices):
            one = alone[i // 2].choices[0]
            assert c.text == one.text and c.text.startswith(texts[i // 2])
            assert c.logprobs.tokens == one.logprobs.tokens
            assert c.logprobs.token_logprobs == pytest.approx(one.logprobs.token_logprobs, abs=1e-5)
        assert both.usage.prompt_tokens == sum(len(tok.encode(t)) for t in texts)
        assert both.usage.completion_tokens == 4 * 6
    sampled = [client.completions.create(prompt=t, temperature=1.0, seed=3, n=2, **kw) for t in texts]
    batched = client.completions.create(prompt=texts, temperature=1.0, seed=3, n=2, **kw)
    assert [c.text for c in batched.choices] == [c.text for r in sampled for c in r.choices]
    # streamed: each choice's chunks carry its index and join to its text
    chunks = [c.choices[0] for c in client.completions.create(prompt=texts, temperature=0, stream=True, **kw)]
    assert {c.index for c in chunks} == {0, 1}
    for i in (0, 1):
        assert "".join(c.text for c in chunks if c.index == i) == alone[i].choices[0].text[len(texts[i]):]
    # what cannot be served is named: the prompt it is about, or the server's queue limit
    for prompt, extra, msg in ((["To be", ""], {}, "prompt[1]: the prompt is empty"),
                               ([], {}, "prompt: give at least one prompt"),
                               (["To be", "a " * 600], {}, "prompt[1]: the prompt has"),
                               (texts * 2, {"n": 2}, "8 choices (4 prompts x n=2) in one request; this server "
                                                     "queues at most 4")):
        status, body = http(f"{url}/v1/completions", json.dumps({"model": "debug", "prompt": prompt, **extra}).encode())
        err = json.loads(body)["error"]
        assert status == 400 and msg in err["message"] and err["param"] == "prompt", err


def test_a_chat_rendered_as_text_completes_as_the_chat(server) -> None:
    """A client that renders the chat template itself and sends the text to /v1/completions (as
    harnesses with a chat template do) gets the chat's tokens, special ones included, and so the
    chat's answer; /tokenize reads a prompt the same way. A user's message is never read that
    way: a special token's text in it stays text. /tokenizer_info tells a client the rest."""
    client, tok, url, _ = server
    msgs = [{"role": "user", "content": "Speak, my lord."}]
    ids = encode_chat(tok, msgs, add_generation_prompt=True)[0]
    text = tok.decode(ids, skip_special=False)
    assert any(tok.is_special(t) for t in ids)
    status, body = http(f"{url}/tokenize", json.dumps({"prompt": text}).encode())
    assert status == 200 and json.loads(body)["tokens"] == ids
    assert json.loads(http(f"{url}/detokenize", json.dumps({"tokens": ids}).encode())[1])["prompt"] == text
    chat = client.chat.completions.create(model="debug", messages=msgs, max_tokens=8, temperature=0)
    done = client.completions.create(model="debug", prompt=text, max_tokens=8, temperature=0)
    assert done.usage.prompt_tokens == len(ids) and done.choices[0].text == chat.choices[0].message.content
    end = tok.decode([tok.end_ids[-1]], skip_special=False)
    status, body = http(f"{url}/tokenize", json.dumps({"messages": [{"role": "user", "content": end}]}).encode())
    got = json.loads(body)["tokens"]
    assert got.count(tok.end_ids[-1]) == ids.count(tok.end_ids[-1])  # only the template's own
    status, body = http(f"{url}/tokenizer_info")
    info = json.loads(body)
    assert status == 200 and info["model_max_length"] == server[3].engine.max_len
    assert info["vocab_size"] == tok.vocab_size
    eos = json.loads(http(f"{url}/tokenize", json.dumps({"prompt": info["eos_token"]}).encode())[1])["tokens"]
    assert eos == [tok.eot_id]


def test_chat_streaming_with_usage_n_and_seed(server) -> None:
    client, tok, _, _ = server
    msgs = [{"role": "user", "content": "Speak, my lord."}]
    full = client.chat.completions.create(model="debug", messages=msgs, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="debug", messages=msgs, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == len(encode_chat(tok, msgs, add_generation_prompt=True)[0])
    a = client.chat.completions.create(model="debug", messages=msgs, max_tokens=12, temperature=1.0, seed=7, n=2)
    b = client.chat.completions.create(model="debug", messages=msgs, max_tokens=12, temperature=1.0, seed=7, n=2)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len(a.choices) == 2


def test_logprobs(server) -> None:
    client, _, _, _ = server
    r = client.chat.completions.create(model="debug", messages=[{"role": "user", "content": "Speak."}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and len(content[0].top_logprobs) == 3
    assert content[0].logprob <= 0 and content[0].logprob == pytest.approx(content[0].top_logprobs[0].logprob)
    c = client.completions.create(model="debug", prompt="My lord", max_tokens=4, temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.token_logprobs) == c.usage.completion_tokens


def test_streams_carry_their_tokens_logprobs_and_the_echo(server) -> None:
    """Streamed with logprobs, each chunk carries its tokens' entries: joined, they equal the
    whole answer's (greedy, so the same tokens). An echoed stream starts with the prompt, and
    with logprobs with the prompt's scored tokens, as the whole echoed answer does."""
    client, tok, _, _ = server
    kw = {"model": "debug", "prompt": "My lord, the", "max_tokens": 12, "temperature": 0, "logprobs": 2,
          "extra_body": {"ignore_eos": True}}  # all 12 tokens, whatever the debug model says
    for echo in (False, True):
        whole = client.completions.create(**kw, echo=echo).choices[0]
        parts = [c.choices[0] for c in client.completions.create(**kw, stream=True, echo=echo) if c.choices]
        assert "".join(p.text for p in parts) == whole.text
        streamed = [lp for p in parts if p.logprobs for lp in p.logprobs.token_logprobs]
        assert streamed == whole.logprobs.token_logprobs
        assert len(streamed) == 12 + echo * len(tok.encode("My lord, the"))
        tops = [t for p in parts if p.logprobs for t in p.logprobs.top_logprobs]
        assert tops == whole.logprobs.top_logprobs
        offsets = [o for p in parts if p.logprobs for o in p.logprobs.text_offset]
        assert offsets == whole.logprobs.text_offset and offsets == sorted(offsets)
    msgs = [{"role": "user", "content": "Speak."}]
    kw = {"model": "debug", "messages": msgs, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2,
          "extra_body": {"ignore_eos": True}}
    chat = client.chat.completions.create(**kw).choices[0].logprobs.content
    got = [e for c in client.chat.completions.create(**kw, stream=True)
           if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in got] == [(e.token, e.logprob) for e in chat] and len(got) == 8


def test_echo_with_logprobs_scores_the_prompt(server) -> None:
    """As OpenAI's completions do (and evaluation harnesses read): with echo and logprobs the
    prompt's tokens come first, the first without a logprob, each other's equal to the model's
    own log-softmax after the tokens before it; then the generated tokens as without echo."""
    client, tok, _, host = server
    ids = tok.encode("To be, or not to be, that is the question")
    c = client.completions.create(model="debug", prompt=ids, max_tokens=2, temperature=0, logprobs=3, echo=True)
    lp = c.choices[0].logprobs
    plain = client.completions.create(model="debug", prompt=ids, max_tokens=2, temperature=0, logprobs=3)
    assert len(lp.tokens) == len(ids) + c.usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.tokens[len(ids):] == plain.choices[0].logprobs.tokens
    # the scored prefill computes every position's logits at once: float rounding, not a change
    assert lp.token_logprobs[len(ids):] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-4)
    with torch.no_grad():
        want = torch.log_softmax(host.engine.model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    got = torch.tensor(lp.token_logprobs[1:len(ids)])
    assert torch.allclose(got, want.gather(1, torch.tensor(ids[1:])[:, None])[:, 0], atol=1e-4)
    for t in range(1, len(ids)):
        assert len(lp.top_logprobs[t]) == 3
        assert max(lp.top_logprobs[t].values()) == pytest.approx(want[t - 1].max().item(), abs=1e-4)
    assert "".join(lp.tokens[:len(ids)]) == tok.decode(ids)
    one = client.completions.create(model="debug", prompt=ids[:1], max_tokens=1, temperature=0, logprobs=0, echo=True)
    assert one.choices[0].logprobs.token_logprobs[0] is None and len(one.choices[0].logprobs.tokens) == 2


def test_the_end_token_is_a_generated_token(server) -> None:
    """An answer the model ends with its end token: that token is counted in usage and has its
    logprob entry (as OpenAI's and vLLM's APIs give it; the text leaves it out), streamed too.
    A harness scoring with ``echo``, ``logprobs`` and ``max_tokens=1`` drops the last entry as
    the generated one, so it must be there whether or not the model chose to stop."""
    client, tok, _, host = server
    end = tok.end_ids[-1]

    def prefer_end(module, inputs, logits):  # the model now ends every answer at once
        logits[..., end] += 1e4
        return logits

    ids = tok.encode("To be, or not")
    hook = host.engine.model.head.register_forward_hook(prefer_end)
    try:
        r = client.completions.create(model="debug", prompt=ids, max_tokens=1, temperature=0, logprobs=1, echo=True)
        streamed = [c.choices[0] for c in client.completions.create(model="debug", prompt=ids, max_tokens=4,
                                                                      temperature=0, logprobs=1, stream=True)]
        chat = client.chat.completions.create(model="debug", messages=[{"role": "user", "content": "Speak."}],
                                              max_tokens=4, temperature=0, logprobs=True)
    finally:
        hook.remove()
    c = r.choices[0]
    assert c.finish_reason == "stop" and c.text == tok.decode(ids) and r.usage.completion_tokens == 1
    assert len(c.logprobs.tokens) == len(ids) + 1 and c.logprobs.tokens[-1] == tok.decode([end], skip_special=False)
    assert [t for p in streamed if p.logprobs for t in p.logprobs.tokens] == [c.logprobs.tokens[-1]]
    assert "".join(p.text for p in streamed) == "" and streamed[-1].finish_reason == "stop"
    assert chat.usage.completion_tokens == 1 and chat.choices[0].message.content == ""
    assert [e.token for e in chat.choices[0].logprobs.content] == [c.logprobs.tokens[-1]]


def test_logit_bias_and_penalties(server) -> None:
    """OpenAI's logit adjustments: a +100 bias all but forces its token and -100 bans one; the
    presence penalty lowers a token once it is in the answer, the frequency penalty per
    occurrence (checked on a model whose logits are fixed, so the choices follow from the
    formula alone); logprobs still report the model's own. Bad values are 400s naming the field,
    and options this server would otherwise ignore (best_of, suffix) are refused."""
    client, tok, url, host = server
    x, y = tok.encode(" the")[0], tok.encode(" lord")[0]
    kw = {"model": "debug", "prompt": "To be, or not", "max_tokens": 4, "temperature": 0, "logprobs": 0,
          "extra_body": {"ignore_eos": True}}
    forced = client.completions.create(**kw, logit_bias={str(x): 100}).choices[0]
    assert forced.text == tok.decode([x] * 4) and forced.logprobs.token_logprobs[0] < -0.01
    with torch.no_grad():  # the greedy first token, banned next
        first = int(host.engine.model(torch.tensor([tok.encode("To be, or not")])).logits[0, -1].argmax())
    free = client.completions.create(**kw).choices[0]
    banned = client.completions.create(**kw, logit_bias={str(first): -100}).choices[0]
    assert free.logprobs.tokens[0] == tok.decode([first], skip_special=False) != banned.logprobs.tokens[0]
    chat = client.chat.completions.create(model="debug", messages=[{"role": "user", "content": "Speak."}],
                                          max_tokens=3, temperature=0, logit_bias={str(y): 100},
                                          extra_body={"ignore_eos": True})
    assert chat.choices[0].message.content == tok.decode([y] * 3)

    def fixed(module, inputs, logits):  # x scores 3, y 2, every other token 0
        logits.zero_()
        logits[..., x], logits[..., y] = 3.0, 2.0
        return logits

    hook = host.engine.model.head.register_forward_hook(fixed)
    try:
        def answer(**penalty) -> str:
            return client.completions.create(**{**kw, "logprobs": None}, **penalty).choices[0].text
        plain, presence, frequency = answer(), answer(presence_penalty=1.5), answer(frequency_penalty=0.6)
    finally:
        hook.remove()
    assert plain == tok.decode([x] * 4)
    assert presence == tok.decode([x, y, x, x])   # x: 3 - 1.5 after its first time; y: 2 - 1.5 after its
    assert frequency == tok.decode([x, x, y, x])  # x: 3, 2.4, 1.8 against y's 2, then 1.4
    for extra, field, msg in (({"logit_bias": {"abc": 1}}, "logit_bias", "'abc' is not a token id"),
                              ({"logit_bias": {"99999": 1}}, "logit_bias", "token id 99999 is not in the vocabulary"),
                              ({"logit_bias": {"5": 500}}, "logit_bias", "bias in [-100, 100]"),
                              ({"presence_penalty": 3}, "presence_penalty", "presence_penalty"),
                              ({"best_of": 3}, "best_of", "best_of: choosing the best"),
                              ({"suffix": "end."}, "suffix", "suffix: inserting")):
        status, body = http(f"{url}/v1/completions", json.dumps({"model": "debug", "prompt": "To be", **extra}).encode())
        err = json.loads(body)["error"]
        assert status == 400 and msg in err["message"] and err["param"] == field, err
    assert client.completions.create(model="debug", prompt="To be", max_tokens=2, best_of=1).choices


def test_adapter_by_model_name(server) -> None:
    client, _, _, _ = server
    base = client.completions.create(model="debug", prompt="My lord", max_tokens=8, temperature=0)
    adapted = client.completions.create(model="debug:shakes", prompt="My lord", max_tokens=8, temperature=0)
    assert base.choices[0].text != adapted.choices[0].text


def test_content_as_a_list_of_text_parts(server) -> None:
    """Clients send content as parts: text parts are read (joined by newlines), other types are a
    400 that names the part and its type."""
    client, tok, url, _ = server
    as_parts = [{"type": "text", "text": "Speak,"}, {"type": "text", "text": "my lord."}]
    a = client.chat.completions.create(model="debug", messages=[{"role": "user", "content": as_parts}],
                                       max_tokens=6, temperature=0)
    b = client.chat.completions.create(model="debug", messages=[{"role": "user", "content": "Speak,\nmy lord."}],
                                       max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    status, body = http(f"{url}/tokenize", json.dumps({"messages": [{"role": "user", "content": as_parts}]}).encode())
    plain = encode_chat(tok, [{"role": "user", "content": "Speak,\nmy lord."}], add_generation_prompt=True)[0]
    assert status == 200 and json.loads(body)["tokens"] == plain
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match=r"messages\[1\]\.content\[1\].*'image_url'"):
        client.chat.completions.create(model="debug", max_tokens=2, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": [as_parts[0], image]}])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.content\[0\]: a text part needs"):
        client.chat.completions.create(model="debug", max_tokens=2, messages=[{"role": "user",
                                                                               "content": [{"type": "text"}]}])
    status, body = http(f"{url}/v1/chat/completions", json.dumps(
        {"model": "debug", "messages": [{"role": "user", "content": [{"text": "no type"}]}]}).encode())
    assert status == 400 and "content[0]: a content part needs its 'type'" in json.loads(body)["error"]["message"]


def test_structured_outputs_and_refused_tools(server) -> None:
    """response_format json_schema gives an answer that validates (streamed too); a schema that
    cannot be compiled is a 400 naming response_format. Tools would change what the client gets:
    a clear 400, never a plain answer that silently ignores them; their neutral values pass."""
    pytest.importorskip("llguidance", reason="structured outputs need llguidance (pip install -e .[serve])")
    jsonschema = pytest.importorskip("jsonschema", reason="the outputs are validated with jsonschema")
    client, _, _, _ = server
    msgs = [{"role": "user", "content": "Speak."}]
    schema = {"type": "object", "properties": {"verdict": {"enum": ["guilty", "innocent"]},
                                               "years": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["verdict", "years"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}
    r = client.chat.completions.create(model="debug", messages=msgs, max_tokens=40, response_format=fmt, seed=3)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    stream = client.chat.completions.create(model="debug", messages=msgs, max_tokens=40, response_format=fmt,
                                            stream=True, temperature=0)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": "two"}}}
    with pytest.raises(openai.BadRequestError, match="response_format") as e:
        client.chat.completions.create(model="debug", messages=msgs, max_tokens=2, response_format=bad)
    assert e.value.body["param"] == "response_format"

    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError, match="tools: this model's chat template has no tool-call format"):
        client.chat.completions.create(model="debug", messages=msgs, max_tokens=2, tools=[tool])
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="debug", messages=msgs, max_tokens=2, tool_choice="required")
    r = client.chat.completions.create(model="debug", messages=msgs, max_tokens=2, response_format={"type": "text"},
                                       tool_choice="auto")
    assert r.usage.completion_tokens >= 1


def test_a_failing_step_ends_its_requests_not_the_server(server) -> None:
    """An exception inside an engine step ends the requests of that batch with a 500 (OpenAI's
    shape); the engine thread lives on and the next request is served."""
    client, _, url, host = server
    engine, step = host.engine, host.engine.step
    calls = []

    def failing_once():  # the second step fails, with the request admitted and decoding
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug in a step")
        return step()

    engine.step = failing_once
    try:
        with pytest.raises(openai.InternalServerError, match="generation failed"):
            client.completions.create(model="debug", prompt="To be", max_tokens=3)
    finally:
        del engine.step  # the class's method again
    assert host.thread.is_alive() and http(f"{url}/health")[0] == 200
    assert client.completions.create(model="debug", prompt="To be", max_tokens=3).usage.completion_tokens >= 1
    assert engine.stats()["free_slots"] == 4


def test_embeddings(server) -> None:
    client, tok, _, _ = server
    r = client.embeddings.create(model="debug", input=["To be, or not to be", "My lord"])
    a, b = (torch.tensor(d.embedding) for d in r.data)
    assert len(r.data) == 2 and a.shape == b.shape == (64,) and abs(float(a.norm()) - 1) < 1e-4
    assert not torch.allclose(a, b)
    assert r.usage.prompt_tokens == len(tok.encode("To be, or not to be")) + len(tok.encode("My lord"))
    again = client.embeddings.create(model="debug", input="To be, or not to be")
    assert torch.allclose(torch.tensor(again.data[0].embedding), a, atol=1e-5)
    adapted = client.embeddings.create(model="debug:shakes", input="To be, or not to be")
    assert not torch.allclose(torch.tensor(adapted.data[0].embedding), a, atol=1e-3)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="debug", input="x", dimensions=3)
    ids = tok.encode("To be, or not to be")
    for given in (ids, [ids, tok.encode("My lord")]):  # token ids, as for a completion's prompt
        r = client.embeddings.create(model="debug", input=given)
        assert torch.allclose(torch.tensor(r.data[0].embedding), a, atol=1e-5)
    assert torch.allclose(torch.tensor(r.data[1].embedding), b, atol=1e-5)
    with pytest.raises(openai.BadRequestError, match=f"input: token id {tok.vocab_size} is not in the vocabulary"):
        client.embeddings.create(model="debug", input=[ids, [tok.vocab_size]])
    with pytest.raises(openai.BadRequestError, match="non-empty"):
        client.embeddings.create(model="debug", input=[ids, []])


def test_errors_have_openai_shape_and_4xx(server) -> None:
    client, _, url, host = server
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="debug", prompt="x", max_tokens=2, temperature=5)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="debug", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="debug", prompt="word " * 400, max_tokens=2)
    status, body = http(f"{url}/v1/completions", b"{not json")
    assert status == 400 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, body = http(f"{url}/tokenize", json.dumps({"prompt": "To be"}).encode())
    toks = json.loads(body)
    assert status == 200 and toks["count"] == len(toks["tokens"])
    status, body = http(f"{url}/detokenize", json.dumps({"tokens": toks["tokens"]}).encode())
    assert json.loads(body)["prompt"] == "To be"
    assert http(f"{url}/health")[0] == 200
    metrics = http(f"{url}/metrics")[1].decode()
    assert "lightseek_requests_total" in metrics and 'lightseek_expert_tokens_total{layer="1"' in metrics

    def steps() -> float:
        lines = http(f"{url}/metrics")[1].decode().splitlines()
        return next(float(line.split()[1]) for line in lines if line.startswith("lightseek_engine_steps_total"))

    before = steps()
    client.completions.create(model="debug", prompt="x", max_tokens=2)
    assert steps() >= before + 1

    def histogram(name: str) -> dict:
        """{le: cumulative count} of histogram ``name``, with its _count and _sum."""
        out = {}
        for line in http(f"{url}/metrics")[1].decode().splitlines():
            if line.startswith(f"{name}_bucket"):
                out[line.split('le="')[1].split('"')[0]] = float(line.split()[1])
            elif line.startswith((f"{name}_count", f"{name}_sum")):
                out[line.split()[0].rsplit("_", 1)[1]] = float(line.split()[1])
        return out

    first, gaps, whole = (histogram(f"lightseek_{n}_seconds") for n in
                          ("time_to_first_token", "inter_token_latency", "request_latency"))
    client.completions.create(model="debug", prompt="x", max_tokens=4, extra_body={"ignore_eos": True})
    first2, gaps2, whole2 = (histogram(f"lightseek_{n}_seconds") for n in
                             ("time_to_first_token", "inter_token_latency", "request_latency"))
    assert first2["count"] == first["count"] + 1 and whole2["count"] == whole["count"] + 1
    assert gaps2["count"] == gaps["count"] + 3  # four tokens, one per step: three gaps
    for h in (first2, gaps2, whole2):
        counts = [v for k, v in h.items() if k not in ("count", "sum")]
        assert counts == sorted(counts) and h["+Inf"] == h["count"] and len(counts) > 10  # cumulative buckets
    assert whole2["sum"] - whole["sum"] >= first2["sum"] - first["sum"] > 0  # a request outlasts its first token
    assert host.engine.stats()["free_slots"] == 4  # nothing leaked


def test_a_full_queue_answers_429_with_retry_after(debug_checkpoint) -> None:
    model = load_model(debug_checkpoint)
    tok = Tokenizer.load(debug_checkpoint / "tokenizer.json")
    host = EngineHost(Engine(model, tok, max_slots=1, max_waiting=2))
    host.close()  # a stalled engine: submitted requests stay queued
    srv, thread, url = start(build_app(host, "debug"))
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=2)
        for _ in range(2):  # these wait (and time out on the client side)
            with pytest.raises(openai.APITimeoutError):
                client.completions.create(model="debug", prompt="x", max_tokens=2)
        with pytest.raises(openai.RateLimitError) as err:
            client.completions.create(model="debug", prompt="x", max_tokens=2)
        assert err.value.response.headers["retry-after"] == "1"
        assert err.value.body["code"] == "queue_full"
    finally:
        srv.should_exit = True
        thread.join(timeout=5)


def test_health_is_503_until_the_model_is_loaded(debug_checkpoint) -> None:
    from lightseek.serve.app import PendingHost

    pending = PendingHost()
    srv, thread, url = start(build_app(pending, "debug"))
    try:
        status, body = http(f"{url}/health")
        assert status == 503 and json.loads(body)["error"]["code"] == "model_loading"
        status, _ = http(f"{url}/v1/completions", json.dumps({"model": "debug", "prompt": "x"}).encode())
        assert status == 503
        model = load_model(debug_checkpoint)
        pending.set(EngineHost(Engine(model, Tokenizer.load(debug_checkpoint / "tokenizer.json"), max_slots=1)))
        assert http(f"{url}/health")[0] == 200
        status, body = http(f"{url}/v1/completions", json.dumps({"model": "debug", "prompt": "x",
                                                                 "max_tokens": 2}).encode())
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] <= 2
    finally:
        srv.should_exit = True
        thread.join(timeout=5)
        if pending.target is not None:
            pending.target.close()


def test_usage_log_counts_every_request_including_abandoned_streams(debug_checkpoint, tmp_path) -> None:
    model = load_model(debug_checkpoint)
    tok = Tokenizer.load(debug_checkpoint / "tokenizer.json")
    log = tmp_path / "usage.jsonl"
    host = EngineHost(Engine(model, tok, max_slots=2), usage_log=log)
    srv, thread, url = start(build_app(host, "debug"))
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        done = client.completions.create(model="debug", prompt="My lord", max_tokens=6, temperature=0, user="ann")
        stream = client.completions.create(model="debug", prompt="To be", max_tokens=100, stream=True,
                                           extra_body={"ignore_eos": True})
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()  # the client goes away mid-stream
        records = []
        for _ in range(100):
            records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            if len(records) == 2:
                break
            time.sleep(0.05)
        first, dropped = records
        assert first["id"] == done.id and first["user"] == "ann" and first["model"] == "debug"
        assert first["completion_tokens"] == done.usage.completion_tokens
        assert first["prompt_tokens"] == done.usage.prompt_tokens
        assert dropped["finish_reason"] == "cancelled" and 3 <= dropped["completion_tokens"] < 100
        assert host.engine.stats()["free_slots"] == 2
    finally:
        srv.should_exit = True
        thread.join(timeout=5)
        host.close()
