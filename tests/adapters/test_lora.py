"""LoRA adapters: zero-init identity, merge, mixed-adapter batches, files, base checks, training."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lightseek.adapters.lora import (
    TARGETS,
    LoraConfig,
    adapter_names,
    apply_lora,
    format_report,
    merge_lora,
    trainable_parameters,
    use_adapters,
)
from lightseek.adapters.store import base_fingerprint, load_adapter, save_adapter
from lightseek.errors import CheckpointError, ConfigError
from lightseek.model.config import preset
from lightseek.model.kv_cache import KVCache
from lightseek.model.transformer import Transformer

ALL = LoraConfig(rank=4, targets=list(TARGETS))


def model_for(mode: str) -> Transformer:
    torch.manual_seed(0)
    extra = {"router_mode": "topk", "top_k": 2} if mode == "topk" else {}
    m = Transformer(preset("debug", **extra)).eval()
    for r in m.moe_layers():  # a non-trivial routing state
        r.router.bias_E.normal_(0, 0.3)
    return m


def randomise(model: Transformer, name: str, std: float = 0.1) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ("lora_B" in n or "lora_embedding_A" in n) and name in n.split("."):
                p.normal_(0, std)


def tokens(b: int = 3, t: int = 24) -> torch.Tensor:
    return torch.randint(0, 512, (b, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", ["dynamic", "topk"])
def test_zero_B_leaves_the_model_unchanged(mode) -> None:
    m = model_for(mode)
    x = tokens()
    before = m(x).logits
    apply_lora(m, ALL, "a")
    with use_adapters(m, "a"):
        assert torch.equal(m(x).logits, before)


@pytest.mark.parametrize("mode", ["dynamic", "topk"])
def test_merged_equals_unmerged(mode) -> None:
    m = model_for(mode)
    apply_lora(m, ALL, "a")
    randomise(m, "a")
    x = tokens()
    with use_adapters(m, "a"):
        adapted = m(x).logits
    base = m(x).logits
    assert (adapted - base).abs().max() > 1e-2  # the adapter does something
    merged = merge_lora(copy.deepcopy(m), "a")
    assert adapter_names(merged) == [] and type(merged.layers[0].attn.wq) is type(model_for(mode).layers[0].attn.wq)
    assert (merged(x).logits - adapted).abs().max() < 1e-4


def test_only_adapter_factors_train_and_every_expert_is_covered() -> None:
    m = model_for("dynamic")
    report = apply_lora(m, LoraConfig(rank=2, targets=["attn", "experts"]), "a")
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    experts = [r for r in report if r.target == "experts"]
    assert len(experts) == m.cfg.n_moe_layers
    E, D, H = m.moe_layers()[0].w1_EDH.shape
    assert experts[0].params == E * 2 * ((D + H) * 2)  + E * 2 * (H + D)  # w1, w3: D->H; w2: H->D, rank 2
    assert trainable_parameters(m) == sum(r.params for r in report)


def test_report_is_one_line_per_kind_of_module_with_its_block_count() -> None:
    m = model_for("dynamic")
    report = apply_lora(m, LoraConfig(rank=2, targets=["attn", "experts"]), "a")
    text = format_report(report, 1000)
    lines = text.splitlines()
    n_layers = len(m.layers)
    wq = [ln for ln in lines if ln.startswith("layers.*.attn.wq ")]
    assert len(wq) == 1 and wq[0].split()[4] == str(n_layers)  # module, target, rank, params, blocks
    assert len(lines) == 2 + len({(r.target, r.shape, r.module.split(".", 2)[-1]) for r in report})
    assert lines[-1].startswith(f"{len(report)} modules") and f"{sum(r.params for r in report):,}" in lines[-1]


def test_mixed_batch_equals_each_sequence_alone() -> None:
    m = model_for("dynamic")
    apply_lora(m, ALL, "a")
    apply_lora(m, LoraConfig(rank=2, targets=["attn", "experts"]), "b")
    randomise(m, "a")
    randomise(m, "b", 0.2)
    with torch.no_grad():  # make the routers disagree between adapters
        for r in m.moe_layers():
            r.router.adapter_states["b"].bias_E.normal_(0, 1.0)
            r.router.adapter_states["a"].threshold.fill_(0.3)
    x = tokens(4)
    choice = ["a", None, "b", "a"]
    with use_adapters(m, choice):
        mixed = m(x).logits
    for i, name in enumerate(choice):
        with use_adapters(m, name):
            alone = m(x[i:i + 1]).logits
        # equal up to float rounding (a GEMM over other rows may round differently)
        torch.testing.assert_close(mixed[i], alone[0], rtol=1e-5, atol=1e-5, msg=f"row {i} ({name})")
    # ... and token by token through the KV cache
    cache = KVCache.for_model(m, batch_size=4, max_len=32)
    with use_adapters(m, choice):
        m(x[:, :20], cache=cache)
        step = m(x[:, 20:21], cache=cache).logits
    torch.testing.assert_close(step[:, 0], mixed[:, 20], rtol=1e-5, atol=1e-4)


def test_unknown_adapter_and_bad_names() -> None:
    m = model_for("dynamic")
    apply_lora(m, ALL, "a")
    with pytest.raises(ConfigError, match="adapter 'zz' is not loaded"), use_adapters(m, ["a", "zz"]):
        pass
    with pytest.raises(ConfigError, match="already attached"):
        apply_lora(m, ALL, "a")
    with pytest.raises(ConfigError, match="adapter name"):
        apply_lora(m, ALL, "has.dot")
    with pytest.raises(ConfigError, match="unknown"):
        LoraConfig(targets=["mlp"])


def test_save_load_round_trip_and_base_checks(debug_checkpoint, tmp_path: Path) -> None:
    from lightseek.model.checkpoint import load_model, save_checkpoint

    m = load_model(debug_checkpoint)
    apply_lora(m, ALL, "med")
    randomise(m, "med")
    with torch.no_grad():
        m.moe_layers()[0].router.adapter_states["med"].bias_E.fill_(0.25)
    fp = base_fingerprint(debug_checkpoint)
    save_adapter(tmp_path / "med", m, "med", ALL, {"base": {**fp, "model": m.cfg.to_dict()}, "domain": "medical"})
    files = sorted(p.name for p in (tmp_path / "med").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "lightseek_adapter.json"]
    peft = json.loads((tmp_path / "med" / "adapter_config.json").read_text())
    assert peft["peft_type"] == "LORA" and peft["r"] == 4 and "wq" in peft["target_modules"]
    x = tokens()
    with use_adapters(m, "med"):
        want = m(x).logits

    fresh = load_model(debug_checkpoint)
    info = load_adapter(fresh, tmp_path / "med", fp["sha256"])
    assert info.name == "med" and info.meta["domain"] == "medical"
    with use_adapters(fresh, "med"):
        assert torch.equal(fresh(x).logits, want)

    # other weights of the same shape: refused, naming the base it needs
    other = load_model(debug_checkpoint)
    with torch.no_grad():
        other.embed.weight.add_(0.01)
    save_checkpoint(tmp_path / "other", other)
    with pytest.raises(CheckpointError, match="trained on base weights sha256"):
        load_adapter(load_model(tmp_path / "other"), tmp_path / "med", base_fingerprint(tmp_path / "other")["sha256"])
    # another shape: refused, naming what differs
    bigger = Transformer(preset("debug", dim=128))
    with pytest.raises(CheckpointError, match="differs in dim"):
        load_adapter(bigger, tmp_path / "med", None)
    # damaged files
    (tmp_path / "med" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_adapter(load_model(debug_checkpoint), tmp_path / "med", fp["sha256"])
    with pytest.raises(CheckpointError, match="adapter not found"):
        load_adapter(fresh, tmp_path / "nope", None)


def test_frozen_weights_held_in_bf16_compute_in_fp32() -> None:
    """`store_frozen` halves the frozen matrices (projections, embedding, tied head) and leaves
    norms, routers, experts and the adapter's factors alone; a product with fp32 inputs equals
    the fp32 product with the rounded weight, forward and backward to the input, and a weight
    that still trains refuses to be held so."""
    import torch.nn.functional as F

    from lightseek.adapters.lora import LoraConfig, apply_lora, store_frozen
    from lightseek.kernels.linear import sliced_linear
    from lightseek.model.config import preset
    from lightseek.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(preset("debug"))
    apply_lora(model, LoraConfig(rank=4, targets=["attn", "dense"]), "a")
    matrices = {n: p.numel() * 2 for n, p in model.named_parameters()
                if not p.requires_grad and p.dim() == 2 and ("router" not in n)}
    saved = store_frozen(model, torch.bfloat16)
    assert saved == sum(matrices.values())
    for n, p in model.named_parameters():
        held = n in matrices
        assert (p.dtype == torch.bfloat16) == held, n
    assert model.head.weight is model.embed.weight and model.embed.weight.dtype == torch.bfloat16  # tied: once
    x = torch.randn(3, 64, requires_grad=True)
    w = torch.randn(32, 64).to(torch.bfloat16)
    y = sliced_linear(x, w)
    want_x = x.detach().clone().requires_grad_()
    want = F.linear(want_x, w.float())
    torch.testing.assert_close(y, want)
    y.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(x.grad, want_x.grad)
    with pytest.raises(ValueError, match="must be frozen"):
        sliced_linear(x, w.clone().requires_grad_())
    x_ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        assert model(x_ids).logits.dtype == torch.float32
