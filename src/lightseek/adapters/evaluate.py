"""`lightseek lora eval`: domain and general perplexity of a base model with and without adapters.

Domain perplexity is over the assistant tokens of the validation conversations of instruction
files (split exactly as the adapter's training split them); general perplexity is over plain
text (files or folders), read as consecutive windows.
"""

from __future__ import annotations

from pathlib import Path

from lightseek.adapters.finetune import encode_examples, split_examples
from lightseek.adapters.lora import use_adapters
from lightseek.adapters.store import base_fingerprint, load_adapter, read_adapter_meta
from lightseek.data.corpus import RECORD_SUFFIXES, expand_paths
from lightseek.data.instruct import load_instructions
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import ConfigError
from lightseek.eval.perplexity import evaluate
from lightseek.eval.run import parse_corpora, text_tokens, token_windows
from lightseek.model.checkpoint import TOKENIZER, load_model, resolve_checkpoint


def instruction_batches(files, tokenizer: Tokenizer, seq_len: int, batch_size: int, val_fraction: float,
                        seed: int, split: str = "val", text_field: str = "text"):
    """A function giving (inputs, targets) batches over one split of instruction files."""
    data = load_instructions(list(expand_paths(files, suffixes=RECORD_SUFFIXES)))
    train, val = split_examples(data.examples, val_fraction, seed, text_field)
    chosen = {"val": val, "train": train, "all": data.examples}[split]
    if not chosen:
        raise ConfigError(f"no {split} examples in {', '.join(map(str, files))}")
    enc = encode_examples(chosen, tokenizer, seq_len + 1)

    def batches():
        for i in range(0, len(enc), batch_size):
            yield enc.batch(list(range(i, min(i + batch_size, len(enc)))), tokenizer.pad_id)

    return batches, len(enc)


def text_batches(paths, tokenizer: Tokenizer, seq_len: int, batch_size: int, text_field: str = "text"):
    tokens = text_tokens(paths, tokenizer, text_field)
    return lambda: token_windows(tokens, batch_size, seq_len), len(tokens)


def evaluate_adapters(base: str | Path, adapters: list[str | Path], domain: list[str] | None = None,
                      general: list[str] | None = None, seq_len: int | None = None, batch_size: int = 16,
                      split: str = "val", text_field: str = "text", device: str = "cpu") -> dict:
    """Perplexity of the base model and of each adapter on its domain data and on general text.

    ``domain``: instruction files (default: each adapter's own training files); their split uses
    the adapter's recorded val_fraction and seed. ``general``: ``[NAME=]PATH`` text corpora."""
    base_dir = resolve_checkpoint(base)
    tokenizer = Tokenizer.load(base_dir / TOKENIZER)
    model = load_model(base_dir, device)
    seq_len = seq_len or model.cfg.max_seq_len
    sha = base_fingerprint(base_dir)["sha256"]
    infos = []
    for i, a in enumerate(adapters):  # two adapters may share a name: the later ones get a suffix
        own = read_adapter_meta(a)["name"]
        infos.append(load_adapter(model, a, sha, name=own if all(x.name != own for x in infos) else f"{own}-{i}"))
    corpora = {}
    for name, path in parse_corpora(general or []).items():
        corpora[name] = text_batches([path], tokenizer, seq_len, batch_size, text_field)
    variants = [None] + [i.name for i in infos]
    result: dict = {"base": str(base_dir), "rows": []}
    domain_sets = {}
    for info in infos:
        d = info.meta.get("data", {})
        files = domain or d.get("files")
        if not files:
            raise ConfigError(f"adapter {info.path} records no training files; pass --data")
        domain_sets[info.name] = instruction_batches(files, tokenizer, seq_len, batch_size,
                                                     d.get("val_fraction", 0.1), d.get("split_seed", 0), split,
                                                     d.get("split_text_field", "text"))
    for variant in variants:
        row = {"model": variant or "base"}
        with use_adapters(model, variant):
            for dname, (batches, n) in domain_sets.items():
                row[f"domain:{dname}"] = evaluate(model, batches(), device, pad_id=tokenizer.pad_id)["ppl"]
            for cname, (batches, n) in corpora.items():
                row[f"general:{cname}"] = evaluate(model, batches(), device)["ppl"]
        result["rows"].append(row)
    result["text"] = format_table(result["rows"])
    return result


def format_table(rows: list[dict]) -> str:
    cols = [k for k in rows[0] if k != "model"]
    lines = [f"{'model':16}" + "".join(f"{c:>22}" for c in cols)]
    for r in rows:
        lines.append(f"{r['model']:16}" + "".join(f"{r[c]:>22.3f}" for c in cols))
    base = rows[0]
    for r in rows[1:]:
        changes = ", ".join(f"{c} {100 * (r[c] / base[c] - 1):+.1f}%" for c in cols)
        lines.append(f"{r['model']} vs base: {changes}")
    return "\n".join(lines)
