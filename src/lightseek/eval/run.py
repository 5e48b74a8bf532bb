"""`lightseek eval`: loss, perplexity and routing statistics of a checkpoint on a corpus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lightseek.errors import DataError
from lightseek.eval.perplexity import evaluate
from lightseek.train.config import RunConfig


def token_windows(tokens: np.ndarray, batch_size: int, seq_len: int,
                  max_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Non-overlapping (b, seq_len + 1) windows of an in-memory token stream, in order."""
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows == 0:
        raise DataError(f"evaluation text has {len(tokens)} tokens; seq_len {seq_len} needs {seq_len + 1}")
    for b, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        rows = [tokens[k * seq_len:k * seq_len + seq_len + 1] for k in range(first, min(first + batch_size, n_windows))]
        yield torch.from_numpy(np.stack(rows).astype(np.int64))


def eval_batches(checkpoint: Path, tokenizer, cfg: RunConfig, data: list[str] | None, split: str,
                 seq_len: int) -> Iterator[torch.Tensor]:
    from lightseek.data.corpus import iter_documents
    from lightseek.data.shards import TokenShards
    from lightseek.model.checkpoint import read_checkpoint_config

    limit = cfg.train.eval_batches or None
    if not data:  # the run's own prepared data
        run = read_checkpoint_config(checkpoint).get("run", {})
        candidates = [run.get("data", {}).get("prepared", ""), str(checkpoint.parent / "data")]
        found = [c for c in candidates if c and (Path(c) / "manifest.json").exists()]
        if not found:
            raise DataError(f"checkpoint {checkpoint}: its training data ({candidates[0] or 'unknown'}) "
                            f"is not here; pass --data")
        data = found[:1]
    if len(data) == 1 and (Path(data[0]) / "manifest.json").exists():
        return TokenShards(data[0], split).iter_sequential(cfg.train.batch_size, seq_len, limit)
    ids: list[int] = []
    for doc in iter_documents(data, text_field=cfg.data.text_field):
        ids += tokenizer.encode(doc.text) + [tokenizer.eot_id]
    if not ids:
        raise DataError(f"corpus is empty: {', '.join(data)}")
    return token_windows(np.asarray(ids, dtype=np.int64), cfg.train.batch_size, seq_len, limit)


def format_routing(routing: list[dict]) -> str:
    lines = [f"{'layer':>5} {'avg k':>6} {'MaxVio':>7} {'dead':>5} {'entropy':>8}  load share per expert (%)"]
    for r in routing:
        total = sum(r["tokens_per_expert"]) or 1
        share = " ".join(f"{100 * v / total:4.1f}" for v in r["tokens_per_expert"])
        lines.append(f"{r['layer']:>5} {r['avg_k']:>6.2f} {r['max_vio']:>7.3f} {r['dead_experts']:>5} "
                     f"{r['entropy']:>8.3f}  {share}")
    return "\n".join(lines)


def run_eval(checkpoint: str, cfg: RunConfig, data: list[str] | None = None, split: str = "val",
             routing: bool = False) -> dict:
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    model = load_model(ckpt)
    tokenizer = Tokenizer.load(ckpt)
    seq_len = min(cfg.train.seq_len, model.cfg.max_seq_len)
    result = evaluate(model, eval_batches(ckpt, tokenizer, cfg, data, split, seq_len))
    text = f"loss {result['loss']:.4f}  perplexity {result['ppl']:.2f}  tokens {result['tokens']:,}"
    if "avg_k" in result:
        text += (f"\navg experts/token {result['avg_k']:.2f}  MaxVio {result['max_vio']:.3f}  "
                 f"dead experts {result['dead_experts']}  router entropy {result['entropy']:.3f}")
    if routing and result["routing"]:
        text += "\n" + format_routing(result["routing"])
    result["text"] = text
    return result
