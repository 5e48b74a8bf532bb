"""Structured outputs: an OpenAI ``response_format`` as a token mask at every decode step.

``{"type": "json_object"}`` (any JSON object) and ``{"type": "json_schema", "json_schema":
{"schema": {...}}}`` are compiled by llguidance (chosen by measurement against xgrammar and
outlines-core: `bench/grammar_libs.py`; a schema compiles in about a millisecond, a mask takes
tens of microseconds, and it needs nothing but the tokenizer). The JSON is written compactly,
with ``": "`` and ``", "`` as separators and no other whitespace: free whitespace lets a small
model pad an answer with blank lines until it runs out of tokens.

`Grammars` belongs to one engine and builds llguidance's view of the vocabulary once (about a
quarter of a second for a 49k vocabulary; a server does it while loading). `Constraint` follows
one request: `mask_` removes the tokens the grammar forbids from a row of logits before
sampling, `advance` moves the matcher past the sampled token, and `stopped` says the answer is
complete, which ends the request (`serve.engine`).

A JSON answer also ends within its token budget. Near the end of ``max_tokens`` (or of the
context), `within_budget` finds a short way to close the answer from where it stands (forced
tokens where the grammar leaves one choice; otherwise the first allowed of the closing tokens
``"`` ``}`` ``]`` ..., or a shortest value such as ``0`` or ``false``) and, once that way needs
every token left, makes the answer take it. A model that loops inside a string (a small one
does: digits one per token, emoji) then gets a complete, valid answer with its strings cut short,
not an unterminated one, and the request reports ``finish_reason`` "length" as any answer the
budget shortened. Without the budget in sight, nothing changes: the model's tokens are kept.
"""

from __future__ import annotations

import json
import threading

import torch

from lightseek.errors import ConfigError

JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
# What `Constraint.closing` tries, in this order, where the grammar leaves a choice: the end of a
# string (with what follows it, where one token holds both), then the ends of arrays and objects,
# then a separator (an object with a required key to come, an array short of minItems: after a
# number, a digit would lengthen it for ever), then the shortest values of each JSON type.
# Inside a string every one of them is a character, so the quote comes before the brackets.
CLOSING = ('"}]}', '"}]', '"}}', '"}', '"]}', '"]', '"', '}]}', '}]', '}}', ']}', '}', ']', ',',
           '0', 'false', 'null', '{}', '[]', '{', '[', 'a')


def schema_of(response_format: dict | None) -> dict | None:
    """The JSON schema a ``response_format`` asks for, None for plain text; a ConfigError naming
    the field that is wrong."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ConfigError("response_format must be an object such as {\"type\": \"json_object\"}")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ConfigError("response_format.json_schema.schema: give the JSON schema (an object) the answer "
                              "must follow")
        return spec["schema"]
    raise ConfigError(f"response_format type {kind!r}: use 'text', 'json_object' or 'json_schema'")


class Grammars:
    """Compiles response formats for one tokenizer (thread-safe; the vocabulary once)."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._llg_tokenizer = None
        self._closing: list[int] = []
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Build the vocabulary view now (a server does it while loading, not on a request)."""
        self._vocabulary()

    def _vocabulary(self):
        try:
            import llguidance
        except ImportError:
            raise ConfigError("structured outputs (response_format) need llguidance: pip install "
                              "'lightseek[serve]'") from None
        with self._lock:
            if self._llg_tokenizer is None:
                vocab = llguidance.LLTokenizer(self.tokenizer.to_json_str(), n_vocab=self.vocab_size,
                                               eos_token=list(self.tokenizer.end_ids))
                # each closing string the vocabulary has as one token, in CLOSING's order
                singles = [vocab.tokenize_str(text) for text in CLOSING]
                self._closing = list(dict.fromkeys(ids[0] for ids in singles if len(ids) == 1))
                self._llg_tokenizer = vocab
        return llguidance, self._llg_tokenizer

    def constraint(self, response_format: dict | None) -> Constraint | None:
        """A fresh `Constraint` for one request, None for plain text; a ConfigError for a schema
        the grammar compiler refuses (its message says what)."""
        schema = schema_of(response_format)
        if schema is None:
            return None
        llguidance, vocab = self._vocabulary()
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(f"response_format: the JSON schema cannot be used: {e}") from None
        matcher = llguidance.LLMatcher(vocab, grammar, log_level=0)
        if matcher.is_error():
            raise ConfigError(f"response_format: the JSON schema cannot be used: {matcher.get_error()}")
        return Constraint(matcher, self.vocab_size, self._closing)


class Constraint:
    """One request's grammar state."""

    def __init__(self, matcher, vocab_size: int, closing_ids: list[int] = ()) -> None:
        import llguidance.numpy as llg_numpy

        self.matcher, self.vocab_size, self._fill = matcher, vocab_size, llg_numpy.fill_next_token_bitmask
        self._mask = llg_numpy.allocate_token_bitmask(1, vocab_size)  # int32 words, bit i of word w: token 32w+i
        self._closing_ids = list(closing_ids)
        self.cut = False  # the budget replaced a token of the model's by one that closes the answer
        # tokens needed to close from where the answer stands, as last found (None: more than
        # HORIZON_CAP from the start, a schema too large to close early, which is then not tried)
        shortest = self.closing(self.HORIZON_CAP)
        self._need = None if shortest is None else len(shortest)
        self._steps = 0

    HORIZON = 32       # look for a way to close once the budget is within this of what closing needs
    REFRESH = 16       # and, further from the end, every this many tokens (nesting deepens what it needs)
    HORIZON_CAP = 512  # the longest way to close looked for

    def mask_(self, logits_V: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar forbids next to -inf, in place."""
        import numpy as np

        forbidden = self._allowed(self.matcher, self._mask) == 0
        if logits_V.device.type == "cpu":  # in numpy: one pass, no thread pool woken for 49k elements
            logits_V.numpy()[forbidden] = -np.inf
        else:
            logits_V.masked_fill_(torch.from_numpy(forbidden).to(logits_V.device), float("-inf"))

    def _allowed(self, matcher, mask):
        """One byte per token of the vocabulary, 1 where ``matcher`` allows it next (``mask``:
        the bitmask buffer to fill)."""
        import numpy as np

        self._fill(matcher, mask, 0)
        return np.unpackbits(mask.view(np.uint8), bitorder="little")[:self.vocab_size]

    def advance(self, token: int) -> bool:
        """Move past ``token``; False when the grammar refuses it (the mask allowed nothing the
        grammar can continue with, for example past a parser limit): the request must end."""
        return self.matcher.consume_token(token)

    def closing(self, limit: int, after: int | None = None) -> list[int] | None:
        """Tokens that complete the answer from here, or from after token ``after``, at most
        ``limit`` of them (found on a copy of the matcher); None when these choices do not
        complete it within ``limit`` (or the grammar refuses ``after``)."""
        import numpy as np

        m, path = self.matcher.deep_copy(), []
        if after is not None and not m.consume_token(after):
            return None
        mask = np.zeros_like(self._mask)
        while not (m.is_stopped() or m.is_accepting()):
            if len(path) >= limit or m.is_error():
                return None
            step = m.compute_ff_tokens()[:1]  # the one token the grammar allows, if so
            if not step:
                bits = self._allowed(m, mask)
                step = [next((t for t in self._closing_ids if bits[t]), None)]
                if step[0] is None:  # no closing token fits here (inside an enum's word): the first allowed one
                    allowed = np.flatnonzero(bits)
                    if not allowed.size:
                        return None
                    step = [int(allowed[0])]
            if not m.consume_token(step[0]):
                return None
            path += step
        return path

    def within_budget(self, token: int, budget: int) -> int:
        """The token to take next, ``budget`` tokens (this one included) being left: ``token``
        (the model's choice under the mask) if the answer can still be closed after it, else
        the first token of a way to close it from here, and `cut` is set. Searches only near
        the end of the budget (and every REFRESH tokens, to follow what closing needs)."""
        if self._need is None:
            return token
        self._steps += 1
        near = budget <= self._need + self.HORIZON
        if not near and self._steps % self.REFRESH:
            return token
        after = self.closing(min(budget - 1, self.HORIZON_CAP), after=token)
        if after is not None:
            self._need = len(after)
            return token
        if not near:  # further than HORIZON_CAP from closing: look again near the end of the budget
            self._need = self.HORIZON_CAP
            return token
        path = self.closing(budget)
        if path is None:  # too late to close either way: the model's token, and the answer is cut at the end
            return token
        self.cut = True
        self._need = len(path) - 1
        return path[0]

    @property
    def stopped(self) -> bool:
        """The answer is complete: nothing but its end may follow."""
        return self.matcher.is_stopped()
