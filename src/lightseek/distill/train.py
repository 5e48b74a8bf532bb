"""`lightseek distill train`: a student learns from domain teachers (knowledge distillation).

Each training row comes from one domain's text and is taught by that domain's teacher
(`data.sources` names the domains, `teachers` maps domains to models); rows of a domain
without a teacher learn from the data alone. The student is a checkpoint (``student``) or a
new model of any size (``preset`` + ``model``), dense or MoE, sharing the teachers' tokenizer.
Two directions fall out of that one rule:

- expert -> base: teachers are domain experts, the student a (smaller) base model;
- base -> expert: the student starts from the base and trains on domain text while the base
  teaches the ``general`` rows, a KL tie that keeps it from forgetting general text.

Training goes through the pretraining loop (`train.loop.fit`): progress, metrics, checkpoints,
exact resume. The checkpoint records the teachers' versions and per-domain validation figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from lightseek.config import build, field, to_dict
from lightseek.distill.data import DistillDataConfig, build_streams, domain_weights, sample_rows
from lightseek.distill.kd import KdConfig, TeacherSet, kd_loss
from lightseek.errors import ConfigError
from lightseek.model.config import PRESETS, ModelConfig
from lightseek.train.config import TrainConfig

RESUME_KEYS = ("student", "preset", "model", "teachers", "kd", "freeze", "data.sources", "data.text_field",
               "data.val_fraction", "data.split_seed", "data.weights", "train.seed", "train.batch_size",
               "train.seq_len", "train.grad_accum", "train.steps", "train.lr", "train.warmup_steps",
               "train.min_lr_ratio")


def _distill_train_defaults() -> TrainConfig:
    return TrainConfig(steps=500, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=50,
                       eval_every=100, eval_batches=8, ckpt_every=100, plots=True)


@dataclass
class DistillConfig:
    student: str = field("", help="Student checkpoint to start from (empty: a new model from `preset` + `model`).")
    preset: str = field("tiny", help="A new student's model preset (see `lightseek info --preset NAME`).")
    model: dict[str, Any] = field(default_factory=dict, help=(
        "A new student's model fields over the preset (vocab_size always follows the tokenizer)."))
    tokenizer: str = field("", help=(
        "tokenizer.json for a new student (default: the first teacher's, which every model must share)."))
    teachers: dict[str, str] = field(default_factory=dict, help=(
        "Domain -> teacher: CKPT, CKPT+ADAPTER or ADAPTER (empty: no distillation, the data alone)."))
    kd: KdConfig = field(default_factory=KdConfig, help="The distillation loss.")
    data: DistillDataConfig = field(default_factory=DistillDataConfig, help="Domain-labelled text.")
    train: TrainConfig = field(default_factory=_distill_train_defaults, help="Optimisation and schedule.")
    out_dir: str = field("runs/distill", help="Run folder (checkpoint/, metrics.jsonl, config.yaml).")
    eval_windows: int = field(64, help="Validation windows per domain in the final per-domain report (0 = all).")
    freeze: list[str] = field(default_factory=list, help=(
        "Student parameters kept frozen, by name prefix or pattern, e.g. [embed, norm, '*.attn.*', '*_norm.*'] "
        "to heal only a moefied model's experts and routers (see `lightseek info`)."))

    def __post_init__(self) -> None:
        if not self.student and self.preset not in PRESETS:
            raise ConfigError(f"preset: unknown {self.preset!r} (known: {', '.join(PRESETS)})")


def load_distill_config(config_path: str | Path | None = None, overrides: list[str] | None = None) -> DistillConfig:
    """Distillation's training defaults <- YAML file <- dotted overrides."""
    return build(DistillConfig, config_path, overrides, base={"train": to_dict(_distill_train_defaults())})


def _student(cfg: DistillConfig, vocab_size: int, device) -> tuple[torch.nn.Module, dict]:
    """The student model and the run config of the checkpoint it starts from ({} for a new one)."""
    from lightseek.model.checkpoint import load_model, read_checkpoint_config, resolve_checkpoint
    from lightseek.model.transformer import Transformer

    if cfg.student:
        ckpt = resolve_checkpoint(cfg.student)
        model = load_model(ckpt, device)
        if model.cfg.vocab_size != vocab_size:
            raise ConfigError(f"student {cfg.student} has a vocabulary of {model.cfg.vocab_size}, the tokenizer "
                              f"{vocab_size}: teachers and student must share one tokenizer")
        return model, read_checkpoint_config(ckpt).get("run", {})
    fields = {**PRESETS[cfg.preset], **cfg.model, "vocab_size": vocab_size}
    try:
        mc = ModelConfig.from_dict(fields)
    except TypeError as e:
        raise ConfigError(f"model: {e}") from None
    torch.manual_seed(cfg.train.seed)
    return Transformer(mc).to(device), {}


def _tokenizer_file(cfg: DistillConfig) -> Path:
    from lightseek.distill.models import split_spec
    from lightseek.model.checkpoint import TOKENIZER, resolve_checkpoint

    if cfg.student:
        return resolve_checkpoint(cfg.student) / TOKENIZER
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if cfg.teachers:
        return resolve_checkpoint(split_spec(next(iter(cfg.teachers.values())))[0]) / TOKENIZER
    raise ConfigError("a new student needs a tokenizer: pass --tokenizer=PATH, a teacher or --student")


def distill_train(cfg: DistillConfig, resume: bool = False, show_progress: bool = True, console=None) -> dict:
    """Train the student; returns the loop's summary plus per-domain validation perplexity."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.distill.models import check_same_tokenizer, load_local
    from lightseek.fileio import atomic_write_text
    from lightseek.model.checkpoint import save_checkpoint
    from lightseek.train.loop import Job, check_run_folder, fit, restore
    from lightseek.train.optim import build_optimizer, freeze_parameters
    from lightseek.train.parallel import autocast_dtype, init_distributed, resolve_device, shutdown

    say = (lambda text: console.print(text, soft_wrap=True, highlight=False)) if console is not None else (lambda t: None)
    tc, out = cfg.train, Path(cfg.out_dir)
    check_run_folder(out, out / "checkpoint", resume, cfg, RESUME_KEYS, ("config.yaml", "metrics.jsonl", "checkpoint"))
    tok_file = _tokenizer_file(cfg)
    tokenizer = Tokenizer.load(tok_file)
    d = init_distributed(tc.device)
    try:
        device = resolve_device(tc.device, d)
        amp = autocast_dtype(tc.dtype, device)
        models = {spec: load_local(spec, device) for spec in dict.fromkeys(cfg.teachers.values())}  # each once
        loaded = {domain: models[spec] for domain, spec in cfg.teachers.items()}
        check_same_tokenizer(loaded, tokenizer.sha256, str(tok_file))
        teachers = TeacherSet({domain: m.model for domain, m in loaded.items()})
        model, student_run = _student(cfg, tokenizer.vocab_size, device)
        if tc.seq_len > model.cfg.max_seq_len:
            raise ConfigError(f"train.seq_len ({tc.seq_len}) exceeds the student's max_seq_len ({model.cfg.max_seq_len})")
        model.set_dispatch(tc.dispatch)
        model.grad_checkpoint = tc.grad_checkpoint
        split_seed = cfg.data.split_seed if cfg.data.split_seed >= 0 else int(
            student_run.get("train", {}).get("seed", tc.seed))
        streams = build_streams(cfg.data, tokenizer, split_seed)
        unknown = sorted(set(cfg.teachers) - set(streams.train))
        if unknown:
            raise ConfigError(f"teachers: {', '.join(unknown)} has no data source (domains: {', '.join(streams.train)})")
        probs = domain_weights(list(streams.train), cfg.data.weights)
        say(f"data: {streams.describe()}; teachers: "
            + (", ".join(f"{k} <- {m.spec}" for k, m in loaded.items()) or "none (no distillation)"))
        total = model.num_params()["total"]
        trainable = freeze_parameters(model, cfg.freeze) if cfg.freeze else total
        say(f"student: {trainable:,} of {total:,} parameters train")
        opt = build_optimizer(model, tc)
        start, tokens_seen = 0, 0
        ckpt_dir = out / "checkpoint"
        if resume:
            start, tokens_seen = restore(model, opt, ckpt_dir, tc.steps)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))

        rows = tc.batch_size * tc.grad_accum
        step_domains: list[str] = []

        def train_rows(step: int):
            batch, names = sample_rows(streams.train, probs, rows * d.world, tc.seq_len, tc.seed, step)
            mine = slice(d.rank * rows, (d.rank + 1) * rows)
            step_domains[:] = names[mine]
            return batch[mine, :-1], batch[mine, 1:]

        def objective(result, x, y, micro: slice):
            domains = step_domains[micro]
            teacher_logits, taught = teachers.logits(x, domains)
            if teacher_logits is None:
                return result.loss
            return kd_loss(result.logits, teacher_logits, y, cfg.kd, taught)

        def val_batches():
            limit = max(1, tc.eval_batches * tc.batch_size // len(streams.val)) if tc.eval_batches else 0
            for stream in streams.val.values():
                yield from val_pairs(stream, tc.seq_len, tc.batch_size, limit)

        record = {"teachers": {k: m.version for k, m in loaded.items()}, "kd": to_dict(cfg.kd),
                  "data": {"sources": cfg.data.sources, "documents": streams.documents, "split_seed": split_seed}}

        def save(step: int, tokens: int, optimizer, last_eval: dict) -> None:
            state = {"step": step, "tokens_seen": tokens, "optimizer": optimizer.state_dict()}
            run = {**student_run, "distill": to_dict(cfg)}
            save_checkpoint(ckpt_dir, model, tokenizer_file=tok_file, run_config=run, train_state=state,
                            extra={"step": step, "distilled": record})

        job = Job(model, opt, train_rows, val_batches, save, start, tokens_seen, objective=objective)
        summary = fit(job, tc, out, d, device, amp, show_progress, resumed=resume)
        summary["domains"] = domain_perplexity(model, streams.val, tc.seq_len, tc.batch_size, cfg.eval_windows, device)
        summary["checkpoint"] = str(ckpt_dir)
        return summary
    finally:
        shutdown(d)


def domain_perplexity(model, val: dict, seq_len: int, batch_size: int, limit: int, device="cpu") -> dict:
    """{domain: validation perplexity} over (at most ``limit``) windows of each domain's stream."""
    from lightseek.eval.perplexity import evaluate

    return {domain: evaluate(model, val_pairs(stream, seq_len, batch_size, limit), device)["ppl"]
            for domain, stream in val.items()}


def val_pairs(stream, seq_len: int, batch_size: int, limit: int):
    """(inputs, targets) batches of the first ``limit`` (0 = all) consecutive windows of a stream."""
    from lightseek.eval.run import token_windows

    if limit:
        stream = stream[:limit * seq_len + 1]  # exactly ``limit`` windows
    for b in token_windows(stream, batch_size, seq_len):
        yield b[:, :-1], b[:, 1:]
