"""Multiple-choice scoring and bits per byte on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from lightseek.errors import DataError
from lightseek.eval.tasks import choice_logprobs, load_tasks, prompt_of, score_tasks


@pytest.fixture(scope="module")
def debug_model():
    from lightseek.model.config import preset
    from lightseek.model.transformer import Transformer

    torch.manual_seed(0)
    return Transformer(preset("debug", vocab_size=128, router_mode="dense")).eval()


class _Tok:
    """Characters as tokens: enough to check which positions are scored."""
    pad_id = 0

    def encode(self, text):
        return [min(ord(c), 127) for c in text]


def test_choice_logprobs_score_the_choice_tokens_only(debug_model) -> None:
    model = debug_model.eval()
    tok = _Tok()
    item = {"question": "2+2?", "choices": ["4", "five"], "answer": 0}
    got = choice_logprobs(model, tok, item)
    for choice, lp in zip(item["choices"], got):
        ids = tok.encode(prompt_of(item)) + tok.encode(" " + choice)
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits.log_softmax(-1)[0]
        n = len(choice) + 1
        want = sum(float(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]]) for j in range(n))
        assert abs(lp - want) < 1e-4


def test_score_tasks_counts_right_answers(debug_model) -> None:
    tok = _Tok()
    items = [{"question": "q", "choices": ["a", "b"], "answer": 0}, {"question": "q", "choices": ["a", "b"], "answer": 1}]
    r = score_tasks(debug_model, tok, items)
    assert r["items"] == 2 and r["acc"] == 0.5 and r["chance"] == 0.5  # one of two is right whichever it picks


def test_load_tasks_names_the_bad_line(tmp_path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "b"}) + "\n{broken\n")
    with pytest.raises(DataError, match="t.jsonl:2: not JSON"):
        load_tasks(f)
    f.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}) + "\n")
    with pytest.raises(DataError, match="t.jsonl:1: 'answer'"):
        load_tasks(f)
    f.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "b"}) + "\n")
    assert load_tasks(f)[0]["answer"] == 1


def test_bits_per_byte_counts_scored_target_bytes() -> None:
    from lightseek.eval.run import ByteCounter

    class Tok:
        vocab_size = 4

        def is_special(self, i):
            return i == 0

        def token_bytes(self, i):
            return b"x" * i

    counter = ByteCounter(Tok())
    batches = [torch.tensor([[0, 1, 2, 3]]), (torch.tensor([[1, 2]]), torch.tensor([[3, -100]]))]
    assert len(list(counter.wrap(batches))) == 2
    assert counter.bytes == (1 + 2 + 3) + 3
    assert abs(counter.bits_per_byte(2.0, 4) - 2.0 * 4 / (0.6931471805599453 * 9)) < 1e-12
