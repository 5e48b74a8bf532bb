"""The fast dispatch path equals the reference loop, forward and backward."""

from __future__ import annotations

import pytest
import torch

from lightseek.kernels.dispatch import (
    DISPATCH,
    get_dispatch,
    grouped_mm_works,
    moe_bags,
    moe_few_tokens,
    moe_grouped_mm,
    moe_reference,
    moe_sorted_segments,
)
from lightseek.model.config import preset
from lightseek.model.moe import MoE


def _routing(T: int, E: int, K: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])        # (T, K)
    k_T = torch.randint(1, K + 1, (T,), generator=g)                                 # different k per token
    keep = torch.arange(K) < k_T[:, None]
    ids = ids.masked_fill(~keep, E)
    weights = torch.rand(T, K, generator=g) * keep
    return ids, weights


def _experts(E: int, D: int, H: int, g: torch.Generator, scale: float) -> list[torch.Tensor]:
    """Random stacked SwiGLU expert weights: w1, w3 (E, D, H) and w2 (E, H, D)."""
    return [torch.randn(E, D, H, generator=g) * scale, torch.randn(E, D, H, generator=g) * scale,
            torch.randn(E, H, D, generator=g) * scale]


@pytest.mark.parametrize("seed", [0, 1])
def test_segments_equal_reference_forward_backward(seed):
    T, D, H, E, K = 50, 16, 12, 8, 4
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g)
    w = _experts(E, D, H, g, 0.3)
    ids, weights = _routing(T, E, K, seed)
    ids[ids == 3] = E  # expert 3 receives no tokens
    outs, grads = [], []
    for fn in (moe_reference, moe_sorted_segments, moe_grouped_mm, moe_few_tokens):
        xs = x.clone().requires_grad_()
        ws = [t.clone().requires_grad_() for t in w]
        wt = weights.clone().requires_grad_()
        y = fn(xs, ids, wt, *ws)
        (y * torch.linspace(-1, 1, D)).sum().backward()
        outs.append(y.detach())
        grads.append([xs.grad, wt.grad] + [t.grad for t in ws])
    assert (ids == 3).sum() == 0 and (ids == E).any()
    for fast in (1, 2, 3):
        torch.testing.assert_close(outs[fast], outs[0], atol=1e-5, rtol=1e-5)
        for a, b in zip(grads[fast], grads[0]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads[0][2][3].abs().sum() == 0  # the idle expert gets no gradient


def test_few_tokens_path_without_autograd_equals_reference():
    """The decode path folds each expert's weight into its accumulation when autograd is off;
    'auto' takes it for a few tokens on the CPU, including a token with every slot unused."""
    T, D, H, E, K = 3, 16, 12, 8, 4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, D, generator=g)
    w = _experts(E, D, H, g, 0.3)
    ids, weights = _routing(T, E, K, 2)
    ids[2], weights[2] = E, 0.0  # no expert for the last token: its output is zero
    want = moe_reference(x, ids, weights, *w)
    with torch.no_grad():
        for rows in (slice(0, 1), slice(2, 3), slice(0, 3)):
            torch.testing.assert_close(moe_few_tokens(x[rows], ids[rows], weights[rows], *w), want[rows],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(get_dispatch("auto")(x[rows], ids[rows], weights[rows], *w), want[rows],
                                       atol=1e-5, rtol=1e-5)
    assert not want[2].any()


def test_bags_after_inference_mode_still_train():
    """`moe_bags` caches its index tensors; made first under inference mode, they must still
    serve a forward that autograd records (a served model fine-tuned in the same process)."""
    T, D, H, E, K = 2, 16, 12, 8, 3
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, D, generator=g)
    w = [t.requires_grad_() for t in _experts(E + 1, D, H, g, 0.3)]  # a shape no other test caches
    ids, weights = _routing(T, E + 1, K, 4)
    with torch.inference_mode():
        first = moe_bags(x, ids, weights, *w)
    moe_bags(x, ids, weights, *w).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in w)
    torch.testing.assert_close(first, moe_reference(x, ids, weights, *[t.detach() for t in w]))


@pytest.mark.parametrize("mode", ["topk", "dynamic"])
def test_moe_layer_paths_agree(mode):
    cfg = preset("debug", router_mode=mode, top_k=3)
    torch.manual_seed(0)
    layer = MoE(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 20, cfg.dim)
    results = []
    names = ["reference"] + [n for n in DISPATCH if n != "reference"]
    for name in names + ["auto"]:
        layer.set_dispatch(name)
        layer.zero_grad()
        xs = x.clone().requires_grad_()
        y = layer(xs)
        y.square().sum().backward()
        results.append((y.detach(), xs.grad, [p.grad.clone() for p in layer.parameters()]))
    k = layer.router.stat_sums
    assert k[0] > 0
    def close(a, b):  # paths sum the experts in different orders: fp32 rounding, relative to the scale
        torch.testing.assert_close(a, b, atol=1e-6 * max(1.0, b.abs().max().item()), rtol=1e-5)

    for fast in results[1:]:
        close(fast[0], results[0][0])
        close(fast[1], results[0][1])
        for a, b in zip(fast[2], results[0][2]):
            close(a, b)


def test_dynamic_router_gives_tokens_different_k():
    cfg = preset("debug", router_mode="dynamic", threshold_init=0.6)
    torch.manual_seed(0)
    layer = MoE(cfg)
    torch.nn.init.normal_(layer.router.weight, std=1.0)
    route = layer.router(torch.randn(1, 200, cfg.dim))
    k_T = (route.expert_ids_TK < cfg.n_experts).sum(-1)
    assert k_T.min() >= cfg.min_k and k_T.max() <= cfg.max_k
    assert len(k_T.unique()) > 1
    # unused slots carry the sentinel id and zero weight; used weights sum to 1
    unused = route.expert_ids_TK == cfg.n_experts
    assert (route.weights_TK[unused] == 0).all()
    torch.testing.assert_close(route.weights_TK.sum(-1), torch.ones(200))


def test_threshold_ramp_outside_its_range_is_refused_by_name():
    from lightseek.errors import ConfigError

    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=f"model.threshold_ramp must be in \\[0, 1\\], got {bad}"):
            preset("debug", router_mode="dynamic", threshold_ramp=bad)


@pytest.mark.parametrize("expert_weights", ["unit", "router"])  # router: renormalised over the chosen
def test_threshold_ramp_fades_an_expert_out_instead_of_dropping_it(expert_weights):
    """With a hard cut, moving the threshold across a token's routing mass drops a whole expert:
    the layer's output jumps. With a ramp the same experts run, the last one weighted by how far
    the mass before it lies below the threshold, so the output moves in steps as small as the
    threshold's; on the host path (`route_one`) as in the batched forward."""
    def outputs(ramp: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = preset("debug", router_mode="dynamic", expert_weights=expert_weights, n_shared_experts=0,
                     max_k=8, threshold_ramp=ramp)
        torch.manual_seed(0)
        layer = MoE(cfg).eval()
        torch.nn.init.normal_(layer.router.weight, std=0.3)
        for w in (layer.w1_EDH, layer.w3_EDH, layer.w2_EHD):
            torch.nn.init.normal_(w, std=0.5)
        x = torch.randn(1, 1, cfg.dim, generator=torch.Generator().manual_seed(3))
        ys, host = [], []
        with torch.inference_mode():
            for t in torch.linspace(0.3, 0.9, 601):
                layer.router.threshold.fill_(float(t))
                ys.append(layer(x.expand(1, 2, cfg.dim))[0, 0])  # two tokens: the batched router
                ids, weights = layer.router.route_one(x[0, 0])
                host.append(sum(w * layer._experts(x[0], ids[j:j + 1][None], torch.ones(1, 1), None)[0]
                                for j, w in enumerate(weights)))
        return torch.stack(ys), torch.stack(host)

    hard, _ = outputs(0.0)
    soft, soft_host = outputs(0.2)
    jump = lambda y: (y[1:] - y[:-1]).norm(dim=-1).max().item()  # noqa: E731
    scale = hard.norm(dim=-1).mean().item()
    assert jump(hard) > 0.1 * scale                        # an expert added or dropped at once
    assert jump(soft) < 0.05 * jump(hard)                  # the same sweep, in small steps
    assert not torch.allclose(soft[0], soft[-1])           # and it does move
    torch.testing.assert_close(soft_host, soft, atol=1e-4, rtol=1e-3)  # its ramp in float64


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", [*DISPATCH, "auto"])
def test_cuda_paths_equal_reference(name, dtype):
    """Each dispatch path on CUDA equals the fp32 reference on the CPU, forward and backward.
    Skipped only without a CUDA device (the `gpu` mark), or for grouped_mm when this build has no
    CUDA grouped GEMM kernel for the dtype, which `grouped_mm_works` probes explicitly; any other
    error is a failure ('auto' must always find a path that works)."""
    if name == "grouped_mm" and not grouped_mm_works("cuda", dtype):
        pytest.skip(f"PyTorch {torch.__version__} has no CUDA grouped_mm kernel for {dtype} on "
                    f"{torch.cuda.get_device_name()} (grouped_mm_works probe)")
    T, D, H, E, K = 300, 64, 32, 16, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, D, generator=g)
    w = _experts(E, D, H, g, 0.2)
    ids, weights = _routing(T, E, K, 0)
    probe = torch.linspace(-1, 1, D)  # a fixed upstream gradient, the same on both devices

    def run(fn, device, dt):
        xs = x.to(device, dt).clone().requires_grad_()  # new leaves (to() may return the tensor itself)
        ws = [t.to(device, dt).clone().requires_grad_() for t in w]
        wt = weights.to(device).clone().requires_grad_()
        y = fn(xs, ids.to(device), wt, *ws)
        (y.float() * probe.to(device)).sum().backward()
        return [t.detach().float().cpu() for t in (y, xs.grad, wt.grad, *(t.grad for t in ws))]

    want = run(moe_reference, "cpu", torch.float32)
    got = run(get_dispatch(name), "cuda", dtype)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for what, a, b in zip(["output", "x grad", "weights grad", "w1 grad", "w3 grad", "w2 grad"], got, want):
        assert a.shape == b.shape, what
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, atol=tol * scale, rtol=tol, msg=lambda m, what=what: f"{what}: {m}")


def test_autocast_routes_in_fp32_and_every_path_computes_experts_alike():
    cfg = preset("debug", router_mode="topk", top_k=2)
    torch.manual_seed(0)
    layer = MoE(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    torch.nn.init.normal_(layer.router.weight, std=0.02)  # close scores: bf16 logits would flip choices
    x = torch.randn(4, 500, cfg.dim)
    with torch.no_grad():
        ids_fp32 = layer.router(x).expert_ids_TK
        outs = {}
        for name in DISPATCH:
            layer.set_dispatch(name)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(layer.router(x).expert_ids_TK, ids_fp32)  # routing unchanged
                outs[name] = layer(x)
    for name, y in outs.items():
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, outs["reference"], atol=2e-2, rtol=2e-2)
        assert (y - outs["reference"]).abs().max() < (outs["reference"]).abs().max()
    # one token at a time (routing decided on the host, `Router.route_one`): still fp32 routing
    layer.set_dispatch("auto")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        one = torch.stack([layer.router(x[0, t:t + 1][None]).expert_ids_TK[0] for t in range(200)])
        y = layer(x[:1, :1])
    assert torch.equal(one, ids_fp32[:200])
    assert y.dtype == torch.float32


def test_grouped_mm_probe_is_not_fooled_by_no_grad() -> None:
    """The first probe may come from inference: its answer must not depend on no_grad."""
    from lightseek.kernels.dispatch import grouped_mm_works

    grouped_mm_works.cache_clear()
    with torch.no_grad():
        under_no_grad = grouped_mm_works("cpu", torch.float32)
    grouped_mm_works.cache_clear()
    assert under_no_grad == grouped_mm_works("cpu", torch.float32)
