"""Dense to MoE conversion: exact with every expert on, every neuron in one expert, routers that
learn what they are fitted to, thresholds that hit the target k, and the TEAL baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import one_torch_thread  # noqa: F401  (fixture: one PyTorch thread)

from lightseek.errors import ConfigError
from lightseek.model.config import preset
from lightseek.model.moe import MoE, SwiGLU
from lightseek.model.transformer import Transformer
from lightseek.moefy.config import MoefyConfig
from lightseek.moefy.convert import calibrate_threshold, fit_router, layerwise, moefy_model, retarget, set_routing
from lightseek.moefy.split import balanced_kmeans, split_neurons
from lightseek.moefy.teal import ThresholdFFN, threshold_ffns


def dense_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(preset("debug", router_mode="dense", n_layers=3, **overrides)).eval()
    with torch.no_grad():  # larger FFN outputs than the init's, so that dropping experts shows
        for block in model.layers:
            block.ffn.w2.weight.mul_(10)
    return model


def windows(n: int = 4, T: int = 32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, 512, (n, T), generator=g).split(2))


@pytest.mark.parametrize("split", ["coactivation", "weights", "random"])
@pytest.mark.parametrize("shared_dim", [0, 32])
def test_every_expert_on_gives_the_dense_logits(split, shared_dim):
    dense = dense_model()
    cfg = MoefyConfig(experts=8, shared_dim=shared_dim, split=split, router="topk", top_k=8, router_steps=20)
    moe, reports = moefy_model(dense, windows(), cfg)
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        want, got = dense(ids).logits, moe(ids).logits
    assert (got - want).abs().max() < 1e-5
    assert len(reports) == 3 and all(r["rel_error"] < 1e-5 for r in reports)
    assert all(r["avg_k"] == 8 for r in reports)


def test_every_neuron_lands_in_exactly_one_expert():
    dense = dense_model()
    moe, _ = moefy_model(dense, windows(), MoefyConfig(experts=4, shared_dim=32, target_k=2, router_steps=5))
    for d_block, m_block in zip(dense.layers, moe.layers):
        ffn, layer = d_block.ffn, m_block.ffn
        rows = torch.cat([layer.w1_EDH.transpose(1, 2).reshape(-1, 64), layer.shared.w1.weight])
        assert rows.shape == ffn.w1.weight.shape
        # each of the dense FFN's neurons is one row of the experts' stacked weights, once
        match = (rows[:, None, :] == ffn.w1.weight[None]).all(-1)
        assert match.sum(0).eq(1).all() and match.sum(1).eq(1).all()
        perm = match.float().argmax(1)
        assert torch.equal(torch.cat([layer.w3_EDH.transpose(1, 2).reshape(-1, 64), layer.shared.w3.weight]),
                           ffn.w3.weight[perm])
        assert torch.equal(torch.cat([layer.w2_EHD.reshape(-1, 64), layer.shared.w2.weight.T]), ffn.w2.weight.T[perm])


def test_the_dense_model_is_left_unchanged_and_layers_can_stay_dense():
    dense = dense_model()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    moe, reports = moefy_model(dense, windows(), MoefyConfig(experts=4, dense_layers=1, target_k=2, router_steps=5))
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    assert type(moe.layers[0].ffn) is SwiGLU and all(type(b.ffn) is MoE for b in moe.layers[1:])
    assert [r["layer"] for r in reports] == [1, 2]


def test_balanced_kmeans_recovers_planted_groups_in_equal_sizes():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 32, generator=g), dim=1)
    truth = torch.arange(64) % 4
    feats = F.normalize(centres[truth] + 0.2 * torch.randn(64, 32, generator=g), dim=1)
    labels = balanced_kmeans(feats, 4, iters=20, generator=g)
    assert torch.bincount(labels, minlength=4).tolist() == [16] * 4
    # each found cluster is one planted group (up to renaming)
    for c in range(4):
        assert truth[labels == c].unique().numel() == 1


def test_coactivation_split_groups_neurons_that_fire_together():
    """Neurons built to fire on disjoint sets of inputs end up in the same expert."""
    D, groups = 16, 4
    ffn = SwiGLU(D, 32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # neuron i reads input direction (i % groups): inputs along one direction drive one group
        ffn.w1.weight.copy_(torch.eye(D)[torch.arange(32) % groups] * 4 + 0.01 * torch.randn(32, D, generator=g))
        ffn.w3.weight.copy_(torch.eye(D)[torch.arange(32) % groups] * 4)
        ffn.w2.weight.normal_(generator=g)
    x = torch.zeros(400, D)
    x[torch.arange(400), torch.arange(400) % groups] = 1 + torch.rand(400, generator=g)
    from lightseek.moefy.split import neuron_contributions

    contrib = neuron_contributions(ffn, x)
    experts = split_neurons("coactivation", 4, torch.arange(32), ffn=ffn, contrib_NI=contrib, iters=20, generator=g)
    for row in experts:
        assert (row % groups).unique().numel() == 1
    random = split_neurons("random", 4, torch.arange(32), ffn=ffn, contrib_NI=None, iters=1, generator=g)
    assert sorted(random.reshape(-1).tolist()) == list(range(32))


def test_fit_router_learns_a_planted_gate():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3000, 24, generator=g)
    true_w = torch.randn(6, 24, generator=g) * 0.5
    norms = (u @ true_w.T).exp()  # each expert's output norm: log-linear in the input
    router = torch.nn.Linear(24, 6, bias=False)
    fit_router(router, u[:2500], norms[:2500], steps=200, lr=0.05)
    pred = router(u[2500:]).softmax(-1)
    shares = norms[2500:] / norms[2500:].sum(1, keepdim=True)
    assert (pred.argmax(1) == shares.argmax(1)).float().mean() > 0.95
    assert (pred - shares).abs().max() < 0.05


def test_calibrate_threshold_hits_the_target_k():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(2000, 16, generator=g).mul(2).softmax(-1)
    for target in (1.5, 3.0, 8.0):
        t = calibrate_threshold(probs, target, 1, 16)
        mass = probs.sort(-1, descending=True).values.cumsum(-1)
        k = ((mass < t).sum(-1) + 1).clamp(1, 16).float().mean()
        assert abs(float(k) - target) < 0.02


def test_dynamic_conversion_meets_target_k_and_can_be_retargeted_and_switched_to_topk():
    dense = dense_model()
    calib = windows(8, 48)
    moe, reports = moefy_model(dense, calib, MoefyConfig(experts=8, target_k=3, router_steps=50))
    for r in reports:
        assert abs(r["avg_k"] - 3) < 0.5  # held-out tokens: near the calibrated target
        assert 0 <= r["router_recall"] <= 1 and 0 < r["rel_error"] < 1
    thresholds = retarget(moe, calib, 5.0)
    assert len(thresholds) == 3
    moe.reset_routing_stats()
    with torch.no_grad():
        for w in calib:
            moe(w)
    ks = [r["avg_k"] for r in moe.routing_report()]
    assert all(abs(k - 5) < 0.05 for k in ks), ks  # on the windows it was calibrated on: exact
    set_routing(moe, router_mode="topk", top_k=2)
    moe.reset_routing_stats()
    with torch.no_grad():
        moe(calib[0])
    assert all(r["avg_k"] == 2 for r in moe.routing_report())
    with pytest.raises(ConfigError):
        set_routing(moe, router_mode="topk", top_k=9)


def test_more_experts_on_means_less_error():
    dense = dense_model()
    calib = windows(8, 48)
    moe, _ = moefy_model(dense, calib, MoefyConfig(experts=8, target_k=2, router_steps=50))
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        ref = dense(ids).logits
        errors = []
        for k in (2.0, 4.0, 6.0, 8.0):
            retarget(moe, calib, k)
            errors.append(float((moe(ids).logits - ref).norm() / ref.norm()))
        assert errors == sorted(errors, reverse=True), errors
        set_routing(moe, router_mode="topk", top_k=8)  # every expert on: the dense model again
        assert float((moe(ids).logits - ref).norm() / ref.norm()) < 1e-5


def test_bad_settings_are_refused_by_name():
    dense = dense_model()
    with pytest.raises(ConfigError, match="multiple of experts"):
        moefy_model(dense, windows(), MoefyConfig(experts=5, target_k=2))
    with pytest.raises(ConfigError, match="dense_layers"):
        moefy_model(dense, windows(), MoefyConfig(experts=4, target_k=2, dense_layers=3))
    with pytest.raises(ConfigError, match="target_k"):
        moefy_model(dense, windows(), MoefyConfig(experts=4, target_k=6))
    moe, _ = moefy_model(dense, windows(), MoefyConfig(experts=4, target_k=2, router_steps=2))
    with pytest.raises(ConfigError, match="already a MoE"):
        moefy_model(moe, windows(), MoefyConfig(experts=4, target_k=2))


def test_layerwise_walk_reproduces_the_forward():
    dense = dense_model()
    calib = windows(2, 16)
    hidden = []
    for i, block, u in layerwise(dense, calib):
        hidden.append(u)
    # the last block's FFN inputs equal those of a plain forward, captured by a hook
    captured = []
    handle = dense.layers[-1].ffn.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        for w in calib:
            dense(w)
    handle.remove()
    assert torch.allclose(hidden[-1], torch.cat([c.reshape(-1, 64) for c in captured]), atol=1e-6)


def test_teal_thresholds_zero_the_target_share_and_are_exact_at_zero():
    dense = dense_model()
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        ref = dense(ids).logits
    threshold_ffns(dense, windows(), 0.0)
    with torch.no_grad():
        assert torch.allclose(dense(ids).logits, ref, atol=1e-6)
    dense = dense_model()
    calib = windows(8, 48)
    threshold_ffns(dense, calib, 0.5)
    assert all(isinstance(b.ffn, ThresholdFFN) for b in dense.layers)
    zero_in = []
    for _, block, u in layerwise(dense, calib):
        zero_in.append(float((u.abs() < block.ffn.t_in).float().mean()))
    assert all(abs(z - 0.5) < 0.01 for z in zero_in), zero_in
    with pytest.raises(ValueError, match="sparsity"):
        threshold_ffns(dense, calib, 1.0)
