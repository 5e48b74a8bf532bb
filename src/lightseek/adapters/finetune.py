"""Supervised fine-tuning on instruction data: LoRA adapters (`lightseek lora train`) and full
fine-tuning (`lightseek sft`), both through the pretraining loop (`train.loop.fit`).

Conversations are tokenised with the one chat template; only assistant tokens are learned.
Each example is one row (truncated to ``train.seq_len + 1`` tokens, padded at the end), and
batches come from (seed, step) alone: step s reads positions s * rows ... of an endless stream
of epochs, each epoch a seeded permutation of the training examples, so resume is exact.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from lightseek.adapters.lora import (
    LoraConfig,
    apply_lora,
    base_parameters,
    format_report,
    store_frozen,
    use_adapters,
)
from lightseek.config import build, deep_merge, field, to_dict
from lightseek.data.chat import encode_chat
from lightseek.data.instruct import Example, InstructionData, load_instructions
from lightseek.data.shards import split_of
from lightseek.data.tokenizer import Tokenizer
from lightseek.errors import ConfigError, DataError
from lightseek.fileio import atomic_write_text
from lightseek.model.checkpoint import (
    TOKENIZER,
    load_model,
    read_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
)
from lightseek.train.config import TrainConfig

Mode = Literal["lora", "full"]
# What a resumed fine-tuning run must share with the run it continues.
RESUME_KEYS = ("base", "lora", "data.files", "data.val_fraction", "data.split_seed", "data.skip_bad",
               "data.max_examples", "data.replay", "data.replay_fraction", "data.replay_kl", "train.seed", "train.batch_size", "train.seq_len", "train.grad_accum",
               "train.steps", "train.lr", "train.warmup_steps", "train.min_lr_ratio")


@dataclass
class SftDataConfig:
    files: list[str] = field(default_factory=list, help=(
        "Instruction files or folders (.jsonl, .json, .csv; alpaca, sharegpt, messages or question/answer records)."))
    val_fraction: float = field(0.1, help=(
        "Share of examples held out for validation (use the base run's data.val_fraction or less)."))
    split_seed: int = field(-1, help="Seed of the train/validation split (-1 = the base run's seed).")
    skip_bad: bool = field(False, help="Skip malformed records (and count them) instead of stopping.")
    domain: str = field("", help="Domain label recorded with the adapter (medical, finance, ...).")
    max_examples: int = field(0, help="Use at most this many training examples (0 = all).")
    replay: str = field("base", help=(
        "Token shards replayed against forgetting: 'base' (the base run's training data) or a prepared folder."))
    replay_fraction: float = field(0.0, help="Share of each batch's rows drawn from `replay` (0 = off).")
    replay_kl: float = field(0.0, help=(
        "On replayed rows, the weight w of a KL tie to the base model: (1 - w) * next-token + w * KL(base || model). "
        "The base is the same model with the adapter off (LoRA) or a frozen copy (full fine-tuning); 0 = off. "
        "Needs replay_fraction > 0."))

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ConfigError(f"data.replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if not 0.0 <= self.replay_kl <= 1.0:
            raise ConfigError(f"data.replay_kl must be in [0, 1], got {self.replay_kl}")
        if self.replay_kl > 0 and self.replay_fraction == 0:
            raise ConfigError("data.replay_kl ties replayed rows to the base: set data.replay_fraction > 0 too")


def _finetune_train_defaults() -> TrainConfig:
    return TrainConfig(steps=300, batch_size=16, seq_len=256, lr=2e-3, warmup_steps=20, weight_decay=0.0,
                       eval_every=100, eval_batches=0, ckpt_every=100, plots=True)


@dataclass
class FinetuneConfig:
    base: str = field("", help="Base checkpoint (a checkpoint folder or a run folder).")
    name: str = field("", help="Adapter (or fine-tuned model) name.")
    out_dir: str = field("", help="Run folder (default runs/adapters/NAME, or runs/sft/NAME for full fine-tuning).")
    lora: LoraConfig = field(default_factory=LoraConfig, help="Adapter shape (LoRA mode).")
    data: SftDataConfig = field(default_factory=SftDataConfig, help="Instruction data.")
    train: TrainConfig = field(default_factory=_finetune_train_defaults, help="Optimisation and schedule.")
    frozen_dtype: Literal["fp32", "bf16"] = field("fp32", help=(
        "LoRA mode: the dtype the frozen base weights are held in while the adapter trains. 'bf16' "
        "halves their memory; products still compute in fp32 (each weight upcast for its product), so "
        "the adapter trains against the base's weights rounded to bf16."))
    freeze: list[str] = field(default_factory=list, help=(
        "Full fine-tuning: parameters kept frozen, by name prefix or pattern, e.g. [embed, '*.attn.*'] "
        "(see `lightseek info`)."))


def load_finetune_config(config_path: str | Path | None = None, overrides: list[str] | None = None,
                         base: dict | None = None) -> FinetuneConfig:
    """Fine-tuning's training defaults <- ``base`` <- YAML file <- dotted overrides."""
    return build(FinetuneConfig, config_path, overrides,
                 base=deep_merge({"train": to_dict(_finetune_train_defaults())}, base or {}))


# --- data ------------------------------------------------------------------------------------
@dataclass
class EncodedSet:
    """Tokenised conversations: ids and learn-masks, truncated to ``max_len`` tokens."""

    ids: list[np.ndarray]
    masks: list[np.ndarray]
    truncated: int
    dropped: int  # nothing left to learn after truncation

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def learned_tokens(self) -> int:
        return int(sum(m[1:].sum() for m in self.masks))

    def batch(self, indices, pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for the examples at ``indices``, padded to the longest (or to
        ``width``); targets are -100 where nothing is learned (prompt, template, padding)."""
        width = width or max(len(self.ids[i]) for i in indices) - 1
        x = torch.full((len(indices), width), pad_id, dtype=torch.long)
        y = torch.full((len(indices), width), -100, dtype=torch.long)
        for row, i in enumerate(indices):
            ids, mask = self.ids[i], self.masks[i]
            n = len(ids) - 1
            x[row, :n] = torch.from_numpy(ids[:-1])
            y[row, :n] = torch.from_numpy(np.where(mask[1:], ids[1:], -100))
        return x, y


def encode_examples(examples: list[Example], tokenizer: Tokenizer, max_len: int) -> EncodedSet:
    ids_out, masks_out, truncated, dropped = [], [], 0, 0
    for ex in examples:
        ids, mask = encode_chat(tokenizer, ex.messages)
        if len(ids) > max_len:
            ids, mask = ids[:max_len], mask[:max_len]
            truncated += 1
        if not any(mask[1:]):
            dropped += 1
            continue
        ids_out.append(np.asarray(ids, dtype=np.int64))
        masks_out.append(np.asarray(mask, dtype=bool))
    return EncodedSet(ids_out, masks_out, truncated, dropped)


def split_examples(examples: list[Example], val_fraction: float, seed: int,
                   text_field: str = "text") -> tuple[list[Example], list[Example]]:
    """Train and validation examples by the project's split rule (`data.shards.split_of`),
    keyed by the text pretraining reads from each record with ``text_field``."""
    train, val = [], []
    for ex in examples:
        (val if split_of(ex.split_key(text_field), val_fraction, seed) == "val" else train).append(ex)
    return train, val


def epoch_indices(n: int, rows: int, seed: int, step: int) -> list[int]:
    """Example indices of optimizer step ``step``: positions step * rows ... of an endless
    stream of seeded per-epoch permutations of range(n)."""
    out, pos = [], step * rows
    perms: dict[int, np.ndarray] = {}
    for p in range(pos, pos + rows):
        epoch = p // n
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(perms[epoch][p % n]))
    return out


@dataclass
class SftData:
    data: InstructionData
    train: EncodedSet
    val: EncodedSet
    split_seed: int
    files_sha256: str

    def describe(self) -> str:
        d = self.data
        fmts = ", ".join(f"{v} {k}" for k, v in sorted(d.formats.items()))
        text = (f"{len(d.examples):,} conversations ({fmts}): {len(self.train):,} train, {len(self.val):,} "
                f"validation; {self.train.learned_tokens:,} assistant tokens to learn")
        if self.train.truncated + self.val.truncated:
            text += f"; {self.train.truncated + self.val.truncated} truncated"
        if self.train.dropped + self.val.dropped:
            text += f"; {self.train.dropped + self.val.dropped} dropped (no reply left after truncation)"
        if d.skipped:
            text += f"; {d.skipped} malformed records skipped (first: {d.problems[0]})"
        return text


def prepare_sft_data(dc: SftDataConfig, tokenizer: Tokenizer, seq_len: int, split_seed: int,
                     text_field: str = "text") -> SftData:
    from lightseek.adapters.store import files_sha256
    from lightseek.data.corpus import RECORD_SUFFIXES, expand_paths

    if not dc.files:
        raise ConfigError("no instruction data given (pass --data FILE or set data.files)")
    files = list(expand_paths(dc.files, suffixes=RECORD_SUFFIXES))
    data = load_instructions(files, skip_bad=dc.skip_bad)
    train, val = split_examples(data.examples, dc.val_fraction, split_seed, text_field)
    if not train or not val:
        raise DataError(f"{len(data.examples)} examples give {len(train)} for training and {len(val)} for "
                        f"validation: both must be non-empty (adjust data.val_fraction)")
    if dc.max_examples:
        train = train[:dc.max_examples]
    enc_train, enc_val = encode_examples(train, tokenizer, seq_len + 1), encode_examples(val, tokenizer, seq_len + 1)
    if not len(enc_train) or not len(enc_val):
        raise DataError("no example has an assistant reply within train.seq_len tokens")
    return SftData(data, enc_train, enc_val, split_seed, files_sha256(files))


# --- the command -------------------------------------------------------------------------------
def finetune(cfg: FinetuneConfig, mode: Mode, resume: bool = False, show_progress: bool = True,
             console=None) -> dict:
    """Train a LoRA adapter (mode "lora") or the whole model ("full") on instruction data."""
    from lightseek.adapters import store
    from lightseek.train.loop import Job, check_run_folder, fit, restore
    from lightseek.train.optim import build_optimizer, freeze_parameters
    from lightseek.train.parallel import autocast_dtype, init_distributed, resolve_device, shutdown

    say = (lambda text: console.print(text, soft_wrap=True, highlight=False)) if console is not None else (lambda text: None)
    if not cfg.base:
        raise ConfigError("no base checkpoint given (pass --base CKPT)")
    if not cfg.name:
        raise ConfigError("no name given (pass --name NAME)")
    if mode == "lora":
        from lightseek.adapters.lora import check_name

        check_name(cfg.name)
    elif cfg.frozen_dtype != "fp32":
        raise ConfigError("frozen_dtype applies to LoRA mode (full fine-tuning trains every weight)")
    tc = cfg.train
    out = Path(cfg.out_dir or (Path("runs") / ("adapters" if mode == "lora" else "sft") / cfg.name))
    cfg.out_dir = str(out)
    save_dir = out / ("adapter" if mode == "lora" else "checkpoint")
    check_run_folder(out, save_dir, resume, cfg, RESUME_KEYS, ("config.yaml", "metrics.jsonl", "checkpoint", "adapter"))

    base_dir = resolve_checkpoint(cfg.base)
    base_run = read_checkpoint_config(base_dir).get("run", {})
    split_seed = cfg.data.split_seed if cfg.data.split_seed >= 0 else int(base_run.get("train", {}).get("seed", tc.seed))
    base_val = base_run.get("data", {}).get("val_fraction")
    if isinstance(base_val, float) and cfg.data.val_fraction > base_val:
        say(f"[yellow]note:[/] data.val_fraction {cfg.data.val_fraction} exceeds the base run's {base_val}: "
            f"some validation conversations may have been seen in pretraining")
    tokenizer = Tokenizer.load(base_dir / TOKENIZER)
    d = init_distributed(tc.device)
    try:
        device = resolve_device(tc.device, d)
        amp = autocast_dtype(tc.dtype, device)
        model = load_model(base_dir, device)
        if tc.seq_len > model.cfg.max_seq_len:
            raise ConfigError(f"train.seq_len ({tc.seq_len}) exceeds the base model's max_seq_len "
                              f"({model.cfg.max_seq_len})")
        model.set_dispatch(tc.dispatch)
        model.grad_checkpoint = tc.grad_checkpoint
        text_field = str(base_run.get("data", {}).get("text_field", "text"))
        sft = prepare_sft_data(cfg.data, tokenizer, tc.seq_len, split_seed, text_field)
        say(f"data: {sft.describe()}")
        fingerprint = store.base_fingerprint(base_dir)
        fingerprint["model"] = model.cfg.to_dict()
        total = base_parameters(model)
        torch.manual_seed(tc.seed)
        report = []
        if mode == "lora":
            report = apply_lora(model, cfg.lora, cfg.name)
            say(format_report(report, total))
            if cfg.frozen_dtype == "bf16":
                saved = store_frozen(model, torch.bfloat16)
                say(f"frozen base weights held in bf16: {saved / 2**20:,.0f} MB less")
        elif cfg.freeze:
            freeze_parameters(model, cfg.freeze)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        opt = build_optimizer(model, tc)
        start, tokens_seen = 0, 0
        if resume:
            if mode == "lora":
                from safetensors.torch import load_file

                from lightseek.adapters.lora import load_adapter_state

                state = store.load_train_state(save_dir)
                load_adapter_state(model, cfg.name, load_file(str(save_dir / store.PEFT_WEIGHTS), device=str(device)),
                                   str(save_dir))
            else:
                state = None  # restore loads the whole checkpoint
            start, tokens_seen = restore(model, opt, save_dir, tc.steps, state)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
        rows = tc.batch_size * tc.grad_accum
        replay = _replay_shards(cfg.data, base_run, tokenizer, say)
        n_replay = round(rows * d.world * cfg.data.replay_fraction) if replay is not None else 0
        if replay is not None and not 0 < n_replay < rows * d.world:
            raise ConfigError(f"data.replay_fraction {cfg.data.replay_fraction} of {rows * d.world} rows per step "
                              f"makes {n_replay} replayed rows: choose a share that leaves some of each kind")
        replayed: list[bool] = []  # which rows of this step are replayed windows

        def train_rows(step: int):
            idx = epoch_indices(len(sft.train), rows * d.world - n_replay, tc.seed, step)
            if not n_replay:
                return sft.train.batch(idx[d.rank * rows:(d.rank + 1) * rows], tokenizer.pad_id)
            # replayed pretraining windows, spread over the rows so every micro-batch has some
            x, y = sft.train.batch(idx, tokenizer.pad_id, width=tc.seq_len)
            w = replay.sample_batch(n_replay, tc.seq_len, tc.seed + 1, step)
            x, y = torch.cat([x, w[:, :-1]]), torch.cat([y, w[:, 1:]])
            order = torch.from_numpy(np.random.default_rng([tc.seed, step]).permutation(len(x)))
            mine = order[d.rank * rows:(d.rank + 1) * rows]
            replayed[:] = (mine >= len(idx)).tolist()
            return x[mine], y[mine]

        objective = None
        if n_replay and cfg.data.replay_kl > 0:
            objective = _replay_tie(model, mode, base_dir, device, tc.dispatch, cfg.data.replay_kl, replayed)
            say(f"replay: KL tie to the base model on replayed rows, weight {cfg.data.replay_kl}")

        def val_batches():
            n = len(sft.val)
            limit = tc.eval_batches * tc.batch_size if tc.eval_batches else n
            for i in range(0, min(n, limit), tc.batch_size):
                yield sft.val.batch(list(range(i, min(i + tc.batch_size, n))), tokenizer.pad_id)

        meta = {"domain": cfg.data.domain, "base": fingerprint,
                "data": {"files": [str(f) for f in cfg.data.files], "sha256": sft.files_sha256,
                         "train_examples": len(sft.train), "val_examples": len(sft.val),
                         "val_fraction": cfg.data.val_fraction, "split_seed": split_seed,
                         "split_text_field": text_field,
                         "replay": str(replay.directory) if replay is not None else "",
                         "replay_fraction": cfg.data.replay_fraction if replay is not None else 0.0,
                         "replay_kl": cfg.data.replay_kl if objective is not None else 0.0},
                "trainable_parameters": trainable, "model_parameters": total}

        def save(step: int, tokens: int, optimizer, last_eval: dict) -> None:
            state = {"step": step, "tokens_seen": tokens, "optimizer": optimizer.state_dict(),
                     "rng": torch.get_rng_state()}
            if mode == "lora":
                final = {}  # the last step is evaluated before it is saved: record it with the adapter
                if step == tc.steps and last_eval:
                    final = {"metrics": {"val_loss": last_eval["loss"], "val_ppl": last_eval["ppl"], "steps": step,
                                         "tokens_seen": tokens}}
                store.save_adapter(save_dir, model, cfg.name, cfg.lora, {**meta, "step": step, **final},
                                   train_state=state)
            else:
                save_checkpoint(save_dir, model, tokenizer_file=base_dir / TOKENIZER,
                                run_config=base_run, train_state=state,
                                extra={"step": step, "finetune": {**meta, "config": to_dict(cfg)}})

        job = Job(model, opt, train_rows, val_batches, save, start, tokens_seen, pad_id=tokenizer.pad_id,
                  objective=objective)
        with use_adapters(model, cfg.name) if mode == "lora" else contextlib.nullcontext():
            summary = fit(job, tc, out, d, device, amp, show_progress, resumed=resume)
        summary.update({"mode": mode, "trainable_parameters": trainable, "model_parameters": total,
                        "adapted_modules": len(report), "saved": str(save_dir)})
        return summary
    finally:
        shutdown(d)


def _replay_tie(model, mode: Mode, base_dir: Path, device, dispatch: str, weight: float, replayed: list[bool]):
    """The training objective with a KL tie to the base model on replayed rows (the rows that
    ``replayed`` marks in the current step): there the model learns
    ``(1 - weight) * next-token + weight * KL(base || model)``, elsewhere the next-token loss.
    A LoRA run's base is the model itself with the adapter off, so the tie costs a forward pass
    and no second copy of the weights; full fine-tuning keeps a frozen copy of the base."""
    from lightseek.distill.kd import KdConfig, kd_loss

    kd = KdConfig(ce_weight=1.0 - weight)
    if mode == "lora":
        def base_logits(x):
            was_training = model.training
            model.eval()  # the base as it serves: no auxiliary losses written onto the layers
            try:
                with use_adapters(model, None), _routing_stats_kept(model):
                    return model(x).logits
            finally:
                model.train(was_training)
    else:
        base = load_model(base_dir, device).eval().requires_grad_(False)
        base.set_dispatch(dispatch)

        def base_logits(x):
            return base(x).logits

    def objective(result, x, y, micro: slice):
        rows = torch.tensor(replayed[micro], dtype=torch.bool, device=x.device)
        if not rows.any():
            return result.loss
        teacher = torch.zeros_like(result.logits)
        with torch.no_grad():
            teacher[rows] = base_logits(x[rows]).to(teacher.dtype)
        return kd_loss(result.logits, teacher, y, kd, rows)

    return objective


@contextlib.contextmanager
def _routing_stats_kept(model):
    """Leave the routers' accumulated statistics (which drive balancing) as they were: a
    forward pass of the base model inside a training step must not count as the step's load."""
    routers = [m.router for m in model.moe_layers()]
    saved = [(r.load_E, r.stat_sums) for r in routers]  # new tensors: what they are now
    try:
        yield
    finally:
        for r, (load, sums) in zip(routers, saved):
            r.restore_stats(load, sums)


def _replay_shards(dc: SftDataConfig, base_run: dict, tokenizer: Tokenizer, say):
    """The training split of the replay shards (made with the base model's tokenizer), or None."""
    if dc.replay_fraction <= 0:
        return None
    from lightseek.data.shards import TokenShards

    folder = base_run.get("data", {}).get("prepared", "") if dc.replay == "base" else dc.replay
    if not folder or not (Path(folder) / "manifest.json").exists():
        raise ConfigError(f"data.replay: no prepared token shards at {folder or '(the base run records none)'}; "
                          f"pass --data.replay=DIR (a `lightseek data prepare` folder) or --data.replay_fraction=0")
    shards = TokenShards(folder, "train")
    if shards.manifest["tokenizer"]["sha256"] != tokenizer.sha256:
        raise ConfigError(f"data.replay: {folder} was tokenized with another tokenizer than the base model's")
    say(f"replay: {dc.replay_fraction:.0%} of each batch from {folder}")
    return shards
