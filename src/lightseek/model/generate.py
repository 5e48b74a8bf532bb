"""Autoregressive generation with the KV cache: greedy or sampled (temperature, top-k, top-p),
stop tokens and stop strings, a seed, and streaming of text as it is produced."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from lightseek.model.decode import DecodeStep
from lightseek.model.kv_cache import KVCache
from lightseek.model.sampling import SamplingParams
from lightseek.model.transformer import Transformer


def filtered_logits(logits_BV: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """fp32 logits of each row after its own temperature, top-k and top-p (tokens filtered out
    are -inf); rows at temperature 0 are left at temperature 1 (they are taken greedily)."""
    V = logits_BV.shape[-1]
    device = logits_BV.device
    temp = torch.tensor([p.temperature or 1.0 for p in params], device=device)[:, None]
    logits = logits_BV.float() / temp
    ks = [p.top_k for p in params]
    if any(ks):
        kmax = min(max(ks), V)
        top = logits.topk(kmax, dim=-1).values                                    # (B, kmax)
        kth = top.gather(1, torch.tensor([[min(k, kmax) - 1 if k else kmax - 1] for k in ks], device=device))
        kth = torch.where(torch.tensor([[k > 0] for k in ks], device=device), kth,
                          torch.full_like(kth, float("-inf")))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
    if bool((top_p < 1.0).any()):  # keep the smallest set of tokens reaching top_p
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs_sorted = sorted_logits.softmax(-1)
        drop = (probs_sorted.cumsum(-1) - probs_sorted >= top_p) & (top_p < 1.0)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_next(logits_BV: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token of each row: argmax at temperature 0, else filtered sampling."""
    if p.temperature == 0:
        return logits_BV.argmax(-1)
    probs = filtered_logits(logits_BV, [p] * logits_BV.shape[0]).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_rows(logits_BV: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> list[int]:
    """`sample_next` for rows with their own parameters and generators, filtering all rows in
    one batched pass and drawing each row with one uniform number from its own generator, so a
    row's draw does not depend on the others."""
    greedy = [p.temperature == 0 for p in params]
    picks = logits_BV.argmax(-1).tolist() if any(greedy) else [0] * len(params)
    rows = [i for i, g in enumerate(greedy) if not g]
    if rows:
        sub = logits_BV if len(rows) == len(params) else logits_BV[rows]
        probs = filtered_logits(sub, [params[i] for i in rows]).softmax(-1)
        u = torch.rand(len(rows), device=logits_BV.device)  # rows without a seed share one draw call
        for j, i in enumerate(rows):
            if generators[i] is not None:
                u[j] = torch.rand((), generator=generators[i], device=logits_BV.device)
        for i, tok in zip(rows, inverse_cdf(probs, u).tolist()):
            picks[i] = tok
    return picks


def inverse_cdf(probs_BV: torch.Tensor, u_B: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Token ``j`` of each row with ``cdf[j - 1] <= u * total < cdf[j]``, found in two levels:
    first the block of ``block`` tokens, then the token inside it. A full-vocabulary cumulative
    sum is a sequential pass over every row (about 0.13 ms for 16 x 8k here); block sums plus one
    block's cumulative sum cost a tenth of that. Tokens of zero probability are never drawn."""
    B, V = probs_BV.shape
    n_blocks = -(-V // block)
    if V % block:
        probs_BV = F.pad(probs_BV, (0, n_blocks * block - V))
    blocks = probs_BV.view(B, n_blocks, block)
    mass_BN = blocks.sum(-1)
    cdf_BN = mass_BN.cumsum(-1)
    target = (u_B * cdf_BN[:, -1])[:, None]                                       # (B, 1)
    b = torch.searchsorted(cdf_BN, target, right=True).clamp_max(n_blocks - 1)    # (B, 1)
    rest = target - (cdf_BN.gather(1, b) - mass_BN.gather(1, b))
    cdf_in = blocks[torch.arange(B, device=probs_BV.device), b[:, 0]].cumsum(-1)  # (B, block)
    # rounding may put ``rest`` at or past the block's total: keep it inside the block's mass
    rest = torch.minimum(rest.clamp_min(0), cdf_in[:, -1:] * (1 - 2 ** -20))
    j = torch.searchsorted(cdf_in, rest, right=True).clamp_max(block - 1)
    return (b * block + j)[:, 0]


@torch.inference_mode()
def generate_ids(model: Transformer, prompt_ids: Sequence[int], p: SamplingParams,
                 stop_ids: Sequence[int] = (), use_cache: bool = True, vocab: int | None = None,
                 fast: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time; stops at a stop id (not yielded), ``max_new_tokens``,
    or the model's context length. ``use_cache=False`` recomputes the whole prefix each step.
    ``vocab``: the tokenizer's size, when the model's embedding is padded past it (those rows
    are never sampled). Tokens after the prompt go through the one-sequence decode step
    (`model.decode`) where it covers the model; ``fast=False`` uses the model's forward."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    cfg = model.cfg
    device = next(model.parameters()).device
    if len(prompt_ids) >= cfg.max_seq_len:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in the context of {cfg.max_seq_len}")
    model.eval()
    generator = None
    if p.seed is not None:
        generator = torch.Generator(device=device).manual_seed(p.seed)
    budget = min(p.max_new_tokens, cfg.max_seq_len - len(prompt_ids))
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)     # (1, T)
    # the cache holds what this call can reach, not the model's whole context (8k for a real model)
    cache = KVCache.for_model(model, batch_size=1, max_len=len(prompt_ids) + budget) if use_cache else None
    step = DecodeStep.of(model) if use_cache and fast else None  # None: the model's own forward
    if step is not None:
        logits = step.prefill(ids[0], cache)
    else:
        logits = model(ids, cache=cache, last_only=True).logits[:, -1]
    for i in range(budget):
        if vocab is not None and vocab < logits.shape[-1]:
            logits[:, vocab:] = float("-inf")
        next_id = sample_next(logits, p, generator)                             # (1,)
        tok = int(next_id.item())
        if tok in stop_ids:
            return
        yield tok
        if i == budget - 1:
            return
        if step is not None:
            logits = step(next_id, cache)
        elif cache is not None:
            logits = model(next_id[:, None], cache=cache, last_only=True).logits[:, -1]
        else:
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            logits = model(ids, last_only=True).logits[:, -1]


def generate_text(model: Transformer, tokenizer, prompt: str | Sequence[int], p: SamplingParams,
                  on_text: Callable[[str], None] | None = None) -> str:
    """Generate from a text prompt (or its token ids, e.g. a rendered chat); stream decoded text
    to ``on_text`` as it completes. Text that could still become a stop string is held back until
    it can't; the stop string itself is never emitted."""
    from lightseek.data.tokenizer import StreamDecoder

    decoder = StreamDecoder(tokenizer)
    emitted, pending = [], ""
    hold = max((len(s) for s in p.stop), default=1) - 1  # chars that may start a stop string

    def emit(text: str) -> None:
        if text:
            emitted.append(text)
            if on_text:
                on_text(text)

    prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    for tok in generate_ids(model, prompt_ids, p, stop_ids=tokenizer.end_ids, vocab=tokenizer.vocab_size):
        pending += decoder.push(tok)
        cut = min((pending.find(s) for s in p.stop if s in pending), default=-1)
        if cut >= 0:
            emit(pending[:cut])
            return "".join(emitted)
        if hold and len(pending) > hold:
            emit(pending[:-hold])
            pending = pending[-hold:]
        elif not hold:
            emit(pending)
            pending = ""
    pending += decoder.flush()
    cut = min((pending.find(s) for s in p.stop if s in pending), default=-1)
    emit(pending[:cut] if cut >= 0 else pending)
    return "".join(emitted)
