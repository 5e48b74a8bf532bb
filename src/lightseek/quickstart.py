"""`lightseek quickstart`: the whole loop in a few minutes on 2 CPU cores.

Builds a corpus from text every Python installation has (the standard library's documentation
topics and source), trains a byte-level BPE tokenizer and the ``tiny`` dynamic MoE, reports
validation perplexity and routing health, writes plots and generates a sample. Running it again
resumes an unfinished run, or re-reports a finished one (``--fresh`` starts over).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console

from lightseek.fileio import write_json_atomic
from lightseek.train.config import RunConfig

MAX_VIO_TARGET = 0.10

QUICKSTART: dict = {
    "preset": "tiny",
    "out_dir": "runs/quickstart",
    "data": {"max_bytes": 12_000_000, "val_fraction": 0.05},
    "tokenizer": {"vocab_size": 4096, "train_bytes": 6_000_000},
    "train": {"steps": 600, "batch_size": 8, "seq_len": 256, "lr": 3e-3, "warmup_steps": 50,
              "eval_every": 150, "eval_batches": 40, "ckpt_every": 150, "log_every": 10,
              "balance_settle_steps": 100},
    "generate": {"max_new_tokens": 80, "temperature": 0.7, "top_p": 0.9, "seed": 0},
}
SAMPLE_PROMPT = "def read_config(path):\n    "


def quickstart(cfg: RunConfig, fresh: bool = False) -> dict:
    from lightseek.data.corpus import stdlib_documents
    from lightseek.data.prepare import prepare_dataset
    from lightseek.data.shards import TokenShards
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.perplexity import evaluate
    from lightseek.model.checkpoint import load_model, load_train_state
    from lightseek.model.generate import generate_text
    from lightseek.train.pretrain import pretrain

    console = Console()
    t0 = time.time()
    out = Path(cfg.out_dir)
    if fresh and out.exists():
        shutil.rmtree(out)
    data_dir = Path(cfg.data.prepared) if cfg.data.prepared else out / "data"
    if not (data_dir / "manifest.json").exists():
        console.print(f"[bold]1/4[/] corpus: Python's documentation and standard library "
                      f"(up to {cfg.data.max_bytes / 1e6:.0f} MB), tokenizer with {cfg.tokenizer.vocab_size} tokens")
        manifest = prepare_dataset(lambda: stdlib_documents(cfg.data.max_bytes), data_dir,
                                   vocab_size=cfg.tokenizer.vocab_size,
                                   tokenizer_bytes=cfg.tokenizer.train_bytes,
                                   val_fraction=cfg.data.val_fraction, seed=cfg.train.seed)
        console.print(f"      {manifest['splits']['train']['tokens']:,} training and "
                      f"{manifest['splits']['val']['tokens']:,} validation tokens in {data_dir}")
    cfg.data.prepared = str(data_dir)

    ckpt = out / "checkpoint"
    done_steps = load_train_state(ckpt)["step"] if ckpt.exists() else 0
    if done_steps < cfg.train.steps:
        console.print(f"[bold]2/4[/] training the {cfg.preset} {cfg.model.router_mode} MoE for "
                      f"{cfg.train.steps} steps" + (f" (resuming at step {done_steps})" if done_steps else ""))
        summary = pretrain(cfg, resume=done_steps > 0)
        model = load_model(ckpt)  # the final checkpoint, for the balance figure and the sample
    else:
        console.print(f"[bold]2/4[/] {ckpt} is already trained ({done_steps} steps); use --fresh to start over")
        val = TokenShards(data_dir, "val").iter_sequential(cfg.train.batch_size, cfg.train.seq_len,
                                                           cfg.train.eval_batches or None)
        model = load_model(ckpt)
        ev = evaluate(model, val)
        summary = {"val_loss": ev["loss"], "val_ppl": ev["ppl"], "routing": ev["routing"],
                   **{k: ev[k] for k in ("avg_k", "max_vio", "dead_experts") if k in ev}}

    console.print("[bold]3/4[/] results")
    console.print(f"      validation loss {summary['val_loss']:.3f}, perplexity {summary['val_ppl']:.2f}")
    if "avg_k" in summary:
        summary["max_vio_train"] = training_text_balance(model, data_dir, cfg)
        console.print(f"      experts per token {summary['avg_k']:.2f} (target {cfg.model.target_k}), "
                      f"dead experts {summary['dead_experts']}")
        console.print(f"      {balance_line(summary['max_vio_train'], summary['max_vio'])}")
    if "tokens_per_s" in summary:
        console.print(f"      training {summary['tokens_per_s']:,.0f} tokens/s")
    for p in summary.get("plots", []):
        console.print(f"      plot: {p}")

    console.print(f"[bold]4/4[/] sample (temperature {cfg.generate.temperature}, seed {cfg.generate.seed})")
    tokenizer = Tokenizer.load(ckpt)
    console.print(SAMPLE_PROMPT, end="", style="dim", highlight=False, markup=False)
    generate_text(model, tokenizer, SAMPLE_PROMPT, cfg.generate,
                  on_text=lambda s: console.print(s, end="", highlight=False, markup=False))
    console.print()
    summary["wall_s_total"] = time.time() - t0
    write_json_atomic(out / "quickstart.json", {k: v for k, v in summary.items() if k != "routing"})
    console.print(f"done in {summary['wall_s_total']:.0f} s; run folder: {out}")
    console.print(f"next: lightseek generate {ckpt} --prompt 'import os'")
    console.print(f"      lightseek eval {ckpt} --routing")
    return summary


def training_text_balance(model, data_dir: Path, cfg: RunConfig) -> float:
    """MaxVio (mean over MoE layers) on as many training-split windows as the evaluation reads,
    drawn with another seed than training's: the balance on the text the router was balanced on."""
    from lightseek.data.shards import TokenShards
    from lightseek.eval.perplexity import evaluate_training_windows

    tc = cfg.train
    return evaluate_training_windows(model, TokenShards(data_dir, "train"), tc.batch_size, tc.seq_len,
                                     tc.eval_batches or 40, tc.seed + 1)["max_vio"]


def balance_line(on_train: float, held_out: float) -> str:
    """The MaxVio line, which says plainly whether each figure meets the target and why not."""
    met = "met" if on_train <= MAX_VIO_TARGET else ("over target: the balance bias has not settled; train longer, "
                                                      "or give train.balance_settle_steps more steps")
    line = f"MaxVio {on_train:.3f} on training text (target {MAX_VIO_TARGET:.2f}: {met}), {held_out:.3f} on held-out documents"
    if held_out > MAX_VIO_TARGET:
        line += (" (over target: the balance bias equalises the load of the text it trains on; held-out "
                 "documents are other modules and topics, which load the experts unevenly)")
    return line
