"""bench/quant_real.py's comparison against the fp32 model: perplexity, KL and, for an MoE model,
the share of routing choices that stay the fp32 model's."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lightseek.model.config import preset
from lightseek.model.transformer import Transformer

BENCH_FILE = Path(__file__).resolve().parents[2] / "bench" / "quant_real.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quant_real", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _model(mode: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(preset("debug", router_mode=mode))
    with torch.no_grad():  # sharp, varied expert choices, as a trained router makes, and experts
        for m in model.moe_layers():  # whose outputs matter
            m.router.weight.normal_(0, 0.5)
            for w in (m.w1_EDH, m.w3_EDH, m.w2_EHD):
                w.mul_(5.0)
    return model.eval()


def _windows() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return list(torch.randint(0, 512, (4, 33), generator=g).split(2))


def test_the_same_moe_model_keeps_every_choice(bench):
    model = _model("dynamic")
    ref = bench.Reference(model, _windows())
    r = ref.compare(model)
    assert r["same_experts"] == 1.0
    assert r["kl_mean"] < 1e-4 and abs(r["ppl_change"]) < 1e-3  # the reference is kept in fp16
    assert set(ref.routes) == {f"{n}.router" for n, m in model.named_modules() if hasattr(m, "router")}
    assert next(iter(ref.routes.values())).shape == (4 * 32, model.cfg.n_experts)


def test_a_changed_router_shows_in_the_share_and_the_kl(bench):
    model = _model("dynamic")
    ref = bench.Reference(model, _windows())
    changed = copy.deepcopy(model)
    layers = list(changed.moe_layers())
    with torch.no_grad():
        layers[-1].router.weight.neg_()  # the last router's order reversed: its choices change, no other's
    r, same = ref.compare(changed), ref.compare(model)
    n = len(layers)
    assert (n - 1) / n <= r["same_experts"] < 1.0
    assert r["kl_mean"] > 10 * same["kl_mean"]  # other experts, other outputs


def test_bf16_autocast_is_measured_and_a_dense_model_has_no_routes(bench):
    model = _model("dense")
    ref = bench.Reference(model, _windows())
    assert ref.routes == {}
    r = ref.compare(model, bf16=True)
    assert "same_experts" not in r
    assert 0.0 < r["kl_mean"] < 0.05  # bf16 rounding moves the distributions a little, no more
    assert not torch.is_autocast_enabled("cpu")  # left as it was


def test_report_prints_rows_with_and_without_speeds(bench, capsys):
    """The bf16 row is measured for quality only: its line says so instead of failing."""
    base = {"form": "moe", "size_bytes": 2**20, "bits_per_weight": 32.0, "ppl": 10.0, "ppl_change": 0.0,
            "kl_mean": 0.0, "kl_p99": 0.0, "same_experts": 1.0}
    fp = {**base, "config": "fp32", "decode_b1": 10.0, "decode_b16": 40.0}
    bench.report(fp, fp)
    bench.report({**base, "config": "bf16 autocast", "bits_per_weight": 16.0}, fp)
    out = capsys.readouterr().out.splitlines()
    assert "b1 10.0 tok/s (1.00x)" in out[0] and "same experts 100.0%" in out[0]
    assert out[1].endswith("speed not measured") and "bf16 autocast" in out[1]
