"""Batched per-row sampling (the serving engine's draw)."""

from __future__ import annotations

import torch


def test_sample_rows_follows_the_filtered_distribution() -> None:
    """The batched inverse-CDF draw: frequencies match softmax, top-p cuts the tail, greedy rows
    take the argmax, and each row's draw depends only on its own generator."""
    from lightseek.model.generate import sample_rows
    from lightseek.model.sampling import SamplingParams

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    n = 8000
    counts = torch.zeros(4)
    for _ in range(n):
        counts[sample_rows(logits, [SamplingParams(temperature=1.0, top_p=1.0)], [g])[0]] += 1
    assert torch.allclose(counts / n, logits.softmax(-1)[0], atol=0.015)
    cut = {sample_rows(logits, [SamplingParams(temperature=1.0, top_p=0.7)], [g])[0] for _ in range(500)}
    assert cut == {0, 1}  # p = 0.64, 0.24, ...: the smallest set reaching 0.7 is the first two
    two = torch.tensor([[0.0, 5.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    picks = sample_rows(two, [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_p=1.0)],
                        [None, torch.Generator().manual_seed(3)])
    alone = sample_rows(two[1:], [SamplingParams(temperature=1.0, top_p=1.0)], [torch.Generator().manual_seed(3)])
    assert picks == [1, alone[0]]


def test_two_level_draw_equals_the_flat_inverse_cdf() -> None:
    """`inverse_cdf` (block sums, then one block's cumulative sum) picks the same token as a
    full-vocabulary cumulative sum, including a vocabulary that is not a multiple of the block,
    and never a token of zero probability, even at u = 0 and u just below 1."""
    from lightseek.model.generate import inverse_cdf

    g = torch.Generator().manual_seed(1)
    probs = torch.rand(3, 300, generator=g) ** 4
    probs[:, 128:256] = 0          # a whole empty block
    probs[2, 280:] = 0             # an empty tail in the padded last block
    probs = probs / probs.sum(-1, keepdim=True)
    u = torch.rand(200, generator=g)
    u[0], u[1] = 0.0, 1 - 2 ** -24
    for row in range(3):
        p = probs[row].expand(len(u), -1).contiguous()
        picks = inverse_cdf(p, u, block=128)
        flat = torch.searchsorted(p.double().cumsum(-1), (u.double() * p.double().sum(-1))[:, None], right=True)[:, 0]
        assert (probs[row][picks] > 0).all()
        assert (picks == flat.clamp_max(299)).float().mean() > 0.98  # float rounding may move a tie


def test_sampled_rows_respect_top_k_over_many_blocks() -> None:
    from lightseek.model.generate import sample_rows
    from lightseek.model.sampling import SamplingParams

    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(2))
    top5 = set(logits[0].topk(5).indices.tolist())
    g = torch.Generator().manual_seed(0)
    seen = {sample_rows(logits, [SamplingParams(temperature=1.5, top_k=5), SamplingParams(temperature=1.0)],
                        [g, None])[0] for _ in range(300)}
    assert seen <= top5 and len(seen) >= 3
