"""The training loop shared by pretraining and fine-tuning (`fit`), and pretraining itself.

Exact resume: batches come from (seed, step) alone, and the checkpoint holds the weights, the
routing state (balance biases, dynamic thresholds), the optimizer state and the step, so a run
stopped at step N and resumed produces the same losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lightseek.config import to_dict
from lightseek.data.shards import TokenShards
from lightseek.errors import CheckpointError, ConfigError
from lightseek.eval.perplexity import evaluate, summarize_routing
from lightseek.fileio import recover_dir
from lightseek.model.checkpoint import load_train_state, load_weights, read_checkpoint_config, save_checkpoint
from lightseek.model.transformer import ModelOutput, Transformer
from lightseek.train.config import RunConfig, TrainConfig
from lightseek.train.metrics import MetricsLog, TrainProgress, read_metrics
from lightseek.train.optim import build_optimizer, lr_at
from lightseek.train.parallel import Dist, all_reduce_sum, autocast_dtype, init_distributed, resolve_device, shutdown


def _step_batch(data: TokenShards, cfg: RunConfig, step: int, d: Dist) -> torch.Tensor:
    """This rank's rows of the global batch for ``step``: (batch_size * grad_accum, T + 1)."""
    tc = cfg.train
    rows = tc.batch_size * tc.grad_accum
    batch = data.sample_batch(rows * d.world, tc.seq_len, tc.seed, step)
    return batch[d.rank * rows:(d.rank + 1) * rows]


# What a resumed run must share with its checkpoint for the resume to be exact.
RESUME_KEYS = ("model", "data.prepared", "train.seed", "train.batch_size", "train.seq_len",
               "train.grad_accum", "train.steps", "train.lr", "train.warmup_steps", "train.min_lr_ratio")


def check_resume_config(saved: dict, cfg, ckpt_dir: Path, keys: tuple[str, ...] = RESUME_KEYS) -> None:
    """A ConfigError naming every key whose value differs from the checkpoint's run."""
    current = to_dict(cfg)
    try:  # a key the saved run predates: that run behaved as the key's default
        defaults = to_dict(type(cfg)())
    except (TypeError, ConfigError):  # a config class without a default for every field
        defaults = {}

    def get(tree: dict, key: str):
        for part in key.split("."):
            tree = tree.get(part, {}) if isinstance(tree, dict) else {}
        return tree

    differ = []
    for key in keys:
        old, new = get(saved, key), get(current, key)
        if old == {}:
            old = get(defaults, key)
        if isinstance(old, dict) and isinstance(new, dict):
            differ += [f"{key}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != {} and old != new:
            differ.append(key)
    if differ:
        raise ConfigError(f"--resume: the config differs from the checkpoint in {ckpt_dir} at "
                          f"{', '.join(differ)}; resume with the run's own config (see its config.yaml)")


@torch.no_grad()
def settle_balance(model: Transformer, job, tc: TrainConfig, d: Dist, device, autocast) -> None:
    """After the last optimizer step the routers' weights are final, and the balance bias, which
    chased them while they moved, can settle against them: ``tc.balance_settle_steps`` forward
    passes over training windows the run never drew (the steps after the last), each followed by
    a routing update whose step shrinks linearly to 0, so the bias averages out the noise of single
    batches instead of jittering at its full step. Weights do not change."""
    was_training = model.training
    model.eval()
    for i in range(tc.balance_settle_steps):
        inputs, _ = job.train_rows(tc.steps + i)
        model.reset_routing_stats()
        for micro in range(tc.grad_accum):
            x = inputs[micro * tc.batch_size:(micro + 1) * tc.batch_size].to(device)
            with autocast():
                model(x, token_mask_BT=(x != job.pad_id) if job.pad_id is not None else None, last_only=True)
        sums = model.routing_sums()
        if d.enabled and sums is not None:
            sums = tuple(all_reduce_sum(s, d) for s in sums)
        model.update_routing(sums, step_scale=1.0 - i / tc.balance_settle_steps)
    model.reset_routing_stats()
    model.train(was_training)


def check_run_folder(out: Path, save_dir: Path, resume: bool, cfg, keys: tuple[str, ...],
                     markers: tuple[str, ...]) -> None:
    """Before a run writes into ``out``: with ``resume``, something to resume in ``save_dir`` and a
    config that agrees with the run's ``config.yaml`` on ``keys``; without, no earlier run there
    (none of ``markers``), so nothing a user made is overwritten."""
    from lightseek.config import load_yaml

    recover_dir(save_dir)  # a save killed mid-swap left the complete copy beside it
    if resume:
        if not save_dir.exists():
            raise ConfigError(f"--resume: nothing to resume in {save_dir}")
        saved = load_yaml(out / "config.yaml") if (out / "config.yaml").exists() else {}
        check_resume_config(saved, cfg, out, keys)
    elif any((out / f).exists() for f in markers):
        raise ConfigError(f"run folder {out} already holds a run; pass --resume to continue it, or choose "
                          f"another --out_dir")


def restore(model: Transformer, optimizer: torch.optim.Optimizer, ckpt_dir: Path, steps: int,
            state: dict | None = None) -> tuple[int, int]:
    """Continue a run from its checkpoint: the weights (unless ``state`` is given, in which case
    the caller has loaded its own) and the optimizer state; returns (step, tokens seen). A run
    already at ``steps`` is an error: there is nothing to resume."""
    if state is None:
        state = load_train_state(ckpt_dir)
        load_weights(model, ckpt_dir)
    optimizer.load_state_dict(state["optimizer"])
    start, tokens_seen = state["step"], state["tokens_seen"]
    if start >= steps:
        raise CheckpointError(f"checkpoint {ckpt_dir} is at step {start}: nothing left of train.steps={steps}")
    return start, tokens_seen


@dataclass
class Job:
    """What `fit` trains and how: the model (with only the weights to train requiring grad),
    where batches come from, and how a checkpoint is written.

    ``train_rows(step)`` gives this rank's (inputs, targets) for one optimizer step, with
    batch_size * grad_accum rows (targets of -100 are not learned); ``val_batches()`` yields
    (inputs, targets) for evaluation; ``save(step, tokens_seen, optimizer, last_eval)`` writes a
    checkpoint (``last_eval``: the latest evaluation's figures, {} before the first).
    """

    model: Transformer
    optimizer: torch.optim.Optimizer
    train_rows: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    save: Callable[[int, int, torch.optim.Optimizer, dict], None]
    start: int = 0
    tokens_seen: int = 0
    pad_id: int | None = None  # padding in the inputs: not routed into the balance statistics
    # the training objective of one micro-batch (default: the model's next-token loss): given the
    # model's output, the inputs, the targets and the micro-batch's rows of the step (a slice of
    # ``train_rows(step)``), a loss averaged over its learned tokens, like ``ModelOutput.loss``
    objective: Callable[[ModelOutput, torch.Tensor, torch.Tensor, slice], torch.Tensor] | None = None


def fit(job: Job, tc: TrainConfig, out: Path, d: Dist, device: torch.device, amp: torch.dtype | None,
        show_progress: bool = True, resumed: bool = False) -> dict:
    """The training loop shared by pretraining and fine-tuning: schedule, accumulation, DDP,
    clipping, routing updates, metrics, progress, evaluation and checkpoints."""
    model, opt = job.model, job.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    ddp = DDP(model, broadcast_buffers=False) if d.enabled else model
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=job.start if resumed else None, enabled=d.is_main)
    bar = TrainProgress(tc.steps, job.start, show_progress and d.is_main, tc.log_every)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext

    def save(step: int) -> None:
        if d.is_main:
            job.save(step, tokens_seen, opt, last_eval)
        if d.enabled:
            torch.distributed.barrier()

    model.train()
    tokens_seen = job.tokens_seen
    t_start, tokens_at_start = time.time(), tokens_seen
    last_eval: dict = {}
    stop = min(tc.steps, tc.stop_after) if tc.stop_after else tc.steps
    for step in range(job.start, stop):
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        inputs, targets = job.train_rows(step)
        model.reset_routing_stats()
        # every target token weighs the same, across micro-batches and ranks (fine-tuning
        # batches hold different numbers of learned tokens): scale each micro-batch's mean loss
        # by its share of the step's tokens (DDP then averages over ranks)
        step_tokens = int(all_reduce_sum(torch.tensor(float((targets != -100).sum()), dtype=torch.float64), d).item())
        loss_sum = torch.zeros((), dtype=torch.float64)
        for micro in range(tc.grad_accum):
            rows = slice(micro * tc.batch_size, (micro + 1) * tc.batch_size)
            x, y = inputs[rows].to(device), targets[rows].to(device)
            n_micro = int((y != -100).sum())
            mask = (x != job.pad_id) if job.pad_id is not None else None
            last = micro == tc.grad_accum - 1
            # gradients are all-reduced only on the last micro-batch (one no_sync context
            # around both forward and backward: it cannot be entered twice)
            with ddp.no_sync() if d.enabled and not last else contextlib.nullcontext():
                with autocast():
                    # the loss alone (no logits kept for backward) unless the objective needs logits
                    result = ddp(x, y, token_mask_BT=mask, keep_logits=job.objective is not None)
                    objective = job.objective(result, x, y, rows) if job.objective else result.loss
                    # a micro-batch with nothing to learn still joins the backward (DDP), with zero gradients
                    share = (objective * (n_micro * d.world / step_tokens) if n_micro
                             else (result.loss if result.logits is None else result.logits.sum()) * 0.0)
                    loss = share if result.aux_loss is None else share + result.aux_loss / tc.grad_accum
                loss.backward()
            if n_micro:
                loss_sum += result.loss.detach().double().cpu() * n_micro
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sums = model.routing_sums()
        if d.enabled and sums is not None:
            sums = tuple(all_reduce_sum(s, d) for s in sums)
        routing = summarize_routing(model.routing_report(sums))
        model.update_routing(sums)

        done = step + 1
        if done == tc.steps and tc.balance_settle_steps:
            settle_balance(model, job, tc, d, device, autocast)
        tokens_seen += step_tokens
        loss_mean = (all_reduce_sum(loss_sum, d) / step_tokens).item()
        rec = {"kind": "train", "step": done, "loss": loss_mean, "lr": opt.param_groups[0]["lr"],
               "grad_norm": float(grad_norm), "tokens": tokens_seen,
               "tokens_per_s": step_tokens / max(time.time() - t0, 1e-9), "step_s": time.time() - t0}
        rec.update({k: routing[k] for k in ("avg_k", "max_vio", "dead_experts") if k in routing})
        if done % tc.log_every == 0 or done == tc.steps:
            metrics.write(rec)
        bar.update(done, rec)

        if done % tc.eval_every == 0 or done == tc.steps:
            last_eval = evaluate(model, job.val_batches(), device, amp, pad_id=job.pad_id)
            model.train()
            ev = {"kind": "eval", "step": done, "val_loss": last_eval["loss"], "val_ppl": last_eval["ppl"],
                  **{k: last_eval[k] for k in ("avg_k", "max_vio", "dead_experts") if k in last_eval}}
            metrics.write(ev)
            bar.print(f"step {done}: val loss {ev['val_loss']:.4f}, ppl {ev['val_ppl']:.2f}"
                      + (f", k {ev['avg_k']:.2f}, MaxVio {ev['max_vio']:.3f}, dead {ev['dead_experts']}"
                         if "avg_k" in ev else ""))
        if done % tc.ckpt_every == 0 or done == stop:
            save(done)
    bar.close()
    wall = time.time() - t_start
    summary = {"steps": stop, "tokens_seen": tokens_seen, "wall_s": wall,
               "tokens_per_s": (tokens_seen - tokens_at_start) / max(wall, 1e-9),
               "finished": stop == tc.steps}
    if last_eval:
        summary.update({"val_loss": last_eval["loss"], "val_ppl": last_eval["ppl"],
                        "routing": last_eval["routing"],
                        **{k: last_eval[k] for k in ("avg_k", "max_vio", "dead_experts") if k in last_eval}})
    if d.is_main and tc.plots and summary["finished"]:
        from lightseek.train.plots import plot_run

        summary["plots"] = [str(p) for p in plot_run(out, read_metrics(out / "metrics.jsonl"),
                                                      last_eval.get("routing", []))]
    return summary


def run_training(cfg: RunConfig, data_dir: str | Path, tokenizer_file: str | Path, *,
                 resume: bool = False, show_progress: bool = True) -> dict:
    """Pretrain ``cfg.model`` on the token shards in ``data_dir``; returns the final summary."""
    tc = cfg.train
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoint"
    d = init_distributed(tc.device)
    try:
        device = resolve_device(tc.device, d)
        amp = autocast_dtype(tc.dtype, device)
        train_data, val_data = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")

        torch.manual_seed(tc.seed)
        model = Transformer(cfg.model).to(device)
        model.set_dispatch(tc.dispatch)
        model.grad_checkpoint = tc.grad_checkpoint
        opt = build_optimizer(model, tc)
        start, tokens_seen = 0, 0
        if resume:
            check_resume_config(read_checkpoint_config(ckpt_dir).get("run", {}), cfg, ckpt_dir)
            start, tokens_seen = restore(model, opt, ckpt_dir, tc.steps)

        def train_rows(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            batch = _step_batch(train_data, cfg, step, d)
            return batch[:, :-1], batch[:, 1:]

        def val_batches():
            for b in val_data.iter_sequential(tc.batch_size, tc.seq_len, tc.eval_batches or None):
                yield b[:, :-1], b[:, 1:]

        def save(step: int, tokens: int, optimizer, last_eval: dict) -> None:
            save_checkpoint(ckpt_dir, model, tokenizer_file=tokenizer_file, run_config=to_dict(cfg),
                            train_state={"step": step, "tokens_seen": tokens, "optimizer": optimizer.state_dict()},
                            extra={"step": step})

        job = Job(model, opt, train_rows, val_batches, save, start, tokens_seen)
        summary = fit(job, tc, out, d, device, amp, show_progress, resumed=resume)
        summary["checkpoint"] = str(ckpt_dir)
        return summary
    finally:
        shutdown(d)
