"""Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness scores them.

A task file is JSONL, one item a line: ``{"question": ..., "choices": [...], "answer": i}``
(``answer`` the index of the right choice, or its text), optionally ``"context"`` shown before
the question. Each choice is scored by the model's log-probability of `` {choice}`` after the
prompt; ``acc`` takes the highest sum, ``acc_norm`` the highest sum per byte of the choice
(so long answers are not penalised for their length).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from lightseek.errors import DataError


def prompt_of(item: dict) -> str:
    context = f"{item['context']}\n" if item.get("context") else ""
    return f"{context}Question: {item['question']}\nAnswer:"


def load_tasks(path: str | Path) -> list[dict]:
    """The items of a task file; a malformed line is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file not found: {path}")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        choices = item.get("choices") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not isinstance(choices, list) \
                or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise DataError(f"{path}:{n}: an item needs 'question' (text) and 'choices' (two or more texts)")
        answer = item.get("answer")
        if isinstance(answer, str) and answer in choices:
            answer = choices.index(answer)
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise DataError(f"{path}:{n}: 'answer' must be a choice's index (0..{len(choices) - 1}) or its text")
        items.append({**item, "answer": answer})
    if not items:
        raise DataError(f"task file {path} has no items")
    return items


@torch.inference_mode()
def choice_logprobs(model, tokenizer, item: dict) -> list[float]:
    """Summed log-probability of each choice's tokens after the item's prompt (one batch)."""
    prompt = tokenizer.encode(prompt_of(item))
    conts = [tokenizer.encode(" " + c) for c in item["choices"]]
    limit = model.cfg.max_seq_len
    rows = [(prompt + c)[-limit:] for c in conts]
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
    logp = F.log_softmax(model(x).logits.float(), dim=-1)                        # (C, T, V)
    out = []
    for i, (r, c) in enumerate(zip(rows, conts)):
        start = len(r) - len(c)                                                   # first choice token
        targets = torch.tensor(r[start:])
        out.append(float(logp[i, start - 1:len(r) - 1].gather(1, targets[:, None]).sum()))
    return out


def score_tasks(model, tokenizer, items: list[dict], progress_step=None) -> dict:
    """Accuracy and length-normalised accuracy over ``items``, with a 95% interval half-width."""
    was_training = model.training
    model.eval()
    lps = []
    for item in items:
        lps.append(choice_logprobs(model, tokenizer, item))
        if progress_step:
            progress_step(1)
    model.train(was_training)
    return task_metrics(items, lps)


def task_metrics(items: list[dict], lps: list[list[float]]) -> dict:
    """The metrics of `score_tasks` from each item's choice log-probabilities, however computed."""
    correct = correct_norm = 0
    for item, lp in zip(items, lps, strict=True):
        norm = [v / max(1, len(c.encode("utf-8"))) for v, c in zip(lp, item["choices"])]
        correct += int(max(range(len(lp)), key=lp.__getitem__) == item["answer"])
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == item["answer"])
    n = len(items)
    acc, acc_norm = correct / n, correct_norm / n
    chance = sum(1 / len(i["choices"]) for i in items) / n
    return {"items": n, "acc": acc, "acc_norm": acc_norm, "chance": chance,
            "acc_ci95": 1.96 * math.sqrt(acc * (1 - acc) / n), "acc_norm_ci95": 1.96 * math.sqrt(acc_norm * (1 - acc_norm) / n)}
