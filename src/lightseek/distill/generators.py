"""Text generators behind one interface for the DataDistiller: a local lightseek model (batched
through the serving engine) or any OpenAI-compatible endpoint.

``generate(prompts, seeds)`` answers each prompt as the user turn of a chat, with its own seed.
A local model samples each request from its own seeded generator, independent of what else is
in the batch, so the same seed gives the same text however the work is split.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from lightseek.config import field
from lightseek.errors import ConfigError, DataError


@dataclass
class GenerationConfig:
    max_tokens: int = field(128, help="Tokens generated per answer at most.")
    temperature: float = field(0.7, help="Sampling temperature (0 = greedy).")
    top_p: float = field(0.9, help="Nucleus sampling mass.")
    batch: int = field(16, help="Sequences a local model decodes together.")
    timeout_s: float = field(120.0, help="Seconds to wait for an endpoint's answer.")

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.batch < 1:
            raise ConfigError("generate.max_tokens and generate.batch must be >= 1")
        if not 0 <= self.temperature <= 2 or not 0 < self.top_p <= 1:
            raise ConfigError("generate.temperature must be in [0, 2] and generate.top_p in (0, 1]")


class LocalGenerator:
    """A lightseek checkpoint (adapter folded in) answering through the serving engine."""

    def __init__(self, spec: str, gc: GenerationConfig):
        from lightseek.distill.models import load_local

        self.local = load_local(spec)
        self.gc = gc
        self.version = {"kind": "local", "spec": spec, **self.local.version}

    def generate(self, prompts: list[str], seeds: list[int]) -> list[dict]:
        from lightseek.data.chat import encode_chat
        from lightseek.serve.engine import Engine, GenParams

        model, tok, gc = self.local.model, self.local.tokenizer, self.gc
        engine = Engine(model, tok, max_slots=min(gc.batch, max(1, len(prompts))), max_waiting=len(prompts))
        reqs, truncated = [], []
        for prompt, seed in zip(prompts, seeds):
            ids = encode_chat(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)[0]
            room = engine.max_len - gc.max_tokens
            if room < 8:
                raise ConfigError(f"generate.max_tokens={gc.max_tokens} leaves no room for a prompt in the "
                                  f"context of {engine.max_len} tokens")
            # keep the prompt's head and the generation prompt at its end
            truncated.append(len(ids) > room)
            if len(ids) > room:
                ids = ids[:room - 2] + ids[-2:]
            reqs.append(engine.submit(ids, GenParams(max_tokens=gc.max_tokens, temperature=gc.temperature,
                                                     top_p=gc.top_p, seed=seed)))
        engine.run()
        return [{"text": r.text.strip(), "finish_reason": r.finish_reason, "prompt_truncated": t,
                 "completion_tokens": len(r.output_ids)} for r, t in zip(reqs, truncated)]


class EndpointGenerator:
    """Any OpenAI-compatible server: ``http(s)://HOST[:PORT][/v1]#MODEL``."""

    def __init__(self, spec: str, gc: GenerationConfig):
        url, _, model = spec.partition("#")
        if not model:
            raise ConfigError(f"endpoint {spec!r}: name the model after '#', e.g. http://127.0.0.1:8000/v1#base")
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1") + "/chat/completions"
        self.model, self.gc = model, gc
        self.version = {"kind": "endpoint", "spec": spec, "url": self.url, "model": model}

    def generate(self, prompts: list[str], seeds: list[int]) -> list[dict]:
        return [self._one(p, s) for p, s in zip(prompts, seeds)]

    def _one(self, prompt: str, seed: int) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.gc.max_tokens, "temperature": self.gc.temperature, "top_p": self.gc.top_p,
                "seed": seed}
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.gc.timeout_s) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise DataError(f"endpoint {self.url} answered {e.code}: {e.read()[:300].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise DataError(f"endpoint {self.url} cannot be reached: {e}") from None
        except json.JSONDecodeError:
            raise DataError(f"endpoint {self.url} did not answer with JSON") from None
        try:
            choice = answer["choices"][0]
            return {"text": (choice["message"]["content"] or "").strip(), "finish_reason": choice.get("finish_reason"),
                    "prompt_truncated": False,
                    "completion_tokens": answer.get("usage", {}).get("completion_tokens")}
        except (KeyError, IndexError, TypeError):
            raise DataError(f"endpoint {self.url}: not an OpenAI chat completion: {str(answer)[:200]}") from None


def answer_logprob(local, prompt: str, answer: str) -> float:
    """Mean log-probability per token that ``local`` (a loaded checkpoint) gives ``answer`` as
    its reply to ``prompt`` in its chat template: the answer's tokens and the end of its turn."""
    import torch

    from lightseek.data.chat import encode_chat

    model, tok = local.model, local.tokenizer
    ids, learn = encode_chat(tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
    if len(ids) > model.cfg.max_seq_len:  # keep the answer whole, cut the prompt's head
        cut = len(ids) - model.cfg.max_seq_len
        ids, learn = ids[cut:], learn[cut:]
    targets = [t if m else -100 for t, m in zip(ids[1:], learn[1:])] + [-100]  # what the answer's turn says
    with torch.no_grad():  # the model's own loss on those tokens (NaN when there are none)
        return -float(model.eval()(torch.tensor([ids]), targets_BT=torch.tensor([targets])).loss)


def make_generator(spec: str, gc: GenerationConfig):
    from lightseek.distill.models import is_endpoint

    return EndpointGenerator(spec, gc) if is_endpoint(spec) else LocalGenerator(spec, gc)
