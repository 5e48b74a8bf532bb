"""The transformer: causality, KV cache against full recompute, save/load, FLOP counts."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lightseek.model.checkpoint import load_model, save_checkpoint
from lightseek.model.config import preset
from lightseek.model.generate import generate_ids
from lightseek.model.kv_cache import KVCache
from lightseek.model.sampling import SamplingParams
from lightseek.model.transformer import Transformer, dense_equivalent

MODES = ["dense", "topk", "dynamic"]


def _model(mode: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(preset("debug", router_mode=mode))
    with torch.no_grad():  # a trained-looking router: sharp, varied expert choices
        for m in model.moe_layers():
            m.router.weight.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("mode", MODES)
def test_causality(mode):
    model = _model(mode)
    idx = torch.randint(0, 512, (2, 40))
    changed = idx.clone()
    t = 25
    changed[:, t] = (changed[:, t] + 7) % 512
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    # Not bit-exact: an expert's GEMM over a different set of tokens may round differently.
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().amax(-1).min() > 1e-4  # every later position sees it


@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_chunks_equal_full_forward(mode):
    model = _model(mode)
    idx = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        full = model(idx).logits
        cache = KVCache.for_model(model, batch_size=2)
        parts = [model(idx[:, :13], cache=cache).logits, model(idx[:, 13:14], cache=cache).logits,
                 model(idx[:, 14:], cache=cache).logits]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_greedy_generation_with_cache_equals_recompute(mode):
    model = _model(mode, seed=1)
    prompt = torch.randint(0, 512, (12,)).tolist()
    p = SamplingParams(max_new_tokens=40, temperature=0.0)
    with_cache = list(generate_ids(model, prompt, p, use_cache=True))
    without = list(generate_ids(model, prompt, p, use_cache=False))
    assert len(with_cache) == 40
    assert with_cache == without


def test_sampling_with_seed_is_reproducible_and_respects_top_k():
    model = _model("dynamic")
    prompt = [5, 6, 7]
    p = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=5, top_p=1.0, seed=123)
    a, b = list(generate_ids(model, prompt, p)), list(generate_ids(model, prompt, p))
    assert a == b
    c = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=20, temperature=1.0, seed=7)))
    assert c != a


def test_generation_stops_at_context_end():
    model = _model("topk")
    prompt = list(range(1, model.cfg.max_seq_len - 4))  # leaves room for 5 tokens
    out = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=50, temperature=0)))
    assert len(out) == 5


@pytest.mark.parametrize("mode", MODES)
def test_save_load_identical_logits(mode, tmp_path):
    model = _model(mode)
    with torch.no_grad():
        for m in model.moe_layers():  # routing state is part of the model
            m.router.bias_E.uniform_(-0.3, 0.3)
            m.router.threshold.fill_(0.7)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_model(tmp_path / "ckpt")
    idx = torch.randint(0, 512, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx).logits, model(idx).logits, atol=0, rtol=0)
    assert loaded.head.weight is loaded.embed.weight


def test_flops_and_params_counts():
    cfg = preset("tiny")
    moe = Transformer(cfg)
    dense = Transformer(dense_equivalent(cfg))
    pm, pd = moe.num_params(), dense.num_params()
    assert pm["total"] > 2 * pm["active"]
    assert abs(pm["active"] - pd["active"]) / pd["active"] < 0.01
    f = moe.flops_per_token(seq_len=256)
    assert f["total"] > f["active"] > 2 * pm["active"] - 2 * pm["embedding"]
    # one more routed expert per token costs exactly one expert's FLOPs in each MoE layer
    delta = moe.flops_per_token(256, k=3.5)["active"] - f["active"]
    assert delta == cfg.n_moe_layers * 2 * 3 * cfg.dim * cfg.moe_inter_dim


def test_slot_cache_sized_from_a_memory_budget():
    """A KV-cache budget gives as many slots as fit, counted against the cache's real size; a
    budget that holds no sequence is an error that names what one needs."""
    from lightseek.errors import ConfigError
    from lightseek.model.kv_cache import SlotCache

    model = _model("dynamic")
    one = SlotCache.for_model(model, 1, 48).bytes()
    assert SlotCache.bytes_per_token(model) * 48 == one
    assert SlotCache.slots_within(model, 5.9 * one, 48) == 5
    assert SlotCache.for_model(model, 5, 48).bytes() <= 5.9 * one
    assert SlotCache.slots_within(model, 5.9 * one, 24) == 11  # half the context, twice the sequences
    with pytest.raises(ConfigError, match="holds no sequence of 48 tokens: one needs"):
        SlotCache.slots_within(model, 0.5 * one, 48)


@pytest.mark.parametrize("slots", [[2, 3, 4], [4, 0, 2]], ids=["consecutive", "scattered"])
def test_slot_cache_rows_equal_separate_runs(slots):
    """Rows of a SlotCache at different lengths decode exactly as each sequence does alone with
    its own KVCache, whether the bound slots are consecutive (read through a view of the cache)
    or scattered (read through a gathered copy)."""
    from lightseek.model.kv_cache import SlotCache

    model = _model("dynamic")
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 512, (1, n), generator=g) for n in (5, 11, 2)]
    nxt = torch.randint(0, 512, (3, 1), generator=g)
    cache = SlotCache.for_model(model, 6, 32)
    with torch.no_grad():
        for s, p in zip(slots, prompts):
            cache.bind([s], p.shape[1])
            model(p, cache=cache)
        cache.bind(slots, 1)
        batched = model(nxt, cache=cache).logits[:, -1]
        for i, p in enumerate(prompts):
            alone = KVCache.for_model(model, 1, 32)
            model(p, cache=alone)
            ref = model(nxt[i:i + 1], cache=alone).logits[0, -1]
            torch.testing.assert_close(batched[i], ref, atol=1e-5, rtol=1e-5)
    assert [cache.lengths[s] for s in slots] == [6, 12, 3]


@pytest.mark.parametrize("router_mode", ["dense", "dynamic"])
def test_gradient_checkpointing_changes_memory_not_results(router_mode):
    """With grad_checkpoint each block runs again in backward: the loss, every gradient and the
    routers' statistics (each token counted once) are those of the plain forward."""
    cfg = preset("debug", router_mode=router_mode)
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    x = torch.randint(0, cfg.vocab_size, (2, 24))
    results = []
    for remat in (False, True):
        model.zero_grad()
        model.reset_routing_stats()
        model.grad_checkpoint = remat
        out = model(x, targets_BT=x)
        loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0)
        loss.backward()
        stats = [(m.router.load_E.clone(), m.router.stat_sums.clone()) for m in model.moe_layers()]
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, stats))
    (loss0, grads0, stats0), (loss1, grads1, stats1) = results
    torch.testing.assert_close(loss1, loss0)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert bool(stats1) == (router_mode == "dynamic")
    for (load0, sums0), (load1, sums1) in zip(stats0, stats1):
        assert torch.equal(load1, load0) and torch.equal(sums1, sums0)
        assert sums0[0] == x.numel()  # every token counted once, not twice


def test_gradient_checkpointing_on_the_first_forward_and_a_second_backward():
    """The dispatch probe may run first inside a checkpointed block (a fresh process's first
    training step), and a retained graph may be recomputed twice: both work."""
    from lightseek.kernels.dispatch import grouped_mm_works

    cfg = preset("debug", router_mode="dynamic")
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    model.grad_checkpoint = True
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    grouped_mm_works.cache_clear()  # as in a fresh process: the probe runs inside the first block
    out = model(x, targets_BT=x)
    out.loss.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    out.loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[n], atol=1e-6, rtol=1e-5, msg=n)
    assert model.moe_layers()[0].router.stat_sums[0] == x.numel()  # counted once, recomputed twice


def test_products_in_slices_are_the_same_product(monkeypatch) -> None:
    """`Linear` and the vocabulary head (a large weight, a few rows, no gradient) give F.linear's
    values, bias included, in the input's shape, without calling it; with gradients, many rows
    or a small weight, they are F.linear itself, and gradients flow."""
    import torch.nn.functional as F

    from lightseek.kernels import linear as kl
    from lightseek.model.transformer import VocabHead

    plain, calls = F.linear, []

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return plain(x, *args, **kwargs)

    monkeypatch.setattr(F, "linear", counting)
    torch.manual_seed(0)
    head = VocabHead(32, 8 * 2048, bias=False)
    proj = kl.Linear(256, 512, bias=True)  # 131,072 weights: above MIN_WEIGHT
    for layer in (head, proj):
        for shape in [(1, layer.in_features), (1, 1, layer.in_features), (3, 5, layer.in_features),
                      (2, 16, layer.in_features)]:
            x = torch.randn(shape)
            with torch.inference_mode():
                y = layer(x)
            assert y.shape == (*shape[:-1], layer.out_features)
            assert torch.allclose(y, plain(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    assert calls == []  # each went through the slices
    x = torch.randn(4, 32, requires_grad=True)
    head(x).sum().backward()  # training: the plain product, with its backward
    assert calls == [(4, 32)] and x.grad is not None and head.weight.grad is not None
    calls.clear()
    with torch.inference_mode():
        head(torch.randn(kl.MAX_ROWS + 1, 32))  # many rows (a prefill's logits): whole
        VocabHead(32, 1000, bias=False)(torch.randn(2, 32))  # a small weight: nothing to gain
        kl.Linear(512, 390)(torch.randn(2, 512))  # 390 output features do not split in 4
    assert calls == [(kl.MAX_ROWS + 1, 32), (2, 32), (2, 512)]


def test_a_model_in_slices_computes_what_it_computes_whole() -> None:
    """A model whose projections are large enough to be sliced gives the same logits with the
    slices as with F.linear everywhere (prefill, then a cached decode step)."""
    from lightseek.kernels.linear import Linear
    from lightseek.model.kv_cache import KVCache
    from lightseek.model.transformer import VocabHead

    torch.manual_seed(0)
    # sliced: the dense layer's and the shared expert's 384 x 512 weights, the query and output
    # projections (384 x 384) and the head; not: keys and values (384 x 192), routed experts
    model = Transformer(preset("debug", dim=384, dense_inter_dim=512, shared_inter_dim=512)).eval()
    assert isinstance(model.layers[0].attn.wq, Linear) and isinstance(model.layers[1].ffn.shared.w1, Linear)
    idx = torch.randint(0, 512, (2, 9))
    outs = []
    for slices in (Linear.SLICES, 1):
        with torch.inference_mode(), _slices(Linear, slices), _slices(VocabHead, slices):
            cache = KVCache.for_model(model, 2, 16)
            first = model(idx[:, :8], cache=cache).logits
            outs.append((first, model(idx[:, 8:], cache=cache).logits))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_the_decode_step_follows_the_slices_switch(monkeypatch) -> None:
    """The one-sequence decode step (built once, cached on the model) reads `Linear.SLICES` at
    each call for its fused query-key-value product, as the layers do."""
    from lightseek.kernels.linear import Linear
    from lightseek.model import decode

    torch.manual_seed(0)
    model = Transformer(preset("debug", dim=384, dense_inter_dim=512, shared_inter_dim=512)).eval()
    product, asked = decode.sliced_linear, []
    monkeypatch.setattr(decode, "sliced_linear", lambda x, w, b, slices: asked.append(slices) or product(x, w, b, slices))
    steps = []
    with torch.inference_mode():
        for slices in (1, Linear.SLICES, 1):
            with _slices(Linear, slices):
                steps.append(decode.DecodeStep.of(model))
                steps[-1](torch.tensor([3]), KVCache.for_model(model, 1, 8))
    n = model.cfg.n_layers
    assert steps[0] is steps[1] is steps[2] and asked == [1] * n + [Linear.SLICES] * n + [1] * n


@contextlib.contextmanager
def _slices(cls, n: int):
    before = cls.SLICES
    cls.SLICES = n
    try:
        yield
    finally:
        cls.SLICES = before


@pytest.mark.parametrize("remat", [False, True])
def test_the_loss_alone_equals_the_loss_of_the_logits(remat, monkeypatch):
    """``keep_logits=False``: the loss made chunk by chunk (recomputed in backward) has the value
    and gradients of the cross-entropy over the whole logits, ignored targets and padding
    included, and keeps no logits for backward; a batch with nothing to learn gives 0 and zero
    gradients instead of NaN."""
    from lightseek.model import transformer

    monkeypatch.setattr(transformer, "LOSS_CHUNK", 16)
    cfg = preset("debug", router_mode="dynamic", logits_scale=0.5)
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    model.grad_checkpoint = remat
    x = torch.randint(0, cfg.vocab_size, (3, 40))
    y = x.roll(-1, 1)
    y[0, :25] = -100  # a prompt not learned; chunks of 16 tokens: the first one scores nothing
    y[2, 30:] = -100
    results = []
    for keep in (True, False):
        model.zero_grad()
        saved: list[int] = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x, y, keep_logits=keep)
        assert (out.logits is None) != keep
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, max(saved)))
    (loss0, grads0, biggest0), (loss1, grads1, biggest1) = results
    torch.testing.assert_close(loss1, loss0)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert biggest0 >= x.numel() * cfg.vocab_size > biggest1  # the whole logits kept only by the first

    nothing = torch.full_like(y, -100)
    model.zero_grad()
    out = model(x, nothing, keep_logits=False)
    out.loss.backward()
    assert out.loss.item() == 0.0 and all(p.grad is None or not p.grad.any() for p in model.parameters())
