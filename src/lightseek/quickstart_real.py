"""`lightseek quickstart`: a real instruct model, turned into a dynamic MoE, in a few minutes.

Fetches SmolLM2-135M-Instruct (cached after the first time), converts it with `moefy` (16
experts per FFN, routers fitted on the standard library's documentation, dynamic routing at an
average of ``target_k``), then prints dense against MoE: parameters active per token,
perplexity on held-out standard-library text (documentation past the calibration text), batch-1
decode tokens/s, and one chat answer from each. Running it again reuses the conversion
(``--fresh`` starts over). `lightseek quickstart --from-scratch` is the tiny pretraining loop.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lightseek.fileio import write_json_atomic

DEFAULT_MODEL = "smollm2-135m-instruct"
# 12 of 16 experts: the conversion's quality falls fast below that without healing (see
# docs/results/moefy.md); the table says what it keeps.
DEFAULT_TARGET_K = 12.0
DEFAULT_OUT = "runs/quickstart_moe"
EVAL_BYTES = 120_000          # held-out documentation after the calibration text
EVAL_WINDOWS, EVAL_LEN = 24, 256
DECODE_TOKENS = 32
QUESTION = "In two sentences: what does a Python generator do?"
MOEFY_SETTINGS = {"experts": 16, "router_steps": 100, "calib": {"samples": 32, "seq_len": 256}}


def heldout_windows(tokenizer, max_len: int):
    """(n, EVAL_LEN + 1) windows of the standard library's documentation that follows the
    calibration text `moefy` reads by default."""
    import torch

    from lightseek.data.corpus import stdlib_documents
    from lightseek.moefy.run import CALIB_BYTES

    text = "\n\n".join(d.text for d in stdlib_documents(CALIB_BYTES + EVAL_BYTES))
    tail = text.encode("utf-8")[CALIB_BYTES:].decode("utf-8", errors="ignore")
    length = min(EVAL_LEN, max_len - 1)
    ids = tokenizer.encode(tail)[: EVAL_WINDOWS * (length + 1)]
    n = len(ids) // (length + 1)
    return torch.tensor(ids[: n * (length + 1)]).view(n, length + 1)


def measure(ckpt: Path, windows, question: str) -> dict:
    """Active parameters, held-out perplexity, decode tokens/s and a greedy chat answer."""
    import torch

    from lightseek.data.chat import encode_chat
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.perplexity import evaluate
    from lightseek.model.checkpoint import load_model
    from lightseek.model.generate import generate_ids, generate_text
    from lightseek.model.sampling import SamplingParams

    model, tokenizer = load_model(ckpt).eval(), Tokenizer.load(ckpt)
    ev = evaluate(model, windows.split(4))
    prompt = encode_chat(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)[0]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=DECODE_TOKENS)
    with torch.inference_mode():
        list(generate_ids(model, prompt[:8], SamplingParams(temperature=0.0, max_new_tokens=2)))  # warm-up
        t = time.perf_counter()
        n = len(list(generate_ids(model, prompt, greedy)))
        decode = n / (time.perf_counter() - t)
    answer = generate_text(model, tokenizer, prompt, SamplingParams(temperature=0.0, max_new_tokens=64))
    params = model.num_params()
    return {"active_params": params["active"], "total_params": params["total"], "ppl": ev["ppl"],
            "avg_k": ev.get("avg_k"), "decode_tok_s": decode, "answer": answer.strip()}


def real_quickstart(out: str | Path = DEFAULT_OUT, model: str = DEFAULT_MODEL,
                    target_k: float = DEFAULT_TARGET_K, fresh: bool = False, console: Console | None = None) -> dict:
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import read_checkpoint_config, resolve_checkpoint
    from lightseek.moefy.config import load_moefy_config
    from lightseek.moefy.run import moefy_checkpoint

    console = console or Console()
    t0 = time.time()
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    console.print(f"[bold]1/4[/] model: {model}")
    dense = _fetched(model, console)
    moe = out / f"moe_k{target_k:g}"
    if not (moe / "config.json").is_file():
        console.print(f"[bold]2/4[/] moefy: 16 experts per FFN, routers fitted on the standard library's "
                      f"documentation, dynamic routing at {target_k:g} experts per token on average")
        overrides = [f"--moefy.target_k={target_k}", f"--moefy.router_steps={MOEFY_SETTINGS['router_steps']}",
                     f"--moefy.calib.samples={MOEFY_SETTINGS['calib']['samples']}",
                     f"--moefy.calib.seq_len={MOEFY_SETTINGS['calib']['seq_len']}",
                     f"--moefy.experts={MOEFY_SETTINGS['experts']}"]
        moefy_checkpoint(dense, load_moefy_config(None, overrides), moe)
    else:
        console.print(f"[bold]2/4[/] {moe} is already converted; --fresh starts over")
    console.print("[bold]3/4[/] dense against MoE on held-out documentation, one chat question each")
    windows = heldout_windows(Tokenizer.load(dense), read_checkpoint_config(dense)["model"]["max_seq_len"])
    rows = {"dense": measure(resolve_checkpoint(dense), windows, QUESTION), "moe": measure(moe, windows, QUESTION)}
    table = Table("", "active params", "held-out ppl", "experts/token", "decode tok/s (batch 1)")
    for name, r in rows.items():
        table.add_row(name, f"{r['active_params'] / 1e6:.1f}M of {r['total_params'] / 1e6:.1f}M", f"{r['ppl']:.2f}",
                      "-" if r["avg_k"] is None else f"{r['avg_k']:.2f} of 16", f"{r['decode_tok_s']:.1f}")
    console.print(table)
    console.print(f"[bold]4/4[/] {QUESTION}")
    for name, r in rows.items():
        console.print(Text.assemble((f"{name}: ", "bold"), r["answer"]), highlight=False)  # the answer as written
    summary = {"model": model, "target_k": target_k, "windows": int(windows.shape[0]),
               "eval_tokens": int(windows[:, 1:].numel()), "rows": rows, "wall_s": time.time() - t0}
    write_json_atomic(out / "quickstart.json", summary)
    console.print(f"done in {summary['wall_s']:.0f} s; run folder: {out}")
    console.print(f"next: lightseek chat {moe}")
    console.print(f"      lightseek moefy {moe} --target-k 8 --out {out}/moe_k8   (re-target: fewer experts)")
    return summary


def _fetched(model: str, console: Console) -> Path:
    """A fetched model's checkpoint (fetching it the first time), or a checkpoint folder."""
    from lightseek.known_models import KNOWN_MODELS
    from lightseek.model.checkpoint import resolve_checkpoint

    if model in KNOWN_MODELS:
        from lightseek.models.fetch import fetch

        return fetch(model, log=lambda text: console.print(f"      {text}", highlight=False))
    return resolve_checkpoint(model)
