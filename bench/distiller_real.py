"""The DataDistiller on the real model: 500 real questions that no adapter trained on, classified,
answered by their domain's adapter on SmolLM2-135M-Instruct, judged and scored by the base;
then whether the data is useful.

1. Experts: LoRA adapters (rank 16 on attention and feed-forward, lr 5e-4, 30 steps of 8
   conversations; the set-up of `bench/lora_vs_full.py --real`, without gradient checkpointing,
   which the memory here does not need) for medical (MedQuAD) and finance (FiQA), each on the
   first 240 conversations of its training split. Other domains go to the base model.
2. Classifier: `lightseek domains train` on the data `bench/domains.py` builds (runs/domains/data).
3. Inputs: 500 questions, none of them a conversation any adapter trained on or one of the
   held-out conversations scored below: 200 MedQuAD and 150 FiQA questions from their training
   splits after the first 240, 50 PubMedQA questions, 100 Alpaca instructions (part 02).
4. `lightseek distill data` in judge mode: the base judges each answer (yes / no), scores it by
   its mean log-probability per token as the reply (rejected below --min-logprob), and the
   length and repetition filters reject empty, overlong and looping answers. Acceptance is
   reported per stage and per domain.
5. Usefulness (medical): the accepted answers to MedQuAD questions (N) train an adapter; the
   original MedQuAD answers to the same N questions train another, same steps (one epoch) and
   settings (5% of the questions held out by the split rule, the same ones for both); both and
   the base are scored on the 96 held-out MedQuAD conversations (perplexity of the reference
   answers) and the MedQuAD multiple-choice items of bench/real_model_tasks.py
   whose question none of them trained on.

    python bench/distiller_real.py [--inputs 500] [--min-logprob -3.0]

Work lives in runs/distiller_real/ (a killed run continues: the distiller caches its generations,
finished adapters are reused). Writes bench/results/distiller_real.json after each phase.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, read_jsonl, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RUNS = ROOT / "runs" / "distiller_real"
NAME = "smollm2-135m-instruct"
FILES = {"medical": [SHARED / "medical_medquad_en"], "finance": [SHARED / "finance_fiqa_en"]}
TRAINED, BATCH, SEQ_LEN, HELD_OUT = 240, 8, 256, 96
LORA = ["--lora.rank=16", "--lora.alpha=32", "--lora.targets=[attn,dense]", "--train.lr=5e-4",
        "--train.grad_checkpoint=false", "--data.split_seed=0", "--train.warmup_steps=3",
        "--train.plots=false", "--train.eval_batches=0", f"--train.batch_size={BATCH}", f"--train.seq_len={SEQ_LEN}"]
DEFAULTS = {"inputs": 500, "min_logprob": -3.0}


def splits(domain: str):
    from lightseek.adapters.finetune import split_examples
    from lightseek.data.instruct import load_instructions

    return split_examples(load_instructions(FILES[domain]).examples, 0.1, 0)


def question_answer(ex) -> tuple[str, str]:
    user = next(m["content"] for m in ex.messages if m["role"] == "user")
    return user, next(m["content"] for m in ex.messages if m["role"] == "assistant")


def lora_train(name: str, files: list, out: Path, steps: int, extra: list[str] = ()) -> tuple[Path, float]:
    """An adapter trained with `lightseek lora train`, and the wall seconds its training took (reused
    when it finished with the same command: the seconds are the ones recorded then)."""
    cmd = [sys.executable, "-m", "lightseek", "lora", "train", f"--base={NAME}", f"--name={name}", f"--out_dir={out}",
           f"--data.files={json.dumps([str(f) for f in files])}", f"--train.steps={steps}",
           f"--train.eval_every={steps}", f"--train.ckpt_every={steps}", *LORA, *extra, "--quiet"]
    done = stamped(out, cmd[3:])
    if done is not None and (out / "adapter").is_dir():
        return out / "adapter", done["wall_s"]
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t
    print(f"  {name}: {steps} steps in {wall:.0f} s", flush=True)
    return out / "adapter", stamp(out, cmd[3:], wall)["wall_s"]


def stamped(out: Path, command: list[str]) -> dict | None:
    """What ``out``'s stamp recorded ({command, wall_s}) if ``command`` wrote it, else None."""
    path = out / "bench_command.json"
    done = json.loads(path.read_text()) if path.is_file() else None
    return done if done is not None and done["command"] == command else None


def stamp(out: Path, command: list[str], wall_s: float) -> dict:
    """Record that ``command`` produced ``out`` in ``wall_s`` seconds."""
    done = {"command": command, "wall_s": wall_s}
    (out / "bench_command.json").write_text(json.dumps(done))
    return done


def write_inputs(n: int) -> dict[str, Path]:
    """The input questions, per source, with the original answer where the source has one."""
    from lightseek.fileio import atomic_write_text

    share = {"medquad": 0.4, "fiqa": 0.3, "pubmedqa": 0.1, "alpaca": 0.2}
    rows = {"medquad": [question_answer(ex) for ex in splits("medical")[0][TRAINED:]],
            "fiqa": [question_answer(ex) for ex in splits("finance")[0][TRAINED:]]}
    pqa = json.loads((SHARED / "medical_pubmedqa_en" / "ori_pqal.json").read_text(encoding="utf-8"))
    rows["pubmedqa"] = [(r["QUESTION"], r["LONG_ANSWER"]) for _, r in sorted(pqa.items())]
    alpaca = json.loads((SHARED / "instruct_alpaca_en" / "alpaca_data_en_part02.json").read_text(encoding="utf-8"))
    rows["alpaca"] = [(r["instruction"], r["output"]) for r in alpaca if not r.get("input")]
    files = {}
    for source, frac in share.items():
        picked = rows[source][:: max(1, len(rows[source]) // round(n * frac))][: round(n * frac)]
        files[source] = RUNS / "inputs" / f"{source}.jsonl"
        atomic_write_text(files[source], "".join(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n"
                                                 for q, a in picked))
    return files


def score(adapter: Path | None, items: list[dict]) -> dict:
    """Held-out MedQuAD perplexity (reference answers) and multiple-choice accuracy, base or adapter."""
    import contextlib

    from lightseek.adapters.evaluate import instruction_batches
    from lightseek.adapters.lora import use_adapters
    from lightseek.adapters.store import base_fingerprint, load_adapter
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.perplexity import evaluate
    from lightseek.eval.tasks import score_tasks
    from lightseek.model.checkpoint import TOKENIZER, load_model, resolve_checkpoint

    base = resolve_checkpoint(NAME)
    tok = Tokenizer.load(base / TOKENIZER)
    model = load_model(base)
    ctx = contextlib.nullcontext()
    if adapter is not None:
        info = load_adapter(model, adapter, base_fingerprint(base)["sha256"])
        ctx = use_adapters(model, info.name)
    val, n_val = instruction_batches(FILES["medical"], tok, SEQ_LEN, BATCH, 0.1, 0, "val")
    with ctx:
        import itertools

        ppl = evaluate(model, itertools.islice(val(), HELD_OUT // BATCH), pad_id=tok.pad_id)["ppl"]
        task = score_tasks(model, tok, items)
    kept = ("items", "acc", "acc_norm", "acc_ci95", "acc_norm_ci95")
    return {"domain_ppl": ppl, "task": {k: task[k] for k in kept}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=DEFAULTS["inputs"])
    ap.add_argument("--min-logprob", type=float, default=DEFAULTS["min_logprob"],
                    help="answers the base scores below this mean log-probability per token are rejected")
    ap.add_argument("--result")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"the shared data is not at {SHARED}")
    from lightseek.models.fetch import fetch

    fetch(NAME)
    name = result_name("distiller_real", args, DEFAULTS)
    out = {**provenance(), "base": NAME, "settings": vars(args), "experts": {}}
    RUNS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # 1-2. experts and classifier
    for domain in FILES:
        adapter, wall = lora_train(domain, FILES[domain], RUNS / "experts" / domain, TRAINED // BATCH,
                                   [f"--data.max_examples={TRAINED}", f"--data.domain={domain}"])
        out["experts"][domain] = {"adapter": str(adapter), "wall_s": wall}
    classifier = ROOT / "runs" / "domains" / "model"
    if not classifier.is_dir():
        data = ROOT / "runs" / "domains" / "data"
        if not data.is_dir():
            subprocess.run([sys.executable, "-m", "lightseek", "domains", "build", "--out", str(data)], cwd=ROOT,
                           check=True)
        subprocess.run([sys.executable, "-m", "lightseek", "domains", "train", "--data", str(data), "--out",
                        str(classifier)], cwd=ROOT, check=True)
    write_result(name, out)

    # 3-4. the distiller
    inputs = write_inputs(args.inputs)
    cmd = [sys.executable, "-m", "lightseek", "distill", "data", f"--out={RUNS / 'distilled'}",
           f"--inputs=[{','.join(str(f) for f in inputs.values())}]", "--text_field=question", "--kind=prompt",
           f"--classifier={classifier}", f"--experts.medical={out['experts']['medical']['adapter']}",
           f"--experts.finance={out['experts']['finance']['adapter']}", f"--experts.*={NAME}",
           f"--refiner={NAME}", "--mode=judge", f"--scorer={NAME}", f"--min_logprob={args.min_logprob}",
           "--min_chars=20", "--max_chars=2000", "--max_repetition=0.5", "--generate.max_tokens=160",
           "--generate.temperature=0.3", "--seed=0", "--quiet"]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t
    # a rerun finds its generations cached and takes minutes: the seconds kept are those of the
    # first run of this command
    first = stamped(RUNS / "distilled", cmd[3:]) or stamp(RUNS / "distilled", cmd[3:], wall)
    manifest = json.loads((RUNS / "distilled" / "manifest.json").read_text())
    kept, rejected = read_jsonl(RUNS / "distilled" / "data.jsonl"), read_jsonl(RUNS / "distilled" / "rejected.jsonl")
    by = {}
    for r, what in [(r, "kept") for r in kept] + [(r, r["stage"]) for r in rejected]:
        src = Path(r["source"]["file"]).stem
        by.setdefault(src, {}).setdefault(r["domain"], {}).setdefault(what, 0)
        by[src][r["domain"]][what] += 1
    logprobs = sorted(r["quality"]["logprob"] for r in kept + rejected if "quality" in r)
    quartiles = [logprobs[int(q * (len(logprobs) - 1))] for q in (0, 0.25, 0.5, 0.75, 1)] if logprobs else []
    out["distiller"] = {"wall_s": first["wall_s"], "this_run_wall_s": wall, "inputs": manifest["inputs"],
                        "kept": manifest["kept"],
                        "rejected_by_stage": manifest["rejected_by_stage"], "by_domain": manifest["by_domain"],
                        "by_source_and_domain": by, "logprob_quartiles": quartiles,
                        "examples": [{"question": r["messages"][0]["content"], "answer": r["messages"][1]["content"],
                                      "domain": r["domain"]} for r in kept[:: max(1, len(kept) // 6)][:6]]}
    write_result(name, out)

    # 5. usefulness: distilled answers against the original answers to the same questions
    medquad = read_jsonl(inputs["medquad"])
    mine = [r for r in kept if Path(r["source"]["file"]).stem == "medquad"]
    n = len(mine)
    if n < BATCH:
        out["usefulness"] = {"skipped": f"only {n} accepted MedQuAD answers"}
        write_result(name, out)
        return
    from lightseek.fileio import atomic_write_text

    sets = {"distilled": [r["messages"] for r in mine],
            "original": [[r["messages"][0], {"role": "assistant", "content": medquad[r["source"]["index"]]["answer"]}]
                         for r in mine]}
    for label, convs in sets.items():  # "text" (the question) keys the train/validation split: the same for both
        atomic_write_text(RUNS / "useful" / f"{label}.jsonl", "".join(
            json.dumps({"text": m[0]["content"], "messages": m}, ensure_ascii=False) + "\n" for m in convs))
    from real_model_tasks import build

    from lightseek.eval.tasks import load_tasks

    trained_q = {" ".join(q.split()) for q, _ in map(question_answer, splits("medical")[0][:TRAINED])}
    trained_q |= {" ".join(r["messages"][0]["content"].split()) for r in mine}
    items = [i for i in load_tasks(build(200)["medquad"]) if " ".join(i["question"].split()) not in trained_q]
    from lightseek.adapters.finetune import split_examples
    from lightseek.data.instruct import load_instructions

    n_train = len(split_examples(load_instructions([RUNS / "useful" / "original.jsonl"]).examples, 0.05, 0)[0])
    steps = math.ceil(n_train / BATCH)  # one epoch
    useful = {"accepted_medquad": n, "trained_on": n_train, "steps": steps, "task_items": len(items),
              "runs": {"base": score(None, items)}}
    for label in sets:
        adapter, _ = lora_train(f"med-{label}", [RUNS / "useful" / f"{label}.jsonl"], RUNS / "useful" / label,
                                steps, ["--data.val_fraction=0.05", "--data.domain=medical"])
        useful["runs"][label] = score(adapter, items)
        out["usefulness"] = useful
        write_result(name, out)
    out["this_run_wall_s"] = time.perf_counter() - t0
    write_result(name, out)
    print(json.dumps({k: out[k] for k in ("distiller", "usefulness")}, indent=1)[:4000])


if __name__ == "__main__":
    main()
