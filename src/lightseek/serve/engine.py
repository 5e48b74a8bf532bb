"""The serving engine: continuous batching over a slot KV cache, token ids in and out.

Each `step`:

1. admits waiting requests into free slots (the queue is bounded: `submit` refuses work it
   cannot hold, with `QueueFull`);
2. runs one prefill chunk (at most ``prefill_chunk`` prompt tokens of the oldest request still
   prefilling), so a long prompt is spread over many steps and never stalls running streams
   for more than one chunk; what a running request has already computed of the same prompt
   start (a shared system prompt, the other choices of an ``n``) is copied, not computed;
3. runs one batched decode forward for every request that has finished its prefill, each row
   at its own position, with its own adapter (`adapters.lora.use_adapters`);
4. samples each row with the request's own parameters and seeded generator, and reports what
   happened as `Event`s.

A request ends at ``max_tokens``, at the end-of-text token, at a stop string (the text is cut
before it), when the context is full, or when cancelled; its slot is freed at once.
Requests are independent: a request's tokens do not depend on what else is in the batch (up to
float rounding in the batched matrix products).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lightseek.adapters.lora import adapter_names, use_adapters
from lightseek.data.tokenizer import StreamDecoder, Tokenizer
from lightseek.errors import ConfigError, LightseekError
from lightseek.model.decode import DecodeStep
from lightseek.model.generate import sample_rows
from lightseek.model.kv_cache import SlotCache
from lightseek.model.sampling import SamplingParams
from lightseek.model.transformer import Transformer
from lightseek.serve.grammar import Constraint, Grammars, schema_of


class QueueFull(LightseekError):
    """The engine's waiting queue is full: try again later."""


@dataclass
class GenParams:
    """Per-request sampling (the OpenAI request fields the engine acts on)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # also return this many top alternatives per token (0 = chosen only)
    # score the prompt too: each prompt token's logprob after those before it, with this many
    # alternatives, computed while the prompt is prefilled (`Request.prompt_logprobs`)
    prompt_logprobs: int | None = None
    ignore_eos: bool = False     # keep going past the end-of-text token (benchmarks; as in vLLM)
    response_format: dict | None = None  # OpenAI's: text, json_object or json_schema (`serve.grammar`)
    # OpenAI's logit adjustments, applied before sampling (logprobs report the model's own):
    # a bias per token id in [-100, 100] (-100 bans it, +100 all but forces it), and penalties in
    # [-2, 2] for tokens the answer already has: presence once, frequency per occurrence
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0 or self.temperature > 2:
            raise ConfigError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty strings")
        bad = next(((t, b) for t, b in self.logit_bias.items()
                    if not isinstance(t, int) or not -100 <= b <= 100), None)
        if bad is not None:
            raise ConfigError(f"logit_bias: {bad[0]!r}: {bad[1]} is not a token id with a bias in [-100, 100]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ConfigError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 20:
                raise ConfigError(f"{name} must be in [0, 20], got {value}")
        if schema_of(self.response_format) is not None:
            if self.ignore_eos:
                raise ConfigError("ignore_eos cannot be combined with a structured response_format: a complete "
                                  "answer can only be followed by its end")
            if self.stop:
                raise ConfigError("stop strings cannot be combined with a structured response_format: they would "
                                  "cut the JSON (the grammar ends the answer when it is complete)")

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.logit_bias) or self.presence_penalty != 0 or self.frequency_penalty != 0

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=self.seed)


@dataclass
class Request:
    id: int
    prompt_ids: list[int]
    params: GenParams
    adapter: str | None = None
    slot: int | None = None
    prefilled: int = 0
    output_ids: list[int] = field(default_factory=list)  # the answer's tokens (not the end token)
    end_token: int | None = None  # the end token that finished it, if one did
    logprobs: list[dict] = field(default_factory=list)
    prompt_logprobs: list[dict] = field(default_factory=list)  # prompt tokens 1.. (with params.prompt_logprobs)
    text: str = ""
    emitted: int = 0  # characters of `text` already reported in events
    finish_reason: str | None = None  # "length" | "stop" | "cancelled"
    generator: torch.Generator | None = None
    meta: dict = field(default_factory=dict)  # the caller's own labels (API request id, model, user)
    decoder: StreamDecoder | None = None      # output text, token by token
    constraint: Constraint | None = None      # the response_format's grammar, if any
    _last_logits: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        """Tokens generated: the answer's and the end token that finished it, which was
        generated too (as OpenAI's and vLLM's usage count it); ``logprobs`` has one entry each."""
        return len(self.output_ids) + (self.end_token is not None)


@dataclass
class Event:
    """One request's progress in a step: new text (and ids), and the finish reason when done."""

    request: Request
    token_ids: list[int]
    text: str
    finished: bool


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_slots: int = 16, max_waiting: int = 64,
                 prefill_chunk: int = 64, max_len: int | None = None, prefix_cache: bool = True):
        if max_slots < 1 or max_waiting < 0 or prefill_chunk < 1:
            raise ConfigError("max_slots and prefill_chunk must be >= 1 and max_waiting >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.cache = SlotCache.for_model(model, max_slots, self.max_len)
        self.max_waiting, self.prefill_chunk = max_waiting, prefill_chunk
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}          # by request id, in admission order
        self.free_slots = list(range(max_slots))
        self._ids = itertools.count(1)
        self.device = next(model.parameters()).device
        self.end_ids = set(tokenizer.end_ids)
        self.grammars = Grammars(tokenizer, model.cfg.vocab_size)
        # prefix caching: the tokens whose keys and values each free slot still holds (and the
        # adapter they were computed with); a new prompt that starts the same way skips that part
        # what each free slot still holds: (adapter, tokens, and for a scored prompt its top-k
        # count and scores, which a prompt with the same start may take with the keys and values)
        self.slot_tokens: list[tuple[str | None, list[int], int | None, list[dict]]] = [(None, [], None, [])] * max_slots
        self.prefix_hit_tokens = 0
        self.prefix_cache = prefix_cache
        # models often pad their embedding past the tokenizer's last id (Qwen2: 151,936 rows for
        # 151,665 tokens); those rows are untrained and have no text, so they are never sampled
        self.vocab = min(tokenizer.vocab_size, model.cfg.vocab_size)

    # --- requests ------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: GenParams | None = None, adapter: str | None = None) -> Request:
        """Queue a request; raises ConfigError for bad input and QueueFull when it cannot wait."""
        req = self.make_request(prompt_ids, params, adapter)
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"{len(self.waiting)} requests are waiting already")
        self.waiting.append(req)
        return req

    def make_request(self, prompt_ids: Sequence[int], params: GenParams | None = None,
                     adapter: str | None = None) -> Request:
        """A checked request, not yet queued (`enqueue` queues it). Reads no mutable engine
        state, so another thread may call it while the engine steps."""
        params = params or GenParams()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ConfigError("the prompt is empty")
        if any(not 0 <= t < self.model.cfg.vocab_size for t in prompt):
            raise ConfigError(f"prompt token ids must be in [0, {self.model.cfg.vocab_size})")
        if len(prompt) >= self.max_len:
            raise ConfigError(f"the prompt has {len(prompt)} tokens; the context holds {self.max_len} "
                              f"(prompt plus at least one generated token)")
        if adapter is not None and adapter not in adapter_names(self.model):
            raise ConfigError(f"unknown adapter {adapter!r}")
        outside = next((t for t in params.logit_bias if not 0 <= t < self.vocab), None)
        if outside is not None:
            raise ConfigError(f"logit_bias: token id {outside} is not in the vocabulary (0-{self.vocab - 1})")
        if params.prompt_logprobs is not None and max(prompt) >= self.vocab:
            raise ConfigError(f"a scored prompt's token ids must be in [0, {self.vocab}) (the tokenizer's vocabulary)")
        req = Request(next(self._ids), prompt, params, adapter, decoder=StreamDecoder(self.tokenizer),
                      constraint=self.grammars.constraint(params.response_format))
        if params.seed is not None:
            req.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        return req

    def enqueue(self, req: Request) -> None:
        self.waiting.append(req)

    def cancel(self, req: Request) -> None:
        """Stop a request now and free its slot (a no-op for a finished one)."""
        if req.done:
            return
        req.finish_reason = "cancelled"
        if req in self.waiting:
            self.waiting.remove(req)
        self._release(req)

    def fail_running(self) -> list[Event]:
        """End every admitted request with finish reason "error" and free its slot (after a step
        raised: the engine stays usable for the requests still waiting)."""
        events = []
        for req in list(self.running.values()):
            req.finish_reason = "error"
            req._last_logits = None
            self._release(req)
            events.append(Event(req, [], "", True))
        return events

    def _release(self, req: Request) -> None:
        if req.id in self.running:
            del self.running[req.id]
        if req.slot is not None:
            if self.prefix_cache:
                held = (req.prompt_ids + req.output_ids)[:self.cache.lengths[req.slot]]
                self.slot_tokens[req.slot] = (req.adapter, held, req.params.prompt_logprobs, req.prompt_logprobs)
            self.cache.reset(req.slot)
            bisect.insort(self.free_slots, req.slot)
            req.slot = None

    # --- scheduling ----------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def stats(self) -> dict:
        used = sum(self.cache.lengths)
        return {"running": len(self.running), "waiting": len(self.waiting), "free_slots": len(self.free_slots),
                "prefix_hit_tokens": self.prefix_hit_tokens,
                "kv_tokens_used": used, "kv_tokens_total": self.cache.n_slots * self.max_len,
                "kv_usage": used / (self.cache.n_slots * self.max_len)}

    @torch.no_grad()
    def step(self) -> list[Event]:
        while self.waiting and self.free_slots:
            req = self.waiting.popleft()
            self._admit(req)
            self.running[req.id] = req
        events: list[Event] = []
        prefilling = next((r for r in self.running.values() if r.prefilled < len(r.prompt_ids)), None)
        decode = sorted((r for r in self.running.values() if r.prefilled == len(r.prompt_ids)), key=lambda r: r.slot)
        step = DecodeStep.of(self.model) if all(r.adapter is None for r in self.running.values()) else None
        if prefilling is not None and step is not None:  # the chunk rides along with the decode rows
            self._mixed(step, decode, prefilling)
        else:
            if prefilling is not None:
                self._prefill_chunk(prefilling)
            if decode:
                self._decode(decode, step)
        # a prompt whose prefill just finished is sampled from its last logits with the decode rows
        first = [prefilling] if prefilling is not None and prefilling._last_logits is not None else []
        todo = first + decode
        if todo:
            logits = torch.stack([r._last_logits for r in todo])
            if self.vocab < logits.shape[-1]:
                logits[:, self.vocab:] = float("-inf")
            allowed = logits
            if any(r.constraint is not None or r.params.adjusts_logits for r in todo):
                allowed = logits.clone()  # logprobs still report the model's own
                for r, row in zip(todo, allowed):
                    if r.params.adjusts_logits:
                        _adjust(row, r.params, r.output_ids)
                    if r.constraint is not None:
                        r.constraint.mask_(row)
            tokens = sample_rows(allowed, [r.params.sampling() for r in todo], [r.generator for r in todo])
            for r, tok, row in zip(todo, tokens, logits):
                if r.constraint is not None:  # a JSON answer closes within its budget (`serve.grammar`)
                    tok = r.constraint.within_budget(tok, self._budget(r))
                events.append(self._accept(r, tok, row))
        return events

    def _budget(self, req: Request) -> int:
        """Tokens ``req`` may still generate, the next one included: its max_tokens or the context."""
        made = len(req.output_ids)
        return min(req.params.max_tokens - made, self.max_len - len(req.prompt_ids) - made)

    def _admit(self, req: Request) -> None:
        """Give ``req`` a slot: the free slot whose kept tokens share the longest prefix with its
        prompt (same adapter, at least MIN_PREFIX tokens: that part is not computed again), else
        the lowest free one, so that running rows stay packed."""
        found = self._longest_cached(req, [(slot, *self.slot_tokens[slot]) for slot in self.free_slots])
        best, common, scores = found or (self.free_slots[0], 0, [])
        self.free_slots.remove(best)
        req.slot = best
        if common:
            self.cache.lengths[best] = common
            req.prefilled = common
            self.prefix_hit_tokens += common
            if req.params.prompt_logprobs is not None:
                req.prompt_logprobs = list(scores[:common])
        self.slot_tokens[best] = (None, [], None, [])

    def _longest_cached(self, req: Request, donors: list[tuple]) -> tuple[int, int, list[dict]] | None:
        """Of ``donors`` (slot, adapter, tokens held, and for a scored prompt its top-k count and
        scores), the one that can give ``req`` the most of its prompt beyond what it has, as
        (slot, tokens it will then have, the donor's scores); None when the prefix cache is off
        or none gives at least MIN_PREFIX more. The last prompt token is always left to run:
        its logits are needed."""
        best, have = None, req.prefilled
        for slot, *held in donors if self.prefix_cache else ():
            n = min(_reusable(req, *held), len(req.prompt_ids) - 1)
            if n - have >= MIN_PREFIX and (best is None or n > best[1]):
                best = (slot, n, held[3])
        return best

    def _share_prefix(self, req: Request) -> None:
        """Copy into ``req``'s slot the longest start of its prompt that a running request, or a
        free slot a finished one left, holds for the same adapter: requests that arrive together
        with one system prompt, or the choices of one request, compute it once. A scored prompt
        (``prompt_logprobs``) copies the scores of those positions too, from a request scored the
        same way, and runs the last shared position itself: its logits score the first token
        that differs (a harness's continuations of one context)."""
        donors = [(o.slot, o.adapter, o.prompt_ids[:o.prefilled], o.params.prompt_logprobs, o.prompt_logprobs)
                  for o in self.running.values() if o is not req and o.slot is not None]
        donors += [(slot, *self.slot_tokens[slot]) for slot in self.free_slots]  # finished, not yet reused
        found = self._longest_cached(req, donors)
        if found is None:
            return
        best, share, best_scores = found
        self.cache.copy_prefix(best, req.slot, req.prefilled, share)
        if req.params.prompt_logprobs is not None:
            req.prompt_logprobs += best_scores[len(req.prompt_logprobs):share]
        self.prefix_hit_tokens += share - req.prefilled
        req.prefilled = share

    def _chunk(self, req: Request) -> list[int]:
        """The next prompt tokens ``req`` computes (after taking what another slot holds of them)."""
        self._share_prefix(req)
        return req.prompt_ids[req.prefilled:req.prefilled + self.prefill_chunk]

    def _chunk_done(self, req: Request, chunk: list[int], logits: torch.Tensor) -> None:
        """``chunk`` computed: ``logits`` are its last token's (1, V) or, for a scored prompt,
        every token's (C, V); each position scores the prompt token after it (the last: none here)."""
        start = req.prefilled
        req.prefilled += len(chunk)
        top = req.params.prompt_logprobs
        if top is not None:
            following = req.prompt_ids[start + 1:start + 1 + len(chunk)]
            # over the tokenizer's vocabulary, as generated tokens' logprobs are (no padding rows)
            req.prompt_logprobs += _score(logits[:len(following), :self.vocab], following, top)
        if req.prefilled == len(req.prompt_ids):
            req._last_logits = logits[-1]

    def _prefill_chunk(self, req: Request) -> None:
        chunk = self._chunk(req)
        self.cache.bind([req.slot], len(chunk))
        ids = torch.tensor([chunk], device=self.device)
        with use_adapters(self.model, req.adapter):
            out = self.model(ids, cache=self.cache, last_only=req.params.prompt_logprobs is None)
        self._chunk_done(req, chunk, out.logits[0])

    def _mixed(self, step: DecodeStep, reqs: list[Request], req: Request) -> None:
        """The decode rows ``reqs`` and ``req``'s next prompt chunk in one pass of the decode step
        (`DecodeStep.run_batch`): a new request's prefill costs a few more rows of the batch's
        products instead of a pass over every weight of its own."""
        chunk = self._chunk(req)
        if reqs:
            self.cache.bind([r.slot for r in reqs], 1)
        ids = torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.long, device=self.device)
        rows, chunk_logits = step.run_batch(ids, self.cache, torch.tensor(chunk, device=self.device), req.slot,
                                            "last" if req.params.prompt_logprobs is None else "all")
        for r, row in zip(reqs, rows if rows is not None else ()):
            r._last_logits = row
        self._chunk_done(req, chunk, chunk_logits)

    def _decode(self, reqs: list[Request], step: DecodeStep | None) -> None:
        """One token for each of ``reqs``: through the decode step (fused products, no per-layer
        module calls) where it covers the model and no adapter is chosen, else the forward."""
        ids = torch.tensor([r.output_ids[-1] for r in reqs], device=self.device)
        if step is not None and len(reqs) == 1:  # one sequence: straight into its slot, no masks
            r = reqs[0]
            r._last_logits = step.run(ids, self.cache.k, self.cache.v, self.cache.lengths[r.slot], row=r.slot)[0]
            self.cache.lengths[r.slot] += 1
            return
        self.cache.bind([r.slot for r in reqs], 1)
        if step is not None:
            logits = step.run_rows(ids, self.cache)
        else:
            with use_adapters(self.model, [r.adapter for r in reqs]):
                logits = self.model(ids[:, None], cache=self.cache).logits[:, -1]
        for r, row in zip(reqs, logits):
            r._last_logits = row

    def _accept(self, req: Request, tok: int, logits: torch.Tensor) -> Event:
        req._last_logits = None
        refused = req.constraint is not None and not req.constraint.advance(tok)
        if req.params.logprobs is not None:
            logp = torch.log_softmax(logits.float(), -1)
            entry = {"token": tok, "logprob": float(logp[tok])}
            if req.params.logprobs:
                top = logp.topk(req.params.logprobs)
                entry["top"] = [(int(i), float(v)) for v, i in zip(top.values, top.indices)]
            req.logprobs.append(entry)
        new_ids: list[int] = []
        # a token the grammar refuses ends this request (not the engine), as the end token does
        if refused or (tok in self.end_ids and not req.params.ignore_eos):
            # an answer the budget closed early (`serve.grammar`) reports that, however it ends
            req.finish_reason = "length" if req.constraint is not None and req.constraint.cut else "stop"
            req.end_token = None if refused else tok
            req.text += req.decoder.flush()
        else:
            req.output_ids.append(tok)
            new_ids = [tok]
            req.text += req.decoder.push(tok)  # holds back an unfinished UTF-8 character
            cut = _first_stop(req.text, req.params.stop)
            if cut is not None:
                req.text = req.text[:cut]
                req.finish_reason = "stop"
            elif req.constraint is not None and req.constraint.stopped:  # the JSON is complete
                req.finish_reason = "length" if req.constraint.cut else "stop"  # "length": closed early to fit
                req.text += req.decoder.flush()
            elif self._budget(req) <= 0:  # max_tokens reached, or the context full
                req.finish_reason = "length"
                req.text += req.decoder.flush()
        if req.done:
            self._release(req)
            safe = len(req.text)
        else:  # hold back what could be the start of a stop string
            safe = _safe_prefix(req.text, req.params.stop)
        text = req.text[req.emitted:safe] if safe > req.emitted else ""
        req.emitted = max(req.emitted, safe)
        return Event(req, new_ids, text, req.done)

    def run(self, max_steps: int | None = None) -> None:
        """Step until every request is finished (or ``max_steps``)."""
        for _ in itertools.count() if max_steps is None else range(max_steps):
            if self.idle:
                return
            self.step()

    def generate(self, prompts: Sequence[Sequence[int]], params: GenParams | None = None,
                 adapters: Sequence[str | None] | None = None) -> list[Request]:
        """Submit several requests, run them together, return them finished."""
        reqs = [self.submit(p, params, adapters[i] if adapters else None) for i, p in enumerate(prompts)]
        while not all(r.done for r in reqs):
            self.step()
        return reqs


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops: list[str]) -> int:
    """Length of the prefix of ``text`` that cannot be part of a stop string still to come."""
    keep = len(text)
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = min(keep, len(text) - n)
                break
    return keep


MIN_PREFIX = 16  # tokens: shorter shared prefixes are not worth leaving the packed slot order for


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _reusable(req: Request, adapter: str | None, held: list[int], top: int | None, scores: list[dict]) -> int:
    """How many of ``req``'s prompt tokens a cache holding ``held`` (computed with ``adapter``; for
    a scored prompt with ``top`` alternatives and ``scores``) can give it. A scored request takes
    only positions whose scores it takes too, from a prompt scored the same way: entry i scores
    token i + 1, so both must be shared, and the last shared position runs again (its logits
    score the first token that differs)."""
    if adapter != req.adapter or held[:MIN_PREFIX] != req.prompt_ids[:MIN_PREFIX]:
        return 0
    n = _common_prefix(held, req.prompt_ids)
    if req.params.prompt_logprobs is None:
        return n
    return min(n - 1, len(scores)) if top == req.params.prompt_logprobs else 0


def _score(logits: torch.Tensor, targets: list[int], top: int) -> list[dict]:
    """Per row of ``logits`` (T, V): the log-probability of its target token and the ``top``
    likeliest tokens, as the engine's logprob entries."""
    logp = torch.log_softmax(logits.float(), -1)
    chosen = logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0].tolist()
    best = logp.topk(top, dim=-1)  # top 0: empty rows
    return [{"token": t, "logprob": lp, "top": list(zip(i, v))}
            for t, lp, i, v in zip(targets, chosen, best.indices.tolist(), best.values.tolist())]


def _adjust(row: torch.Tensor, params: GenParams, output_ids: list[int]) -> None:
    """OpenAI's logit bias and presence and frequency penalties, in place on one row of logits."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=row.device)
        row[ids] += torch.tensor(list(params.logit_bias.values()), dtype=row.dtype, device=row.device)
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(output_ids, device=row.device), minlength=row.shape[-1])[:row.shape[-1]]
        row -= (params.presence_penalty * (counts > 0) + params.frequency_penalty * counts).to(row.dtype)
