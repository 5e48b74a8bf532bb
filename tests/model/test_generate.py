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
