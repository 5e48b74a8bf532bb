"""The serving engine: continuous batching, batch invariance, chunked prefill, cancellation,
the bounded queue, per-request sampling, stop strings and per-request adapters."""

from __future__ import annotations

import pytest
import torch

from lightseek.adapters.lora import use_adapters
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import ConfigError
from lightseek.model.checkpoint import load_model
from lightseek.model.generate import generate_ids
from lightseek.model.sampling import SamplingParams
from lightseek.serve.engine import Engine, GenParams, QueueFull

TEXTS = ["To be, or not", "My lord, I", "Enter the king and all his train, with trumpets; then the queen",
         "O", "What say you to this? " * 6]


@pytest.fixture(scope="module")
def served(debug_checkpoint):
    return load_model(debug_checkpoint), Tokenizer.load(debug_checkpoint / "tokenizer.json")


def alone(model, tok, prompt, n, **kw):
    with use_adapters(model, kw.pop("adapter", None)):
        return list(generate_ids(model, prompt, SamplingParams(max_new_tokens=n, **kw), stop_ids=tok.end_ids))


def test_batched_greedy_equals_each_request_alone(served) -> None:
    model, tok = served
    prompts = [tok.encode(t) for t in TEXTS]
    engine = Engine(model, tok, max_slots=3, prefill_chunk=7)  # more requests than slots, chunked prefill
    reqs = engine.generate(prompts, GenParams(max_tokens=12, temperature=0))
    for p, r in zip(prompts, reqs):
        assert r.output_ids == alone(model, tok, p, 12, temperature=0)
        assert r.finish_reason in ("length", "stop")
    assert engine.stats()["free_slots"] == 3 and engine.idle


def test_a_sequence_decoding_alone_takes_the_decode_step_in_its_own_slot(served, monkeypatch) -> None:
    """When one sequence is left decoding, the engine runs the one-sequence decode step on its
    slot of the cache (slot 1 here, once the request in slot 0 ended); the tokens are those of
    the model's own forward."""
    from lightseek.model.decode import DecodeStep

    model, tok = served
    rows = []
    run = DecodeStep.run
    monkeypatch.setattr(DecodeStep, "run", lambda self, *a, row=0: rows.append(row) or run(self, *a, row=row))
    short, long = tok.encode(TEXTS[0]), tok.encode(TEXTS[1])
    engine = Engine(model, tok, max_slots=2)
    a = engine.submit(short, GenParams(max_tokens=3, temperature=0, ignore_eos=True))
    b = engine.submit(long, GenParams(max_tokens=20, temperature=0, ignore_eos=True))
    while not engine.idle:
        engine.step()
    assert len(a.output_ids) == 3 and rows.count(1) >= 15  # a took slot 0, b slot 1 and ended alone
    expected = list(generate_ids(model, long, SamplingParams(max_new_tokens=20, temperature=0), fast=False))
    assert b.output_ids == expected


def test_seeded_sampling_is_independent_of_the_batch(served) -> None:
    model, tok = served
    p = GenParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=123)
    engine = Engine(model, tok, max_slots=4)
    together = engine.generate([tok.encode(t) for t in TEXTS[:4]], p)
    single = Engine(model, tok, max_slots=1).generate([tok.encode(TEXTS[2])], p)[0]
    assert together[2].output_ids == single.output_ids
    again = Engine(model, tok, max_slots=2).generate([tok.encode(TEXTS[2])], p)[0]
    assert again.output_ids == single.output_ids


def test_cancel_frees_the_slot_at_once(served) -> None:
    model, tok = served
    engine = Engine(model, tok, max_slots=1)
    a = engine.submit(tok.encode(TEXTS[0]), GenParams(max_tokens=50, temperature=0))
    b = engine.submit(tok.encode(TEXTS[1]), GenParams(max_tokens=3, temperature=0))
    engine.step()
    assert a.slot is not None and b.slot is None and engine.stats()["waiting"] == 1
    engine.cancel(a)
    assert a.finish_reason == "cancelled" and engine.stats()["free_slots"] == 1
    engine.step()
    assert b.slot is not None
    engine.run()
    assert b.done and len(b.output_ids) <= 3 and engine.stats()["free_slots"] == 1


def test_long_prefill_does_not_stall_running_streams(served) -> None:
    model, tok = served
    engine = Engine(model, tok, max_slots=2, prefill_chunk=8)
    stream = engine.submit(tok.encode(TEXTS[0]), GenParams(max_tokens=40, temperature=0))
    engine.step()
    long = engine.submit(tok.encode(TEXTS[4] * 2)[:100], GenParams(max_tokens=2, temperature=0))
    steps_with_stream_token = 0
    for _ in range(6):  # the 100-token prompt needs 13 chunks; the stream gets a token every step
        events = engine.step()
        steps_with_stream_token += any(e.request is stream and e.token_ids for e in events)
        assert 0 < long.prefilled < 100
    assert steps_with_stream_token == 6


def test_bounded_queue_and_bad_requests(served) -> None:
    model, tok = served
    engine = Engine(model, tok, max_slots=1, max_waiting=1)
    engine.submit([1, 2, 3])
    with pytest.raises(QueueFull):
        engine.submit([1, 2, 3])
    engine = Engine(model, tok, max_slots=1)
    with pytest.raises(ConfigError, match="empty"):
        engine.submit([])
    with pytest.raises(ConfigError, match="context holds"):
        engine.submit([1] * model.cfg.max_seq_len)
    with pytest.raises(ConfigError, match="token ids must be in"):
        engine.submit([10**6])
    with pytest.raises(ConfigError, match="unknown adapter"):
        engine.submit([1, 2], adapter="nope")
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": [""]}, {"logprobs": 50},
                {"prompt_logprobs": 21}, {"presence_penalty": 2.5}, {"frequency_penalty": -3},
                {"logit_bias": {"7": 1.0}}, {"logit_bias": {7: 101.0}}):
        with pytest.raises(ConfigError):
            GenParams(**bad)


def test_stop_strings_and_streamed_text(served) -> None:
    model, tok = served
    engine = Engine(model, tok, max_slots=1)
    free = engine.generate([tok.encode(TEXTS[0])], GenParams(max_tokens=30, temperature=0))[0]
    assert len(free.text) > 6
    stop = free.text[3:6]  # a stop string the greedy output is known to contain
    req = engine.submit(tok.encode(TEXTS[0]), GenParams(max_tokens=30, temperature=0, stop=[stop], logprobs=2))
    shown = ""
    while not req.done:
        for e in engine.step():
            shown += e.text
    assert req.finish_reason == "stop" and req.text == free.text[:free.text.find(stop)]
    assert shown == req.text and stop not in shown
    assert len(req.logprobs) == len(req.output_ids) and len(req.logprobs[0]["top"]) == 2


def test_a_prompt_is_scored_while_it_is_prefilled(served) -> None:
    """With ``prompt_logprobs``, each prompt token after the first gets its log-probability (and
    the top alternatives) from the prefill itself, in chunks, beside other requests; equal to a
    whole forward pass of the prompt. A scored prompt takes a cached start only with its scores:
    not from an unscored request's slot, but from a slot a request scored the same way left."""
    model, tok = served
    prompt = tok.encode(" ".join(TEXTS))[:64]  # several chunks of 16, room for the endings below
    assert len(prompt) == 64
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([prompt])).logits[0, :-1].float(), -1)
    engine = Engine(model, tok, max_slots=2, prefill_chunk=16)
    plain = engine.submit(prompt, GenParams(max_tokens=2, temperature=0))
    other = engine.submit(tok.encode(TEXTS[2]), GenParams(max_tokens=3, temperature=0))
    while not (plain.done and other.done):
        engine.step()
    for reused in (0, len(prompt) - 1):  # the first time its keys are cached unscored; then scored
        hits = engine.prefix_hit_tokens
        req = engine.submit(prompt, GenParams(max_tokens=2, temperature=0, prompt_logprobs=3))
        while not req.done:
            engine.step()
        assert engine.prefix_hit_tokens - hits == reused
        assert [e["token"] for e in req.prompt_logprobs] == prompt[1:]
        got = torch.tensor([e["logprob"] for e in req.prompt_logprobs])
        assert torch.allclose(got, want.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0], atol=1e-4)
        assert all(len(e["top"]) == 3 and e["top"][0][1] == pytest.approx(want[t].max().item(), abs=1e-4)
                   for t, e in enumerate(req.prompt_logprobs))
    hits = engine.prefix_hit_tokens  # scores with another number of alternatives are not taken
    req = engine.submit(prompt, GenParams(max_tokens=1, temperature=0, prompt_logprobs=1))
    while not req.done:
        engine.step()
    assert engine.prefix_hit_tokens == hits and all(len(e["top"]) == 1 for e in req.prompt_logprobs)
    # scored prompts that run together with one start share it, scores included: a harness's
    # continuations of one context; each is scored as its own whole forward pass scores it
    ends = [tok.encode(t) for t in (" What say you?", " My lord, I", " Enter")]
    prompts = [prompt + e for e in ends]
    engine = Engine(model, tok, max_slots=3, prefill_chunk=16)
    reqs = [engine.submit(p, GenParams(max_tokens=1, temperature=0, prompt_logprobs=2)) for p in prompts]
    while not all(r.done for r in reqs):
        engine.step()
    assert engine.prefix_hit_tokens >= 2 * (len(prompt) - 1)
    for p, r in zip(prompts, reqs):
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([p])).logits[0, :-1].float(), -1)
        assert [e["token"] for e in r.prompt_logprobs] == p[1:]
        got = torch.tensor([e["logprob"] for e in r.prompt_logprobs])
        assert torch.allclose(got, want.gather(1, torch.tensor(p[1:])[:, None])[:, 0], atol=1e-4)
        assert all(len(e["top"]) == 2 for e in r.prompt_logprobs)


def test_each_request_gets_its_own_adapter(debug_checkpoint, strong_adapter) -> None:
    model = load_model(debug_checkpoint)
    tok = Tokenizer.load(debug_checkpoint / "tokenizer.json")
    strong_adapter(model, "a")
    prompts = [tok.encode(t) for t in TEXTS[:3]]
    choice = ["a", None, "a"]
    reqs = Engine(model, tok, max_slots=3).generate(prompts, GenParams(max_tokens=8, temperature=0), choice)
    for p, r, c in zip(prompts, reqs, choice):
        assert r.output_ids == alone(model, tok, p, 8, temperature=0, adapter=c)
    assert reqs[0].output_ids != alone(model, tok, prompts[0], 8, temperature=0)  # the adapter matters


def test_a_chat_reply_ends_at_the_end_of_turn_token(served) -> None:
    """The engine stops a sequence at <|end|> (a chat turn's end), not only at end-of-text: a
    model that closes its reply must not run on into a made-up next turn."""
    model, tok = served
    end = tok.token_id("<|end|>")
    prompt = tok.encode("To be, or not")
    free = Engine(model, tok, max_slots=1).generate([prompt], GenParams(max_tokens=6, temperature=0))[0]
    assert len(free.output_ids) == 6

    def prefer_end(module, inputs, logits):  # the model now wants to close its turn at once
        logits[..., end] += 1e4
        return logits

    hook = model.head.register_forward_hook(prefer_end)
    try:
        r = Engine(model, tok, max_slots=1).generate([prompt], GenParams(max_tokens=6, temperature=0))[0]
    finally:
        hook.remove()
    assert r.finish_reason == "stop" and r.output_ids == [] and r.text == ""


def test_events_of_a_lagging_stream_merge_in_order() -> None:
    """A streamed response that fell behind sends each choice's backlog as one chunk: texts and
    ids joined in order, finished once the last event is."""
    from lightseek.serve.app import _merge
    from lightseek.serve.engine import Event, GenParams, Request

    a, b = Request(1, [1], GenParams()), Request(2, [1], GenParams())
    merged = _merge([Event(a, [5], "He", False), Event(b, [7], "x", False), Event(a, [6], "llo", True)])
    assert [(m.request.id, m.token_ids, m.text, m.finished) for m in merged] == [(1, [5, 6], "Hello", True),
                                                                                   (2, [7], "x", False)]


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                                                  "score": {"type": "integer", "minimum": 0, "maximum": 9},
                                                  "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                                           "maxItems": 2}},
                 "required": ["answer", "score", "tags"], "additionalProperties": False}


def test_structured_outputs_follow_their_schema(served) -> None:
    """A json_schema request's text parses and validates whatever the (random) model prefers,
    in a batch beside a free-text request, sampled or greedy; the logprobs stay the model's own."""
    pytest.importorskip("llguidance", reason="structured outputs need llguidance (pip install -e .[serve])")
    jsonschema = pytest.importorskip("jsonschema", reason="the outputs are validated with jsonschema")
    import json

    import torch

    model, tok = served
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    engine = Engine(model, tok, max_slots=4)
    prompt = tok.encode("To be, or not")
    reqs = [engine.submit(prompt, GenParams(max_tokens=60, temperature=t, seed=s, response_format=fmt, logprobs=0))
            for t, s in ((0, None), (1.0, 1), (1.0, 2))]
    free = engine.submit(prompt, GenParams(max_tokens=12, temperature=0))
    engine.run()
    for r in reqs:
        assert r.finish_reason == "stop", r.text  # complete: the grammar ended it on its closing brace
        jsonschema.validate(json.loads(r.text), ANSWER_SCHEMA)
        with torch.no_grad():  # the reported logprob of the first token is the unconstrained model's
            first = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)[r.output_ids[0]]
        assert r.logprobs[0]["logprob"] == pytest.approx(float(first), abs=1e-4)
    assert free.output_ids == alone(model, tok, prompt, 12, temperature=0)  # its neighbours do not constrain it
    obj = engine.generate([prompt], GenParams(max_tokens=200, temperature=0, response_format={"type": "json_object"}))
    if obj[0].finish_reason == "stop":  # a random model may write a long string; a finished one parses
        assert isinstance(json.loads(obj[0].text), dict)
    assert obj[0].text.startswith("{")


def test_a_complete_answer_ends_at_its_last_token(served) -> None:
    """The grammar ends a complete JSON answer as "stop" on its closing brace, also when that is
    exactly the max_tokens-th token, so a valid answer is never reported as cut."""
    pytest.importorskip("llguidance", reason="structured outputs need llguidance (pip install -e .[serve])")
    import json

    model, tok = served
    fmt = {"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}}}
    prompt = tok.encode("My lord")
    whole = Engine(model, tok).generate([prompt], GenParams(max_tokens=50, temperature=0, response_format=fmt))[0]
    assert whole.finish_reason == "stop" and whole.output_ids[-1] not in tok.end_ids  # ended on "}", not an end token
    assert json.loads(whole.text) in ({"ok": True}, {"ok": False})
    exact = Engine(model, tok).generate([prompt], GenParams(max_tokens=len(whole.output_ids), temperature=0,
                                                            response_format=fmt))[0]
    assert exact.finish_reason == "stop" and exact.text == whole.text


LONG_SCHEMA = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 400},
                                                "items": {"type": "array", "items": {"type": "object", "properties": {
                                                    "name": {"type": "string"}, "ok": {"type": "boolean"}},
                                                    "required": ["name", "ok"], "additionalProperties": False}},
                                                "level": {"enum": ["low", "high"]}},
               "required": ["note", "items", "level"], "additionalProperties": False}


def test_a_json_answer_closes_within_its_budget(served) -> None:
    """A random model writes long strings; with too few tokens for them, each answer still ends
    as complete JSON that validates, reported as "length" (the budget shortened it), and is the
    model's own answer up to the token the budget replaced."""
    pytest.importorskip("llguidance", reason="structured outputs need llguidance (pip install -e .[serve])")
    jsonschema = pytest.importorskip("jsonschema", reason="the outputs are validated with jsonschema")
    import json

    model, tok = served
    fmt = {"type": "json_schema", "json_schema": {"schema": LONG_SCHEMA}}
    prompt = tok.encode("To be, or not")
    engine = Engine(model, tok, max_slots=4)
    shortest = len(engine.grammars.constraint(fmt).closing(500))  # the fewest tokens a valid answer takes
    short = [engine.submit(prompt, GenParams(max_tokens=shortest + n, temperature=1.0, seed=s, response_format=fmt))
             for s, n in ((1, 1), (2, 8), (3, 20), (4, 40))]
    free = [engine.submit(prompt, GenParams(max_tokens=400, temperature=1.0, seed=s, response_format=fmt))
            for s in (1, 2, 3, 4)]
    engine.run()
    cut = 0
    for r, f in zip(short, free):
        assert len(r.output_ids) <= r.params.max_tokens
        jsonschema.validate(json.loads(r.text), LONG_SCHEMA)
        if r.constraint.cut:
            cut += 1
            assert r.finish_reason == "length"
            same = next(i for i, (a, b) in enumerate(zip(r.output_ids, f.output_ids + [None] * 999)) if a != b)
            assert r.output_ids[:same] == f.output_ids[:same] and same > 0  # the model's own tokens until then
        else:  # it fitted: the same answer as without the limit
            assert r.finish_reason == "stop" and r.output_ids == f.output_ids
    assert cut >= 2, [r.text for r in short]  # the random model's strings outrun these budgets


def test_closing_completes_the_answer_from_where_it_stands(served) -> None:
    """`Constraint.closing` finds tokens that end the answer validly from the middle of a string
    and of an array of objects, and None when that needs more tokens than allowed."""
    pytest.importorskip("llguidance", reason="structured outputs need llguidance (pip install -e .[serve])")
    jsonschema = pytest.importorskip("jsonschema", reason="the outputs are validated with jsonschema")
    import json

    from lightseek.serve.grammar import Grammars

    _, tok = served
    grammars = Grammars(tok, tok.vocab_size)
    numbers = {"type": "object", "properties": {"n": {"type": "integer"}, "xs": {"type": "array", "items": {
        "type": "number"}, "minItems": 3}}, "required": ["n", "xs"], "additionalProperties": False}
    for schema, start in ((LONG_SCHEMA, '{"note": "It was the best of'),
                          (LONG_SCHEMA, '{"note": "", "items": [{"name": "x", "ok": true}, {"na'),
                          (numbers, '{"n": 4'),  # a number with a key to come: ended, not lengthened
                          (numbers, '{"n": 1, "xs": [2.5')):  # an array short of minItems
        c = grammars.constraint({"type": "json_schema", "json_schema": {"schema": schema}})
        ids = tok.encode(start)
        assert all(c.advance(t) for t in ids)
        path = c.closing(100)
        assert path is not None and c.closing(len(path) - 1) is None, start
        jsonschema.validate(json.loads(tok.decode(ids + path)), schema)
        assert tok.decode(ids + path).startswith(start)


def test_structured_output_errors_name_the_field(served) -> None:
    pytest.importorskip("llguidance", reason="structured outputs need llguidance (pip install -e .[serve])")
    model, tok = served
    engine = Engine(model, tok, max_slots=2)
    prompt = tok.encode("To be")
    with pytest.raises(ConfigError, match="response_format.json_schema.schema"):
        engine.submit(prompt, GenParams(response_format={"type": "json_schema", "json_schema": {"name": "x"}}))
    with pytest.raises(ConfigError, match="response_format type 'yaml'"):
        engine.submit(prompt, GenParams(response_format={"type": "yaml"}))
    with pytest.raises(ConfigError, match="the JSON schema cannot be used"):
        engine.submit(prompt, GenParams(response_format={"type": "json_schema", "json_schema": {
            "schema": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}}}))
    with pytest.raises(ConfigError, match="ignore_eos cannot be combined"):
        GenParams(ignore_eos=True, response_format={"type": "json_object"})
    with pytest.raises(ConfigError, match="stop strings cannot be combined"):
        GenParams(stop=["}"], response_format={"type": "json_object"})
    assert engine.idle and engine.stats()["free_slots"] == 2


def test_requests_arriving_together_share_their_prompt_start(served) -> None:
    """Requests that run at the same time with one system prompt compute it once: each later one
    copies what the first has already computed (the whole shared start, once its prefill is
    done), and every answer is what that prompt gets alone. An identical prompt (a request's other
    choices) copies all but its last token."""
    model, tok = served
    system = tok.encode("You are a helpful assistant who answers in the words of the plays. " * 2)
    asks = [tok.encode(t) for t in ("What say you?", "My lord, I", "Enter the king")]
    prompts = [system + a for a in asks] + [system + asks[0]]
    engine = Engine(model, tok, max_slots=4, prefill_chunk=16)
    reqs = engine.generate(prompts, GenParams(max_tokens=6, temperature=0))
    for p, r in zip(prompts, reqs):
        assert r.output_ids == alone(model, tok, p, 6, temperature=0)
    shared = len(system) + _common(asks[1], asks[0])  # at least the system prompt, three times over
    assert engine.stats()["prefix_hit_tokens"] >= 2 * shared + len(prompts[3]) - 1
    alone_engine = Engine(model, tok, max_slots=4, prefill_chunk=16, prefix_cache=False)
    alone_engine.generate(prompts, GenParams(max_tokens=6, temperature=0))
    assert alone_engine.stats()["prefix_hit_tokens"] == 0


def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_a_shared_prompt_prefix_is_computed_once(served, strong_adapter) -> None:
    """Prefix caching: a prompt that starts as an earlier one (a shared system prompt) reuses the
    keys and values its slot still holds, and generates exactly what it would without them."""
    model, tok = served
    system = tok.encode("You are a helpful assistant who answers in the words of the plays. " * 2)
    asks = [tok.encode(t) for t in ("What say you?", "My lord, I", "Enter the king")]
    assert len(system) > 32
    engine = Engine(model, tok, max_slots=2, prefill_chunk=16)
    first = engine.generate([system + asks[0]], GenParams(max_tokens=6, temperature=0))[0]
    assert first.output_ids == alone(model, tok, system + asks[0], 6, temperature=0)
    assert engine.stats()["prefix_hit_tokens"] == 0
    # the same prompt again reuses all but its last token, and still answers the same
    again = engine.generate([system + asks[0]], GenParams(max_tokens=6, temperature=0))[0]
    assert again.output_ids == first.output_ids
    hits = engine.stats()["prefix_hit_tokens"]
    assert hits == len(system + asks[0]) - 1
    later = engine.generate([system + a for a in asks[1:]], GenParams(max_tokens=6, temperature=0))
    for a, r in zip(asks[1:], later):
        assert r.output_ids == alone(model, tok, system + a, 6, temperature=0)
    assert engine.stats()["prefix_hit_tokens"] - hits >= len(system)  # one of them reused the system prompt
    # keys computed under an adapter are never reused for another adapter (or none)
    strong_adapter(model, "shakes")
    try:
        tuned = Engine(model, tok, max_slots=1, prefill_chunk=16)
        tuned.generate([system + asks[0]], GenParams(max_tokens=4, temperature=0))
        r = tuned.generate([system + asks[0]], GenParams(max_tokens=4, temperature=0), adapters=["shakes"])[0]
        assert tuned.stats()["prefix_hit_tokens"] == 0
        assert r.output_ids == alone(model, tok, system + asks[0], 4, temperature=0, adapter="shakes")
    finally:
        from lightseek.adapters.lora import remove_adapter

        remove_adapter(model, "shakes")
