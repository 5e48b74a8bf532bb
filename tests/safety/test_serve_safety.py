"""Moderation in the server: /v1/moderations with the official client, prompts refused before
they run, and an output stream stopped with finish_reason content_filter within 16 tokens of the
span the policy blocks."""

from __future__ import annotations

import re

import pytest

openai = pytest.importorskip("openai", reason="the API tests need the `openai` client (pip install -e .[test])")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e .[serve])")

from lightseek.data.tokenizer import Tokenizer
from lightseek.model.checkpoint import load_model
from lightseek.safety.cascade import Moderator
from lightseek.safety.policy import Policy
from lightseek.safety.rules import Rules
from lightseek.serve.app import EngineHost, build_app
from lightseek.serve.engine import Engine
from tests.serve.test_api import start

PROMPT = "Give me 5 tips for soup."  # harmless to the tiny classifier


def serve(checkpoint, moderator):
    host = EngineHost(Engine(load_model(checkpoint), Tokenizer.load(checkpoint / "tokenizer.json"), max_slots=2,
                             max_waiting=8, prefill_chunk=16))
    srv, thread, url = start(build_app(host, "debug", [], moderator=moderator))
    return srv, thread, host, url


def stop(srv, thread, host):
    srv.should_exit = True
    thread.join(timeout=5)
    host.close()


@pytest.fixture(scope="module")
def free_text(debug_checkpoint):
    """What the model writes for PROMPT (sampled with a seed, 60 tokens): its text and token offsets."""
    srv, thread, host, url = serve(debug_checkpoint, None)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        r = client.completions.create(model="debug", prompt=PROMPT, max_tokens=60, temperature=1.0, seed=5,
                                      logprobs=0, extra_body={"ignore_eos": True})
        with pytest.raises(openai.NotFoundError, match="moderation is not enabled"):
            client.moderations.create(input="hello")
        return r.choices[0].text, r.choices[0].logprobs.text_offset, r.choices[0].logprobs.tokens
    finally:
        stop(srv, thread, host)


def test_moderations_endpoint_and_input_refusal(debug_checkpoint, tiny_classifier) -> None:
    mod = Moderator(tiny_classifier, Policy())
    srv, thread, host, url = serve(debug_checkpoint, mod)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        r = client.moderations.create(input=["I will kill Tom tonight and make it hurt",
                                             "how do I make soup for Anna this weekend?"])
        assert [x.flagged for x in r.results] == [True, False]
        assert r.results[0].categories.violence and r.results[0].category_scores.violence >= 0.5
        with pytest.raises(openai.BadRequestError, match="only text inputs"):
            client.moderations.create(input=[{"type": "image_url", "image_url": {"url": "http://x"}}])
        with pytest.raises(openai.BadRequestError, match="content policy") as e:
            client.chat.completions.create(model="debug", max_tokens=4, messages=[
                {"role": "user", "content": "all jews are vermin and should be wiped out"}])
        assert e.value.code == "content_policy_violation"
        ok = client.chat.completions.create(model="debug", max_tokens=4, temperature=0, messages=[
            {"role": "user", "content": "how do I make rice for Bob this weekend?"}])  # greedy: blank lines
        assert ok.choices[0].finish_reason in ("length", "stop")
        metrics = __import__("urllib.request").request.urlopen(f"{url}/metrics").read().decode()
        assert 'direction="input"' in metrics and 'action="block"' in metrics
    finally:
        stop(srv, thread, host)


def test_an_output_stream_stops_within_16_tokens_of_a_blocked_span(debug_checkpoint, tiny_classifier,
                                                                    free_text) -> None:
    text, offsets, tokens = free_text
    # a word the model will write, from its 16th token on, made a rule: the output violates the policy
    i = next(i for i in range(16, len(tokens)) if len(tokens[i].strip()) >= 2)
    span = tokens[i].strip()
    rules = Rules({"S1": {"patterns": [re.escape(span)]}})
    end_char = text.find(span) + len(span)   # where the model first completes the span (it may repeat)
    end_tok = next(i for i, o in enumerate(offsets) if o + len(tokens[i]) >= end_char) + 1
    srv, thread, host, url = serve(debug_checkpoint, Moderator(tiny_classifier, Policy(), rules))
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        chunks = list(client.completions.create(model="debug", prompt=PROMPT, max_tokens=60, temperature=1.0, seed=5,
                                                stream=True, extra_body={"ignore_eos": True}))
        shown = "".join(c.choices[0].text for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert text.startswith(shown) and len(shown) < len(text)
        shown_tokens = sum(1 for i, o in enumerate(offsets) if o + len(tokens[i]) <= len(shown))
        assert shown_tokens <= end_tok + 16
        whole = client.completions.create(model="debug", prompt=PROMPT, max_tokens=60, temperature=1.0, seed=5,
                                          extra_body={"ignore_eos": True})
        assert whole.choices[0].finish_reason == "content_filter" and whole.choices[0].text == ""
        assert whole.usage.completion_tokens <= end_tok + 16  # generation stopped there too
    finally:
        stop(srv, thread, host)


def test_each_key_is_moderated_under_its_own_policy(debug_checkpoint, tiny_classifier, tmp_path) -> None:
    from lightseek.platform.gate import Gate

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "lenient.yaml").write_text("categories:\n  S10: {action: flag}\n")
    gate = Gate(str(tmp_path / "p.db"), secret="s")
    gate.accounts.create_org("acme", "enterprise")
    strict, _ = gate.accounts.create_key("acme", "strict")
    lenient, _ = gate.accounts.create_key("acme", "lenient", safety_policy="lenient")
    odd, _ = gate.accounts.create_key("acme", "odd", safety_policy="missing")
    host = EngineHost(Engine(load_model(debug_checkpoint), Tokenizer.load(debug_checkpoint / "tokenizer.json"),
                             max_slots=2, max_waiting=8, prefill_chunk=16), on_end=gate.ended)
    mod = Moderator(tiny_classifier, Policy(), policies=policies)
    srv, thread, url = start(build_app(host, "debug", [], gate, moderator=mod))
    try:
        hate = "all jews are vermin and should be wiped out"

        def ask(key):
            return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0).completions.create(
                model="debug", prompt=hate, max_tokens=3)
        with pytest.raises(openai.BadRequestError, match="content policy"):
            ask(strict)
        assert ask(lenient).choices[0].finish_reason in ("length", "stop")  # flagged, not refused
        with pytest.raises(openai.PermissionDeniedError, match="'missing' is not configured"):
            ask(odd)
        r = openai.OpenAI(base_url=f"{url}/v1", api_key=lenient, max_retries=0).moderations.create(input=hate)
        assert r.results[0].flagged and r.results[0].lightseek["action"] == "flag"
    finally:
        stop(srv, thread, host)
        gate.close()
