"""`lightseek eval`: loss, perplexity and routing statistics of a checkpoint on a corpus."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lightseek.errors import DataError
from lightseek.eval.perplexity import evaluate
from lightseek.eval.routing import format_by_corpus, format_routing, load_shares, plot_by_corpus, specialisation
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


def eval_batches(checkpoint: Path, tokenizer, cfg: RunConfig, data, split: str,
                 seq_len: int) -> Iterator[torch.Tensor]:
    from lightseek.data.shards import TokenShards

    limit = cfg.train.eval_batches or None
    if not data:  # the run's own prepared data (cfg starts from the checkpoint's run config)
        candidates = [cfg.data.prepared, str(checkpoint.parent / "data")]
        found = [c for c in candidates if c and (Path(c) / "manifest.json").exists()]
        if not found:
            raise DataError(f"checkpoint {checkpoint}: its training data ({candidates[0] or 'unknown'}) "
                            f"is not here; pass --data")
        data = found[:1]
    data = list(data)
    if len(data) == 1 and (Path(data[0]) / "manifest.json").exists():
        shards = TokenShards(data[0], split)
        if shards.manifest["tokenizer"]["sha256"] != tokenizer.sha256:
            raise DataError(f"{data[0]} was tokenized with another tokenizer than checkpoint {checkpoint}'s "
                            f"tokenizer.json; prepare it again with --tokenizer {checkpoint / 'tokenizer.json'}")
        return shards.iter_sequential(cfg.train.batch_size, seq_len, limit)
    return token_windows(text_tokens(data, tokenizer, cfg.data.text_field), cfg.train.batch_size, seq_len, limit)


def text_tokens(paths, tokenizer, text_field: str = "text") -> np.ndarray:
    """The documents of ``paths`` as one token stream, each followed by end-of-text."""
    from lightseek.data.corpus import iter_documents

    ids: list[int] = []
    for doc in iter_documents(paths, text_field=text_field):
        ids += tokenizer.encode(doc.text) + [tokenizer.eot_id]
    if not ids:
        raise DataError(f"corpus is empty: {', '.join(map(str, paths))}")
    return np.asarray(ids, dtype=np.int64)


class ByteCounter:
    """Counts the UTF-8 bytes of the scored target tokens, for bits per byte: a measure that,
    unlike perplexity, compares models with different tokenizers. Special tokens count 0 bytes."""

    def __init__(self, tokenizer) -> None:
        self.lengths = torch.tensor([0 if tokenizer.is_special(i) else len(tokenizer.token_bytes(i))
                                     for i in range(tokenizer.vocab_size)])
        self.bytes = 0

    def wrap(self, batches):
        for batch in batches:
            y = batch[:, 1:] if isinstance(batch, torch.Tensor) else batch[1]
            self.bytes += int(self.lengths[y.clamp_min(0)][y != -100].sum())
            yield batch

    def bits_per_byte(self, loss: float, tokens: int) -> float:
        return loss * tokens / (math.log(2) * self.bytes) if self.bytes else float("nan")


def parse_corpora(data: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the file or folder) -> {name: path}."""
    corpora: dict[str, str] = {}
    for item in data:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem or item, item
        if name in corpora:
            raise DataError(f"--data: corpus name '{name}' given twice (name them NAME=PATH)")
        corpora[name] = path
    return corpora


def run_tasks(checkpoint: str, files: list[str], limit: int | None = None) -> dict:
    """Multiple-choice accuracy of a checkpoint on each task file (see lightseek.eval.tasks)."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.tasks import load_tasks, score_tasks
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.progress import progress

    ckpt = resolve_checkpoint(checkpoint)
    model, tokenizer = load_model(ckpt), Tokenizer.load(ckpt)
    results, lines = {}, []
    for f in files:
        items = load_tasks(f)[:limit]
        with progress(len(items), Path(f).stem) as step:
            r = results[Path(f).stem] = score_tasks(model, tokenizer, items, step)
        lines.append(f"{Path(f).stem:24} items {r['items']:4}  acc {r['acc']:.3f} ±{r['acc_ci95']:.3f}  "
                     f"acc_norm {r['acc_norm']:.3f} ±{r['acc_norm_ci95']:.3f}  chance {r['chance']:.3f}")
    return {"tasks": results, "text": "\n".join(lines)}


def run_eval(checkpoint: str, cfg: RunConfig, data: list[str] | None = None, split: str = "val",
             routing: bool = False, plot: str | None = None, kl_ref: str | None = None) -> dict:
    """One corpus: loss, perplexity, routing (no ``data``: the run's own validation split, found
    through ``cfg.data.prepared`` or beside the checkpoint). Several: each on its own, plus expert
    specialisation across them (table, score, and a heatmap when ``plot`` is given). ``kl_ref``
    (one corpus): also the per-token KL divergence from that checkpoint's predictions."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    model = load_model(ckpt)
    tokenizer = Tokenizer.load(ckpt)
    seq_len = min(cfg.train.seq_len, model.cfg.max_seq_len)
    if kl_ref and data and len(data) > 1:
        raise DataError("--kl-ref compares the models on one corpus; give one --data")
    if data and len(data) > 1:
        corpora = parse_corpora(data)
        results = {name: evaluate(model, eval_batches(ckpt, tokenizer, cfg, [path], split, seq_len))
                   for name, path in corpora.items()}
        layers = [r["layer"] for r in next(iter(results.values()))["routing"]]
        if not layers:
            text = "\n".join(f"{n}: loss {r['loss']:.4f}  perplexity {r['ppl']:.2f}" for n, r in results.items())
            return {"corpora": results, "text": text}
        spec = specialisation({n: load_shares(r["routing"]) for n, r in results.items()})
        text = format_by_corpus(results, spec, layers)
        if plot:
            written = plot_by_corpus(results, spec, layers, plot)
            text += f"\nheatmap: {written}" if written else ""
        return {"corpora": results, "specialisation": spec, "text": text}
    batches = eval_batches(ckpt, tokenizer, cfg, parse_corpora(data).values() if data else None, split, seq_len)
    if kl_ref:
        batches = list(batches)  # both models see the same windows
    counted = ByteCounter(tokenizer)
    result = evaluate(model, counted.wrap(batches))
    result["bits_per_byte"] = counted.bits_per_byte(result["loss"], result["tokens"])
    text = (f"loss {result['loss']:.4f}  perplexity {result['ppl']:.2f}  tokens {result['tokens']:,}  "
            f"bits/byte {result['bits_per_byte']:.4f}")
    if kl_ref:
        from lightseek.eval.kl import format_kl, kl_against

        result["kl"] = kl_against(model, tokenizer, kl_ref, batches)
        text += "\n" + format_kl(result["kl"])
    if "avg_k" in result:
        text += (f"\navg experts/token {result['avg_k']:.2f}  MaxVio {result['max_vio']:.3f}  "
                 f"dead experts {result['dead_experts']}  router entropy {result['entropy']:.3f}")
    if routing and result["routing"]:
        text += "\n" + format_routing(result["routing"])
    result["text"] = text
    return result
