"""lm-evaluation-harness, as its users run it, against `lightseek serve`: the same multiple-choice
tasks scored through the OpenAI-compatible API and by lightseek's own evaluator, side by side.

The harness's `local-completions` model is the client: it finds the server's tokenizer through
`/tokenizer_info` and `/tokenize` (nothing from a model hub), sends its prompts as token ids,
16 per request, with `echo`, `logprobs` and `max_tokens=1`, and reads each continuation's
log-likelihood off the echoed prompt. The tasks are `bench/real_model_tasks.py`'s (MedQuAD, FiQA
and PubMedQA items, drawn with a fixed seed from the shared data), given to the harness as task
files over the same JSONL. lightseek's evaluator (`lightseek eval --tasks`, in this process, on
the same weights) scores the same items. Compared: each choice's log-likelihood, acc and
acc_norm per task, and the wall time of each way.

Then generation: the harness's `generate_until` on the same prompts (greedy, up to 24 tokens,
stopping at a newline), 16 prompts per request and so decoded 16 rows at a time, against
lightseek's engine answering each prompt alone. Compared: how many answers are identical.

Needs lm-eval (`pip install "lm_eval[api]"`; not a lightseek dependency) and the shared data.

    python bench/eval_harness.py [--items 50] [--batch 16]

Prints a markdown table and writes bench/results/eval_harness.json (eval_harness_<args>.json
for other --items or --batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402
from real_model_tasks import NAME, SHARED, build  # noqa: E402
from serve_load import free_port, launch  # noqa: E402

WORK = ROOT / "runs" / "eval_harness"

# each task file as a harness task; the prompt is the one lightseek's evaluator writes
# (`lightseek.eval.tasks.prompt_of`)
TASK_HEAD = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{ (context ~ '\\n') if context is defined and context else '' }}}}Question: {{{{question}}}}\\nAnswer:"
"""
TASK_YAML = TASK_HEAD + """output_type: multiple_choice
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
GEN_YAML = TASK_HEAD + """output_type: generate_until
doc_to_target: "{{{{choices[answer] if answer is number else answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_tokens}
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""
GEN_TOKENS = 24


def own_scores(files: dict[str, Path]) -> tuple[dict, dict, float]:
    """lightseek's evaluator on each task: per-item choice log-likelihoods, metrics, wall time."""
    import torch

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.tasks import choice_logprobs, load_tasks, task_metrics
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(NAME)
    model, tok = load_model(ckpt), Tokenizer.load(ckpt)
    model.eval()
    lls, metrics = {}, {}
    t = time.perf_counter()
    for task, f in files.items():
        items = load_tasks(f)
        with torch.inference_mode():
            lls[task] = [choice_logprobs(model, tok, item) for item in items]
        metrics[task] = task_metrics(items, lls[task])
    return lls, metrics, time.perf_counter() - t


def own_answers(files: dict[str, Path]) -> tuple[dict, float]:
    """lightseek's engine answering each task prompt alone: greedy, up to GEN_TOKENS tokens,
    stopping at a newline (what the harness asks the server for)."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.eval.tasks import load_tasks, prompt_of
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.serve.engine import Engine, GenParams

    ckpt = resolve_checkpoint(NAME)
    model, tok = load_model(ckpt), Tokenizer.load(ckpt)
    engine = Engine(model, tok, max_slots=1)
    params = GenParams(max_tokens=GEN_TOKENS, temperature=0, stop=["\n"])
    t = time.perf_counter()
    answers = {task: [engine.generate([tok.encode(prompt_of(item))], params)[0].text for item in load_tasks(f)]
               for task, f in files.items()}
    return answers, time.perf_counter() - t


def run_harness(files: dict[str, Path], port: int, batch: int, kind: str, template: str) -> tuple[dict, float]:
    """lm-eval's `local-completions` against the server on each task file written as a harness
    task of ``kind`` (its name prefix and folder) from ``template``: the harness's output (with
    every sample) and the wall time."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks_dir = WORK / kind
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for task, f in files.items():
        (tasks_dir / f"{task}.yaml").write_text(
            template.format(task=f"{kind}_{task}", data=f.resolve(), max_tokens=GEN_TOKENS), encoding="utf-8")
    t = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"base_url": f"http://127.0.0.1:{port}/v1/completions", "model": NAME, "batch_size": batch,
                    "num_concurrent": 1, "max_retries": 1, "max_length": 2048},
        tasks=[f"{kind}_{t}" for t in files], task_manager=TaskManager(include_path=str(tasks_dir)),
        log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    return out, time.perf_counter() - t


def samples_of(out: dict, name: str) -> list[dict]:
    """The harness's samples of one task, in document order."""
    return sorted(out["samples"][name], key=lambda s: s["doc_id"])


def harness_answers(files: dict[str, Path], port: int, batch: int) -> tuple[dict, float]:
    """lm-eval's `generate_until` through the server: each prompt's answer (document order)."""
    out, wall = run_harness(files, port, batch, "lightseek_gen", GEN_YAML)
    return {task: [s["resps"][0][0] for s in samples_of(out, f"lightseek_gen_{task}")] for task in files}, wall


def harness_scores(files: dict[str, Path], port: int, batch: int) -> tuple[dict, dict, float]:
    """lm-eval's multiple-choice scoring through the server: per-item choice log-likelihoods (in
    document order), acc and acc_norm, wall time."""
    out, wall = run_harness(files, port, batch, "lightseek_mc", TASK_YAML)
    lls, metrics = {}, {}
    for task in files:
        samples = samples_of(out, f"lightseek_mc_{task}")
        lls[task] = [[r[0][0] for r in s["resps"]] for s in samples]
        m = out["results"][f"lightseek_mc_{task}"]
        metrics[task] = {"items": len(samples), "acc": m["acc,none"], "acc_norm": m["acc_norm,none"]}
    return lls, metrics, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=50, help="items per task")
    ap.add_argument("--batch", type=int, default=16, help="the harness's prompts per request")
    ap.add_argument("--threads", type=int, default=2, help="the server's PyTorch threads")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"the shared data is not at {SHARED}: nothing to build the tasks from")
    try:
        harness_version = version("lm_eval")
    except Exception:  # noqa: BLE001 -- any reason it cannot be found means the same
        sys.exit("this benchmark drives lm-evaluation-harness: pip install \"lm_eval[api]\"")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task files are local; nothing to download
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lightseek.models.fetch import fetch

    fetch(NAME)
    files = build(args.items)
    own_ll, own_m, own_wall = own_scores(files)
    print(f"lightseek eval: {own_wall:.0f} s", flush=True)
    own_gen, own_gen_wall = own_answers(files)
    print(f"lightseek engine, one prompt at a time: {own_gen_wall:.0f} s", flush=True)
    port = free_port()
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "server.log", "w+b") as log:
        server = launch([sys.executable, "-m", "lightseek", "serve", NAME, "--port", str(port), "--max-len", "2048",
                         "--max-waiting", str(max(64, 2 * args.batch)), "--threads", str(args.threads)], port, log=log)
        try:
            h_ll, h_m, h_wall = harness_scores(files, port, args.batch)
            h_gen, h_gen_wall = harness_answers(files, port, args.batch)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"lm-eval through the server: {h_wall:.0f} s", flush=True)
    rows = []
    for task in files:
        pairs = [(a, b) for own, got in zip(own_ll[task], h_ll[task]) for a, b in zip(own, got, strict=True)]
        same_pick = sum(max(range(len(o)), key=o.__getitem__) == max(range(len(g)), key=g.__getitem__)
                        for o, g in zip(own_ll[task], h_ll[task]))
        rows.append({"task": task, "items": own_m[task]["items"], "choices": len(pairs),
                     "max_abs_ll_diff": max(abs(a - b) for a, b in pairs),
                     "same_argmax_items": same_pick,
                     "lightseek": {k: own_m[task][k] for k in ("acc", "acc_norm")},
                     "harness": {k: h_m[task][k] for k in ("acc", "acc_norm")},
                     "answers_identical": sum(a == b for a, b in zip(own_gen[task], h_gen[task], strict=True)),
                     "answers_differing": [{"item": i, "lightseek": a, "harness": b} for i, (a, b)
                                           in enumerate(zip(own_gen[task], h_gen[task])) if a != b][:5]})
    print("| task | items | choices | max abs log-likelihood difference | acc (lightseek / lm-eval) | "
          "acc_norm (lightseek / lm-eval) | generation |\n|---|---:|---:|---:|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['items']} | {r['choices']} | {r['max_abs_ll_diff']:.2e} | "
              f"{r['lightseek']['acc']:.3f} / {r['harness']['acc']:.3f} | "
              f"{r['lightseek']['acc_norm']:.3f} / {r['harness']['acc_norm']:.3f} | "
              f"{r['answers_identical']} / {r['items']} answers identical |")
    name = result_name("eval_harness", args, {"items": 50, "batch": 16})
    write_result(name, {**provenance(threads=args.threads), "lm_eval": harness_version, "model": NAME,
                        "args": vars(args), "lightseek_wall_s": own_wall, "harness_wall_s": h_wall,
                        "generation": {"max_tokens": GEN_TOKENS, "stop": "\n", "lightseek_alone_wall_s": own_gen_wall,
                                       "harness_wall_s": h_gen_wall},
                        "rows": rows})


if __name__ == "__main__":
    main()
