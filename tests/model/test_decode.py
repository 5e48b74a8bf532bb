"""The one-sequence decode step (model/decode.py) against the model's own forward."""

from __future__ import annotations

import pytest
import torch

from lightseek.model.config import preset
from lightseek.model.decode import DecodeStep, OneRowMoE, fused
from lightseek.model.generate import generate_ids
from lightseek.model.kv_cache import KVCache
from lightseek.model.moe import MoE
from lightseek.model.sampling import SamplingParams
from lightseek.model.transformer import Transformer

VARIANTS = {
    "dense": dict(router_mode="dense"),
    "topk": dict(router_mode="topk"),
    "dynamic": dict(router_mode="dynamic"),
    "qwen2-like": dict(router_mode="dense", qkv_bias=True, o_bias=True),
    "qwen3-like": dict(router_mode="topk", qk_norm="head"),
    "full qk norm": dict(router_mode="dense", qk_norm="full"),
    "sliding window": dict(router_mode="dense", sliding_window=8),
    "granite-like": dict(router_mode="topk", embed_scale=12.0, residual_scale=0.22, logits_scale=0.125,
                         attn_scale=0.015625),
    "multi-head": dict(router_mode="dense", n_kv_heads=4),
    # the one-row MoE path (routing on the host) for every router the import and moefy make
    "moefy-like": dict(router_mode="dynamic", n_shared_experts=0, expert_weights="unit", max_k=6, min_k=2),
    "moefy-like, ramp": dict(router_mode="dynamic", n_shared_experts=0, expert_weights="unit", max_k=6, min_k=2,
                             threshold_ramp=0.2),
    "deepseek-like": dict(router_mode="topk", top_k=3, score_fn="sigmoid", routed_scaling=2.5),
    "dynamic sigmoid": dict(router_mode="dynamic", score_fn="sigmoid", norm_topk_prob=False),
    "qwen2-moe-like": dict(router_mode="topk", top_k=2, shared_gate=True, norm_topk_prob=False,
                           balance_bias=False),
}


def _model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(preset("debug", **overrides))
    with torch.no_grad():  # sharp, varied expert choices and non-zero biases
        for m in model.moe_layers():
            m.router.weight.normal_(0, 0.5)
            m.router.bias_E.normal_(0, 0.3)  # the selection bias counts where balancing is on
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model.eval()


def _step_against_forward(model: Transformer, steps: int = 24, prompt: int = 10) -> float:
    """Largest |logit difference| between the step and `Transformer.forward`, each on its own
    cache, over ``steps`` tokens after a ``prompt``-token prefill."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (1, prompt + steps), generator=g)
    worst = 0.0
    with torch.inference_mode():
        ours, theirs = KVCache.for_model(model, 1, prompt + steps), KVCache.for_model(model, 1, prompt + steps)
        model(ids[:, :prompt], cache=ours)
        model(ids[:, :prompt], cache=theirs)
        step = DecodeStep.of(model)
        for t in range(prompt, prompt + steps):
            a = step(ids[0, t:t + 1], ours)
            b = model(ids[:, t:t + 1], cache=theirs).logits[:, -1]
            worst = max(worst, (a - b).abs().max().item())
        assert ours.length == theirs.length == prompt + steps
    return worst


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_equals_the_forward(variant):
    """Every attention and FFN variant the step covers gives the forward's logits, token after
    token, past the sliding window where there is one."""
    assert _step_against_forward(_model(**VARIANTS[variant])) < 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_equals_the_forward(variant):
    """`DecodeStep.prefill`, the prompt as one chunk through the step's products (and a second
    chunk after it, past the sliding window where there is one), gives the forward's logits of
    the last token and fills the cache as the forward does."""
    model = _model(**VARIANTS[variant])
    ids = torch.randint(0, model.cfg.vocab_size, (17,), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours, theirs = KVCache.for_model(model, 1, 20), KVCache.for_model(model, 1, 20)
        step = DecodeStep.of(model)
        for chunk in (ids[:10], ids[10:]):
            a = step.prefill(chunk, ours)
            b = model(chunk[None], cache=theirs, last_only=True).logits[:, -1]
            assert a.shape == b.shape == (1, model.cfg.vocab_size)
            assert (a - b).abs().max().item() < 1e-4
        assert ours.length == theirs.length == 17
        for k, v, k2, v2 in zip(ours.k, ours.v, theirs.k, theirs.v):
            assert torch.allclose(k, k2, atol=1e-5) and torch.allclose(v, v2, atol=1e-5)
        with pytest.raises(ValueError, match="exceeds the context"):
            step.prefill(ids[:4], ours)
        with pytest.raises(ValueError, match="no tokens"):
            step.prefill(ids[:0], ours)


def _rows_against_forward(model: Transformer, steps: int = 12) -> float:
    """Largest |logit difference| between `DecodeStep.run_rows` and `Transformer.forward`, each on
    its own slot cache, for three rows of different lengths in non-consecutive slots (a gathered
    read), over ``steps`` tokens."""
    from lightseek.model.kv_cache import SlotCache

    g = torch.Generator().manual_seed(2)
    lengths, slots = [5, 11, 8], [3, 0, 2]
    ids = [torch.randint(0, model.cfg.vocab_size, (n + steps,), generator=g) for n in lengths]
    worst = 0.0
    with torch.inference_mode():
        ours, theirs = (SlotCache.for_model(model, 4, max(lengths) + steps) for _ in range(2))
        for cache in (ours, theirs):
            for slot, n, row in zip(slots, lengths, ids):
                cache.bind([slot], n)
                model(row[None, :n], cache=cache)
        step = DecodeStep.of(model)
        for t in range(steps):
            tokens = torch.stack([row[n + t] for n, row in zip(lengths, ids)])
            ours.bind(slots, 1)
            a = step.run_rows(tokens, ours)
            theirs.bind(slots, 1)
            b = model(tokens[:, None], cache=theirs).logits[:, -1]
            worst = max(worst, (a - b).abs().max().item())
        assert ours.lengths == theirs.lengths
    return worst


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_step_equals_the_forward(variant):
    """The serving engine's batch of rows at their own positions: the step gives the forward's
    logits for every variant (past the sliding window where there is one)."""
    assert _rows_against_forward(_model(**VARIANTS[variant])) < 1e-4


def _batch_against_forward(model: Transformer, rows: int) -> float:
    """Largest |logit difference| between one `DecodeStep.run_batch` pass (``rows`` decode rows
    plus a 7-token prompt chunk of another sequence, which already holds 9 tokens) and the
    forward run separately for each, on two slot caches; the caches must end up alike."""
    from lightseek.model.kv_cache import SlotCache

    g = torch.Generator().manual_seed(5)
    lengths, slots = [6, 13, 9][:rows], [2, 0, 3][:rows]
    seqs = [torch.randint(0, model.cfg.vocab_size, (n + 1,), generator=g) for n in lengths]
    prompt = torch.randint(0, model.cfg.vocab_size, (16,), generator=g)
    with torch.inference_mode():
        ours, theirs = (SlotCache.for_model(model, 4, 32) for _ in range(2))
        for cache in (ours, theirs):
            for slot, n, seq in zip(slots, lengths, seqs):
                cache.bind([slot], n)
                model(seq[None, :n], cache=cache)
            cache.bind([1], 9)
            model(prompt[None, :9], cache=cache)
        tokens = torch.stack([seq[n] for n, seq in zip(lengths, seqs)]) if rows else torch.empty(0, dtype=torch.long)
        if rows:
            ours.bind(slots, 1)
        a_rows, a_chunk = DecodeStep.of(model).run_batch(tokens, ours, prompt[9:], slot=1, chunk_logits="all")
        worst = 0.0
        if rows:
            theirs.bind(slots, 1)
            b_rows = model(tokens[:, None], cache=theirs).logits[:, -1]
            worst = (a_rows - b_rows).abs().max().item()
        else:
            assert a_rows is None
        theirs.bind([1], 7)
        b_chunk = model(prompt[None, 9:], cache=theirs).logits[0]
        worst = max(worst, (a_chunk - b_chunk).abs().max().item())
        assert ours.lengths == theirs.lengths and ours.lengths[1] == 16
        for layer in range(model.cfg.n_layers):
            for slot, n in [*zip(slots, lengths), (1, 15)]:
                assert torch.allclose(ours.k[layer][slot, :, :n + 1], theirs.k[layer][slot, :, :n + 1], atol=1e-5)
        last = DecodeStep.of(model).run_batch(torch.empty(0, dtype=torch.long), ours, prompt[15:], slot=1)[1]
        assert last.shape == (1, model.cfg.vocab_size)
    return worst


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rows", [0, 3])
def test_decode_rows_and_a_prompt_chunk_in_one_pass_equal_the_forward(variant, rows):
    """The engine's step with a new request's prompt riding along: decode rows and the chunk
    give the forward's logits (the chunk after 9 cached tokens, past the sliding window where
    there is one), and write the same keys."""
    assert _batch_against_forward(_model(**VARIANTS[variant]), rows) < 1e-4


def test_run_batch_refuses_what_it_cannot_do():
    from lightseek.model.kv_cache import SlotCache

    model = _model(router_mode="dense")
    step = DecodeStep.of(model)
    cache = SlotCache.for_model(model, 2, 16)
    none = torch.empty(0, dtype=torch.long)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="no decode rows and no prompt chunk"):
            step.run_batch(none, cache)
        with pytest.raises(ValueError, match="bind the 1 decode rows"):
            step.run_batch(torch.tensor([1]), cache)
        cache.bind([0], 1)
        with pytest.raises(ValueError, match="slot 0 is both a decode row and the chunk"):
            step.run_batch(torch.tensor([1]), cache, torch.tensor([3, 4]), slot=0)
        with pytest.raises(ValueError, match="chunk_logits must be"):
            step.run_batch(torch.tensor([1]), cache, torch.tensor([3, 4]), slot=1, chunk_logits="every")
        assert cache.lengths == [0, 0]  # nothing written by a refused call
        with pytest.raises(ValueError, match="exceeds the context"):
            step.run_batch(none, cache, torch.arange(17), slot=1)


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])  # 128: groups padded past the width
def test_step_fuses_quantized_layers_and_equals_the_forward(bits, group):
    from lightseek.quant.apply import quantize
    from lightseek.quant.config import QuantConfig
    from lightseek.quant.modules import QuantLinear, set_kernel

    model = quantize(_model(router_mode="dense"), QuantConfig(bits=bits, group_size=group or 32,
                                                             pad_groups=group == 128))
    with torch.inference_mode():
        step = DecodeStep.of(model)
        layer = step.layers[0]
        block, qkv, wo, w13, w2 = layer.block, layer.qkv, layer.wo, layer.w13, layer.w2
        # the packed products bound as bare functions, q k v and gate-up each one product
        assert not any(isinstance(p, torch.nn.Module) for p in (qkv, wo, w13, w2))
        x = torch.randn(1, model.cfg.dim)
        assert qkv(x).shape[-1] == block.attn.wq.out_features + 2 * block.attn.wk.out_features
        assert torch.allclose(wo(x[:, :block.attn.wo.in_features]), block.attn.wo(x[:, :block.attn.wo.in_features]))
    # the same packed kernels row by row: only the bf16 products' summation order may differ
    assert _step_against_forward(model) < 2e-2
    ids = torch.randint(0, model.cfg.vocab_size, (9,), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():  # the prompt through the step's fused products
        assert (step.prefill(ids, KVCache.for_model(model, 1, 9)) - model(ids[None]).logits[:, -1]).abs().max() < 2e-2
    set_kernel(model, "dequant")  # another kernel: the step is rebuilt, its layers called as modules
    with torch.inference_mode():
        rebuilt = DecodeStep.of(model)
    layer = rebuilt.layers[0]
    assert rebuilt is not step and all(isinstance(p, QuantLinear) for p in (layer.qkv, layer.wo, layer.w13, layer.w2))
    assert _step_against_forward(model) < 2e-2


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])  # 128: the experts' 64 inputs padded
def test_step_runs_quantized_experts_as_gathered_products(bits, group):
    """A quantized MoE decodes its one row through the gathered products of its chosen experts
    (`OneRowMoE` with the layer's `row_experts`): the logits of each step equal those of the whole
    sequence's forward, whose experts run one by one on their sorted tokens."""
    from lightseek.quant.apply import quantize
    from lightseek.quant.config import QuantConfig

    # experts of 64 neurons: whole row blocks of the 4-bit kernel's layout on AVX2 and AVX-512
    model = quantize(_model(**VARIANTS["moefy-like"], moe_inter_dim=64),
                     QuantConfig(bits=bits, group_size=group or 32, pad_groups=group == 128))
    with torch.inference_mode():
        step = DecodeStep.of(model)
    moes = [layer for layer in step.row_layers if isinstance(layer.block.ffn, MoE)]
    assert moes and all(layer.moe is not None for layer in moes)
    assert all(OneRowMoE.covers(m) and m.row_experts() is not None for m in model.moe_layers())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 30), generator=g)
    with torch.inference_mode():
        whole = model(ids).logits[0]
        cache = KVCache.for_model(model, 1, 30)
        model(ids[:, :10], cache=cache)
        rows = torch.stack([step(ids[0, t:t + 1], cache)[0] for t in range(10, 30)])
    assert (rows - whole[10:30]).abs().max() < 3e-2


def test_mixed_layers_and_adapters_run_unfused():
    """Layers that cannot share one product (different formats, adapter wrappers) still decode,
    each through its own module."""
    from lightseek.quant.apply import quantize
    from lightseek.quant.config import QuantConfig

    model = quantize(_model(router_mode="dense"), QuantConfig(bits=4, group_size=32, roles={"attn": 8}))
    f = model.layers[0].ffn
    assert fused([f.w1, model.layers[0].attn.wq]) is None  # 4-bit and 8-bit
    wrapped = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert fused([wrapped, wrapped]) is None
    assert _step_against_forward(model) < 2e-2


def test_step_follows_weight_changes():
    """Fused weights are copies: changing the model's weights rebuilds them before the next use."""
    model = _model(router_mode="dense")
    with torch.inference_mode():
        first = DecodeStep.of(model)
        assert DecodeStep.of(model) is first
    with torch.no_grad():
        model.layers[1].attn.wk.weight.mul_(-1)
    with torch.inference_mode():
        assert DecodeStep.of(model) is not first
    assert _step_against_forward(model) < 1e-4


def test_generation_through_the_step_equals_the_forward_path():
    model = _model(router_mode="dynamic", seed=3)
    prompt = torch.randint(0, 512, (9,), generator=torch.Generator().manual_seed(4)).tolist()
    p = SamplingParams(max_new_tokens=30, temperature=0.0)
    assert list(generate_ids(model, prompt, p)) == list(generate_ids(model, prompt, p, fast=False))
    sampled = SamplingParams(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=11)
    assert list(generate_ids(model, prompt, sampled)) == list(generate_ids(model, prompt, sampled, fast=False))


def test_models_the_step_does_not_cover_say_why_and_still_generate():
    cfg = dict(router_mode="dense", attention="mla", n_kv_heads=4, kv_lora_rank=32, qk_rope_head_dim=16,
               qk_nope_head_dim=16, v_head_dim=32)
    model = _model(**cfg)
    assert DecodeStep.unsupported(model) == "LatentAttention layers"
    assert DecodeStep.of(model) is None
    with pytest.raises(ValueError, match="does not cover this model: LatentAttention"):
        DecodeStep(model)
    p = SamplingParams(max_new_tokens=5, temperature=0.0)
    assert len(list(generate_ids(model, [1, 2, 3], p))) == 5


def test_step_refuses_to_write_past_the_cache():
    model = _model(router_mode="dense")
    with torch.inference_mode():
        cache = KVCache.for_model(model, 1, 4)
        model(torch.tensor([[1, 2, 3, 4]]), cache=cache)
        with pytest.raises(ValueError, match="KV cache holds 4 tokens; 5 requested"):
            DecodeStep.of(model)(torch.tensor([5]), cache)


def test_an_adapter_applies_through_the_step(strong_adapter):
    """A step built before an adapter was attached is rebuilt (the projections are new modules),
    and the adapter chosen for the sequence changes the tokens exactly as in the forward."""
    from lightseek.adapters.lora import use_adapters

    model = _model(router_mode="topk", seed=5)
    prompt = torch.randint(0, 512, (9,), generator=torch.Generator().manual_seed(6)).tolist()
    p = SamplingParams(max_new_tokens=20, temperature=0.0)
    base = list(generate_ids(model, prompt, p))
    before = DecodeStep.of(model)
    strong_adapter(model, "med")
    with use_adapters(model, "med"):
        adapted = list(generate_ids(model, prompt, p))
        assert DecodeStep.of(model) is not before
        assert adapted == list(generate_ids(model, prompt, p, fast=False))
    assert adapted != base
    with use_adapters(model, None):
        assert list(generate_ids(model, prompt, p)) == base


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_one_row_norm_and_rotation_match_the_modules(dtype, tol):
    """The one-row pieces of the step: the RMSNorm read on the host (its mean square in fp32 for
    any dtype) and the rotation as a product give what `F.rms_norm` and `apply_rope` give."""
    from lightseek.model.decode import _one_row_rms_norm, _rotate, rope_matrix
    from lightseek.model.transformer import apply_rope

    g = torch.Generator().manual_seed(6)
    x, w = (torch.randn(1, 64, generator=g) * 30).to(dtype), torch.rand(64, generator=g).to(dtype)
    ref = torch.nn.functional.rms_norm(x, (64,), w, 1e-5)
    assert ((_one_row_rms_norm(x, w, 1e-5) - ref).abs().max() / ref.abs().max()).item() < tol
    assert _one_row_rms_norm(x, None, None).dtype == dtype
    angles = torch.rand(5, 16, generator=g) * 6.0
    cos, sin = angles.cos(), angles.sin()
    qk = torch.randn(5, 3, 32, generator=g).to(dtype)
    rotated = _rotate(qk, rope_matrix(cos, sin))  # five tokens at their own positions
    assert rotated.dtype == dtype
    assert torch.allclose(rotated.float(), apply_rope(qk, cos[:, None], sin[:, None]).float(), atol=tol * 10)
    one = _rotate(qk[:1], rope_matrix(cos[:1], sin[:1]))  # one position: the single product
    assert torch.allclose(one.float(), apply_rope(qk[:1], cos[:1], sin[:1]).float(), atol=tol * 10)


MOE_VARIANTS = ["topk", "dynamic", "moefy-like", "moefy-like, ramp", "deepseek-like", "dynamic sigmoid",
                "qwen2-moe-like"]


@pytest.mark.parametrize("variant", MOE_VARIANTS)
def test_one_row_moe_equals_the_module(variant):
    """`OneRowMoE` (routing on the host, experts read through embedding bags) gives the MoE
    module's output and accumulates the same routing statistics, token after token; the decode
    step uses it for one row."""
    model = _model(**VARIANTS[variant])
    moe = model.moe_layers()[0]
    assert OneRowMoE.covers(moe)
    assert any(layer.moe is not None for layer in DecodeStep.of(model).row_layers)
    fast = OneRowMoE(moe)
    xs = torch.randn(200, model.cfg.dim, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        moe.router.reset_stats()
        want = moe(xs[None])[0]  # all rows at once: the module's general routing and dispatch
        load, sums = moe.router.load_E.clone(), moe.router.stat_sums.clone()
        moe.router.reset_stats()
        got = torch.cat([fast(x[None]) for x in xs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(moe.router.load_E, load)
    torch.testing.assert_close(moe.router.stat_sums, sums)
    k = sums[1] / sums[0]
    assert 1 <= k <= moe.cfg.max_k and (variant not in ("dynamic", "moefy-like") or 1 < k < moe.cfg.max_k)


def test_one_row_moe_falls_back_to_the_module(strong_adapter):
    """With autograd on, in training, or with an adapter on the gate or the experts, the one-row
    path hands the row to the module (so gradients, auxiliary losses and adapters apply)."""
    from lightseek.adapters.lora import LoraConfig, apply_lora, use_adapters

    model = _model(router_mode="dynamic", aux_loss_coef=0.01)
    moe = model.moe_layers()[0]
    fast = OneRowMoE(moe)
    x = torch.randn(1, model.cfg.dim, requires_grad=True)
    fast(x).sum().backward()  # through the module: a gradient reaches the router and the input
    assert x.grad is not None and moe.router.weight.grad is not None
    moe.train()
    moe.aux_loss = None
    with torch.no_grad():
        assert not moe.router.host_routes(x, 1)
        fast(x)
    assert moe.aux_loss is not None  # the module's training forward ran
    moe.eval()
    with torch.no_grad():
        assert moe.router.host_routes(x, 1) and not moe.router.host_routes(x, 2)
    xs = torch.randn(40, model.cfg.dim, generator=torch.Generator().manual_seed(8))
    for targets in (["router"], ["experts"]):  # an adapter on the gate, then on the experts
        adapted = _model(router_mode="dynamic")
        apply_lora(adapted, LoraConfig(rank=4, targets=targets), "a")
        with torch.no_grad():
            for n, p in adapted.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        layer = adapted.moe_layers()[0]
        with use_adapters(adapted, "a"), torch.inference_mode():
            want = layer(xs[None])[0]
            got = torch.cat([OneRowMoE(layer)(row[None]) for row in xs])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        with use_adapters(adapted, None), torch.inference_mode():
            assert not torch.equal(layer(xs[None])[0], want)  # the adapter changes the layer


def test_the_step_sees_a_replaced_expert_weight():
    """Replacing a MoE layer's expert weights (a new parameter, as loading with assign does) is
    seen by the one-row path without a rebuild: it reads the module's weights at each call."""
    model = _model(router_mode="topk")
    assert _step_against_forward(model) < 1e-4
    moe = model.moe_layers()[0]
    moe.w2_EHD = torch.nn.Parameter(torch.randn_like(moe.w2_EHD))
    assert _step_against_forward(model) < 1e-4
