"""bench/moe_layer.py compares like with like: with the weights it copies, Hugging Face's
DeepseekV3MoE (eager experts) computes exactly lightseek's topk MoE layer, forward and backward."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason='bench/moe_layer.py needs transformers: pip install "lightseek[bench]"')

BENCH_FILE = Path(__file__).resolve().parents[2] / "bench" / "moe_layer.py"
DIM, EXPERTS, WIDTH, TOKENS = 32, 8, 16, 64


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_moe_layer", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    try:
        module.hf_moe_class()
    except ImportError as e:
        pytest.skip(str(e))
    # Tiny ops: a second thread adds nothing, and on a busy machine its OpenMP barriers cost
    # tens of milliseconds per op.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dispatch", ["reference", "auto"])
@pytest.mark.parametrize("k", [2, 3])
def test_hf_deepseek_v3_moe_matches_our_topk_layer(bench, k, dispatch):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, TOKENS // 2, DIM, generator=gen)   # (B, T, D)
    g = torch.randn(x.shape, generator=gen)
    ours = bench.build_ours(DIM, EXPERTS, WIDTH, "topk", k, seed=0)
    ours.set_dispatch(dispatch)
    hf = bench.build_hf(ours, "eager")
    with torch.no_grad():
        assert ours.router(x).expert_ids_TK.unique().numel() >= EXPERTS - 1  # routing is not degenerate
    ours.router.reset_stats()

    y_ours, dx_ours = bench.forward_and_grads(ours, x, g)
    y_hf, dx_hf = bench.forward_and_grads(hf, x, g)
    assert_close_scaled(y_hf, y_ours, "output")
    assert_close_scaled(dx_hf, dx_ours, "input gradient")
    ours_grads = dict(ours.named_parameters())
    for name, grad in bench.hf_grads_as_ours(hf).items():
        assert_close_scaled(grad, ours_grads[name].grad, f"{name} gradient")


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """The bench's rtol, and an atol relative to the tensor's scale: at this size the outputs are
    ~1e-3, where the bench's absolute 1e-5 would let a swapped gate and up projection pass."""
    atol = 1e-4 * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol, msg=lambda m: f"{what}: {m}")
