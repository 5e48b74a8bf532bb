"""`lightseek train`: prepare data if needed, then run the training loop on a RunConfig."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from lightseek.config import to_dict
from lightseek.data.prepare import TOKENIZER_FILE, documents_from, prepare_dataset
from lightseek.data.shards import manifest as read_manifest
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import ConfigError, DataError
from lightseek.fileio import atomic_write_text, recover_dir
from lightseek.train.config import RunConfig
from lightseek.train.loop import run_training


def resolve_data(cfg: RunConfig) -> tuple[Path, Path]:
    """The shard folder and tokenizer file of a run: ``data.prepared``, or one prepared from
    ``data.inputs`` into ``<out_dir>/data`` (reused when it is already there)."""
    if cfg.data.prepared:
        data_dir = Path(cfg.data.prepared)
    else:
        data_dir = Path(cfg.out_dir) / "data"
        if not (data_dir / "manifest.json").exists():
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ConfigError("multi-process training needs prepared data: run `lightseek data "
                                  "prepare` first and pass --data.prepared=DIR")
            tokenizer = Tokenizer.load(cfg.tokenizer.path) if cfg.tokenizer.path else None
            prepare_dataset(documents_from(cfg.data.inputs, cfg.data.text_field), data_dir,
                            tokenizer=tokenizer, vocab_size=cfg.tokenizer.vocab_size,
                            tokenizer_bytes=cfg.tokenizer.train_bytes, max_bytes=cfg.data.max_bytes,
                            val_fraction=cfg.data.val_fraction, seed=cfg.train.seed)
    read_manifest(data_dir)  # clear error if missing or corrupt
    tok = data_dir / TOKENIZER_FILE
    if not tok.is_file():
        raise DataError(f"{data_dir}: no {TOKENIZER_FILE} (prepare it with `lightseek data prepare`)")
    return data_dir, tok


def check_run_dir(cfg: RunConfig, resume: bool) -> None:
    ckpt = Path(cfg.out_dir) / "checkpoint"
    recover_dir(ckpt)  # a save killed mid-swap left the complete copy beside it
    if resume and not ckpt.exists():
        raise ConfigError(f"--resume: no checkpoint in {ckpt}")
    if not resume and ckpt.exists():
        raise ConfigError(f"run folder {cfg.out_dir} already holds a checkpoint; pass --resume to "
                          f"continue it, or choose another --out_dir")


def pretrain(cfg: RunConfig, resume: bool = False, show_progress: bool = True) -> dict:
    check_run_dir(cfg, resume)
    data_dir, tok_file = resolve_data(cfg)
    cfg.data.prepared = str(data_dir.resolve())  # saved with checkpoints: eval finds it from anywhere
    vocab = Tokenizer.load(tok_file).vocab_size
    if cfg.model.vocab_size != vocab:  # the tokenizer decides the vocabulary
        cfg.model = cfg.model.replace(vocab_size=vocab)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return run_training(cfg, data_dir, tok_file, resume=resume, show_progress=show_progress)
