"""Distillation on the real model: students cut from SmolLM2-135M-Instruct to at most half its
active parameters, distilled from it, against the same students trained on the data alone.

1. Students. Candidates cut from the teacher with `lightseek.moefy.shrink` (blocks kept, then
   each FFN narrowed to its most important neurons), every one at <= 50% of the teacher's
   active parameters, embedding and head included (the head is tied, so counted once):
     every-other + FFN 62.5%   the issue's half-depth student, narrowed to fit
     influence:15 + FFN 62.5%  the 15 blocks that change the hidden state most (ShortGPT)
     influence:18 + FFN 45%    deeper and narrower
     influence:20 + FFN 37.5%  deeper still
   The one with the lowest perplexity on the calibration text (books, Alpaca, the standard
   library's documentation; never the held-out text) starts both runs.
2. Training, the same rows for both runs (seed, steps, batch, learning rate):
     distilled   KL(teacher || student) on every token (`distill train`, kd.ce_weight 0)
     data only   next-token loss alone
   on four domains in equal shares: general (the calibration sources), medical (MedQuAD
   answers), finance (FiQA answers and Reuters news), legal (CUAD contracts), minus every
   document the held-out windows read and every question the multiple-choice tasks ask.
3. Scores: perplexity on the held-out windows of bench/moefy.py (speeches, medical, finance,
   legal, science: PubMedQA abstracts, never trained on), and the multiple-choice tasks of
   bench/real_model_tasks.py (the same items). Retention per score: multiple choice
   student / teacher (and above chance: (student - chance) / (teacher - chance)); perplexity
   1 - relative increase = 2 - student / teacher.

    python bench/distill_real.py [--steps 600] [--lr 3e-4] [--dtype bf16] [--eval-tokens 100000] [--items 200]

Training runs under bf16 autocast (fp32 weights and optimizer): on a CPU with AMX that halves a
step's time; --dtype fp32 trains in full precision. Scores are always computed in fp32.

Runs live in runs/distill_real/ and are reused when their settings match (a run interrupted
resumes from its last checkpoint). Writes bench/results/distill_real.json after each phase
(a probe with other settings: distill_real_<those>.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RUNS = ROOT / "runs" / "distill_real"
NAME = "smollm2-135m-instruct"
CANDIDATES = [("every-other", 0.625), ("influence:15", 0.625), ("influence:18", 0.45), ("influence:20", 0.375)]
DEFAULTS = {"steps": 600, "lr": 3e-4, "dtype": "bf16", "batch": 8, "seq_len": 256, "eval_tokens": 100_000, "items": 200, "seed": 0}


# --- students ---------------------------------------------------------------------------------------
def cut(teacher, calib, influence, layers: str, ffn_share: float):
    from lightseek.moefy.shrink import drop_layers, ffn_width, narrow_ffn, parse_layers

    keep = parse_layers(layers, teacher.cfg.n_layers, influence)
    small = drop_layers(teacher, keep)
    width = ffn_width(teacher.cfg.dense_inter_dim, ffn_share)
    small, _ = narrow_ffn(small, calib, width)
    return small, keep, width


def calib_ppl(model, calib) -> float:
    import torch

    from lightseek.eval.perplexity import evaluate

    with torch.inference_mode():
        return evaluate(model, calib)["ppl"]


def choose_student(teacher_dir: Path, out: Path) -> dict:
    """Cut every candidate, keep the one of lowest calibration perplexity as a checkpoint."""
    import torch
    from moefy import calibration_mix

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import TOKENIZER, load_model, save_checkpoint
    from lightseek.moefy.shrink import block_influence

    summary_file = out / "choice.json"
    if summary_file.is_file() and (out / "student").is_dir():
        return json.loads(summary_file.read_text())
    teacher = load_model(teacher_dir).eval()
    calib = calibration_mix(Tokenizer.load(teacher_dir), teacher.cfg.max_seq_len)
    with torch.inference_mode():
        influence = block_influence(teacher, calib)
    total = teacher.num_params()["total"]
    rows, best = [], None
    for layers, share in CANDIDATES:
        t = time.perf_counter()
        with torch.inference_mode():
            small, keep, width = cut(teacher, calib, influence, layers, share)
        params = small.num_params()["total"]
        row = {"layers": layers, "ffn_share": share, "ffn_width": width, "kept": keep, "params": params,
               "params_share": params / total, "calib_ppl": calib_ppl(small, calib), "cut_s": time.perf_counter() - t}
        print(f"  {layers:14} FFN {width:5}  {params / 1e6:6.1f}M ({row['params_share']:.1%})  "
              f"calibration ppl {row['calib_ppl']:10.2f}", flush=True)
        rows.append(row)
        if best is None or row["calib_ppl"] < best[0]["calib_ppl"]:
            best = (row, small)
    choice = {"teacher_params": total, "teacher_calib_ppl": calib_ppl(teacher, calib), "influence": influence,
              "calib_tokens": sum(w.numel() for w in calib), "candidates": rows, "chosen": best[0]}
    save_checkpoint(out / "student", best[1], tokenizer_file=teacher_dir / TOKENIZER,
                    extra={"shrink": {k: best[0][k] for k in ("layers", "ffn_share", "kept", "ffn_width")}})
    summary_file.write_text(json.dumps(choice, indent=1))
    return choice


# --- training data ----------------------------------------------------------------------------------
def corpus(out: Path, held_out: set[str]) -> dict[str, Path]:
    """Per domain, JSONL documents for training: no document the held-out windows read, no
    question the multiple-choice tasks ask."""
    from moefy import _jsonl, heal_corpus
    from real_model_tasks import build

    from lightseek.fileio import atomic_write_text

    asked = {json.loads(line)["question"] for f in build(DEFAULTS["items"]).values()
             for line in f.read_text(encoding="utf-8").splitlines() if line.strip()}
    med = [f"{r['question']}\n{r['answer']}" for f in sorted((SHARED / "medical_medquad_en").glob("*.jsonl"))
           for r in _jsonl(f) if r.get("answer") and r.get("question") not in asked]
    fiqa = [f"{r['question']}\n{r['answer']}" for r in _jsonl(SHARED / "finance_fiqa_en" / "fiqa_648.jsonl")
            if r["question"] not in asked]
    reuters = [r["text"] for f in sorted((SHARED / "finance_reuters21578_en").glob("train_part*.jsonl"))
               for r in _jsonl(f) if r.get("text")]
    legal = [f.read_text(encoding="utf-8") for f in sorted((SHARED / "legal_cuad_en" / "full_contract_txt_sample").glob("*.txt"))]
    general = [r["text"] for r in _jsonl(heal_corpus(ROOT / "runs" / "moefy_bench" / "heal_corpus.jsonl"))]
    files = {}
    for domain, docs in (("general", general), ("medical", med), ("finance", fiqa + reuters), ("legal", legal)):
        kept = [d for d in docs if d not in held_out]
        files[domain] = out / f"{domain}.jsonl"
        atomic_write_text(files[domain], "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in kept))
    return files


def train(run: Path, student: Path, files: dict[str, Path], args, teacher: bool) -> dict:
    """One `distill train` run in its own process (reused when finished with the same settings)."""
    settings = {"student": str(student), "teacher": NAME if teacher else None, "steps": args.steps, "lr": args.lr,
                "dtype": args.dtype,
                "batch": args.batch, "seq_len": args.seq_len, "seed": args.seed,
                "files": {d: str(f) for d, f in files.items()}}
    done = run / "bench_run.json"
    if done.is_file() and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())
    cmd = [sys.executable, "-m", "lightseek", "distill", "train", f"--student={student}", f"--out_dir={run}",
           "--data.sources=[" + ",".join(f"{d}={f}" for d, f in files.items()) + "]", "--data.split_seed=0",
           f"--train.steps={args.steps}", f"--train.lr={args.lr}", f"--train.batch_size={args.batch}",
           f"--train.seq_len={args.seq_len}", f"--train.warmup_steps={max(1, args.steps // 20)}",
           f"--train.eval_every={args.steps}", "--train.eval_batches=4", "--train.ckpt_every=50",
           "--train.plots=false", f"--train.seed={args.seed}", f"--train.dtype={args.dtype}", "--eval_windows=16",
           "--quiet"]
    if teacher:
        cmd += [f"--teachers.{d}={NAME}" for d in files] + ["--kd.ce_weight=0"]
    resume = (run / "checkpoint").is_dir() and (run / "config.yaml").is_file()
    print(("resuming " if resume else "training ") + str(run.name), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd + (["--resume"] if resume else []), cwd=ROOT, check=True)
    wall = time.perf_counter() - t
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [m for m in metrics if "step_s" in m]
    result = {"settings": settings, "wall_s": wall, "resumed": resume,
              "step_s_median": sorted(m["step_s"] for m in steps)[len(steps) // 2] if steps else None,
              "tokens": args.steps * args.batch * args.seq_len,
              "final_train_loss": steps[-1].get("loss") if steps else None}
    done.write_text(json.dumps(result, indent=1))
    return result


# --- scores -------------------------------------------------------------------------------------------
def perplexities(ckpt, data) -> dict:
    from moefy import evaluate

    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    r = evaluate(load_model(resolve_checkpoint(ckpt)).eval(), data)
    return {"ppl": r["ppl"], "bpb": r["bpb"], "tokens": r["tokens"], "eval_s": r["eval_s"],
            "sources": {k: v["ppl"] for k, v in r["sources"].items()}}


def tasks(ckpt: str, items: int) -> dict:
    from real_model_tasks import build

    from lightseek.eval.run import run_tasks

    t = time.perf_counter()
    r = run_tasks(ckpt, [str(f) for f in build(items).values()])["tasks"]
    return {"wall_s": time.perf_counter() - t, **{k: {f: v[f] for f in ("items", "acc", "acc_norm", "chance",
                                                                       "acc_norm_ci95")} for k, v in r.items()}}


def retention(models: dict, name: str) -> dict:
    """The student's scores relative to the teacher's."""
    t, s = models["teacher"], models[name]
    out = {}
    if "ppl" in s:
        out["ppl"] = {src: 2 - s["ppl"]["sources"][src] / t["ppl"]["sources"][src] for src in t["ppl"]["sources"]}
        out["ppl"]["all"] = 2 - s["ppl"]["ppl"] / t["ppl"]["ppl"]
    if "tasks" in s and "tasks" in t:
        names = [k for k in t["tasks"] if k != "wall_s"]
        out["tasks"] = {k: s["tasks"][k]["acc_norm"] / t["tasks"][k]["acc_norm"] for k in names}
        out["tasks_above_chance"] = {k: (s["tasks"][k]["acc_norm"] - t["tasks"][k]["chance"])
                                     / (t["tasks"][k]["acc_norm"] - t["tasks"][k]["chance"]) for k in names}
        out["tasks"]["mean"] = sum(out["tasks"][k] for k in names) / len(names)
        out["tasks_above_chance"]["mean"] = sum(out["tasks_above_chance"][k] for k in names) / len(names)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps of each student")
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=DEFAULTS["dtype"], help="training autocast")
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="rows per step")
    ap.add_argument("--seq-len", type=int, default=DEFAULTS["seq_len"])
    ap.add_argument("--eval-tokens", type=int, default=DEFAULTS["eval_tokens"], help="held-out tokens in all")
    ap.add_argument("--items", type=int, default=DEFAULTS["items"], help="multiple-choice items per task")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--result", help="write bench/results/RESULT.json")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"the shared data is not at {SHARED}: nothing to train or score on")
    from moefy import SEQ_LEN, eval_windows

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.models.fetch import fetch

    teacher_dir = Path(fetch(NAME))
    name = result_name("distill_real", args, DEFAULTS)
    RUNS.mkdir(parents=True, exist_ok=True)
    out = {**provenance(), "teacher": NAME, "settings": {k: getattr(args, k) for k in DEFAULTS},
           "eval_window": SEQ_LEN, "models": {}}

    def save() -> None:
        write_result(name, out)

    t0 = time.perf_counter()
    print("cutting the candidate students", flush=True)
    out["choice"] = choose_student(teacher_dir, RUNS)
    save()
    data = eval_windows(Tokenizer.load(teacher_dir), args.eval_tokens // 5)
    held_out = {doc for d in data.values() for doc in d["documents"]}
    files = corpus(RUNS / "corpus", held_out)
    out["corpus"] = {d: sum(1 for _ in f.open(encoding="utf-8")) for d, f in files.items()}
    student = RUNS / "student"
    runs = {label: RUNS / f"{stem}_{args.steps}_{args.lr:g}_{args.dtype}"
            for label, stem in (("distilled", "kd"), ("data only", "data"))}
    for label, run in runs.items():
        out["models"][label] = {"train": train(run, student, files, args, teacher=label == "distilled")}
        save()
    ckpts = {"teacher": NAME, "student at the cut": str(student),
             **{label: str(run / "checkpoint") for label, run in runs.items()}}
    for label, ckpt in ckpts.items():
        print(f"scoring {label}", flush=True)
        m = out["models"].setdefault(label, {})
        m["ppl"] = perplexities(ckpt, data)
        save()
        if label != "student at the cut":
            m["tasks"] = tasks(ckpt, args.items)
            save()
    for label in ckpts:
        if label != "teacher":
            out["models"][label]["retention"] = retention(out["models"], label)
    out["wall_s"] = time.perf_counter() - t0
    save()
    summarize(out)


def summarize(out: dict) -> None:
    models = out["models"]
    params = {"teacher": out["choice"]["teacher_params"]}
    sources = list(models["teacher"]["ppl"]["sources"])
    tasks_ = [k for k in models["teacher"]["tasks"] if k != "wall_s"]
    print("| model | params | ppl | " + " | ".join(sources) + " | " + " | ".join(tasks_) + " |")
    print("|---|---:|---:|" + "---:|" * (len(sources) + len(tasks_)))
    for label, m in models.items():
        cells = [f"{m['ppl']['ppl']:.2f}"] + [f"{m['ppl']['sources'][s]:.2f}" for s in sources]
        cells += [f"{m['tasks'][k]['acc_norm']:.3f}" if "tasks" in m else "-" for k in tasks_]
        n = params.get(label, out["choice"]["chosen"]["params"])
        print(f"| {label} | {n / 1e6:.1f}M | " + " | ".join(cells) + " |")
    for label, m in models.items():
        if "retention" in m:
            r = m["retention"]
            print(f"{label}: retention ppl {r['ppl']['all']:.3f}"
                  + (f", tasks {r['tasks']['mean']:.3f} (above chance {r['tasks_above_chance']['mean']:.3f})"
                     if "tasks" in r else ""))


if __name__ == "__main__":
    main()
