"""Knowledge distillation from domain experts into a small student, against the same student
trained on the same data without distillation.

On the shared base checkpoint (runs/base, built by recipes/base.yaml when missing) and the
domain folders of ../shared/data (medical, finance, legal; English and Chinese):

1. experts: for each domain, the base model trains on that domain's text (75% of the rows)
   while keeping a KL tie to itself on general text (25%): distillation base -> expert;
2. students with at most a quarter of the experts' active parameters (embedding included) start
   from scratch and train on all domains plus general text for the same steps and rows:
     distilled    each row taught by its own domain's expert (general rows by the base)
     data only    the same student, the same batches, next-token loss alone
3. per-domain validation perplexity of the base, the expert, both students, and retention =
   expert perplexity / student perplexity.

Validation documents are held out by the project's one hash rule with the base run's seed and
val_fraction, so the base never trained on them either.

    python bench/distill.py [--expert-steps 200] [--student-steps 800] [--domains medical finance legal]

Also reports, when their benchmarks have written results, the domain classifier's macro-F1
(bench/domains.py) and the cleaning pipeline's throughput (bench/pipeline.py).
Prints a markdown table and writes bench/results/distill.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
DOMAINS = {
    "medical": [SHARED / "medical_medquad_en", SHARED / "medical_dialogue_zh" / "sample_IM_5000-6000.csv"],
    "finance": [SHARED / "finance_fiqa_en", f"{SHARED}/finance_reuters21578_en/train_part*.jsonl"],
    "legal": [SHARED / "legal_cuad_en" / "full_contract_txt_sample", f"{SHARED}/legal_laws_zh/*/**/*.md"],
}
GENERAL = [f"{SHARED}/en_gutenberg/austen-*.txt", SHARED / "en_us_presidential_speeches" / "state_union",
           SHARED / "zh_cmrc2018_wiki" / "cmrc2018_dev.json", SHARED / "zh_drcd_wiki_traditional" / "DRCD_dev.json"]
# a student with under a quarter of the tiny base's active parameters (embedding included)
STUDENT = {"dim": 48, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "moe_inter_dim": 40, "dense_inter_dim": 112}


def sources(domains: list[str]) -> list[str]:
    return [f"{d}={p}" for d in domains for p in DOMAINS[d]] + [f"general={p}" for p in GENERAL]


def common(args, out: Path, steps: int, lr: float) -> list[str]:
    return [f"--out_dir={out}", f"--train.steps={steps}", f"--train.lr={lr}", f"--train.batch_size={args.batch_size}",
            f"--train.seq_len={args.seq_len}", "--train.warmup_steps=20", f"--train.eval_every={steps}",
            "--train.eval_batches=4", f"--train.ckpt_every={steps}", "--train.plots=false",
            "--data.text_field=text,context_text", f"--data.cache={args.out}/cache", f"--eval_windows={args.eval_windows}",
            f"--train.seed={args.seed}", "--data.split_seed=0"]


def run(overrides: list[str], label: str) -> dict:
    from lightseek.distill.train import distill_train, load_distill_config
    from lightseek.train.metrics import read_metrics

    out = Path(next(o for o in overrides if o.startswith("--out_dir=")).split("=", 1)[1])
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    summary = distill_train(load_distill_config(None, overrides), show_progress=False)
    wall = time.time() - t0
    steps = summary["steps"]
    step_s = statistics.median(r["step_s"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train")
    print(f"  {label}: {steps} steps in {wall / 60:.1f} min ({step_s:.2f} s/step); " +
          ", ".join(f"{d} {p:.2f}" for d, p in summary["domains"].items()), flush=True)
    return {"label": label, "wall_s": wall, "s_per_step": step_s, "domains": summary["domains"],
            "checkpoint": summary["checkpoint"]}


def active(ckpt_or_cfg) -> int:
    import torch

    from lightseek.model.checkpoint import load_model
    from lightseek.model.transformer import Transformer

    if isinstance(ckpt_or_cfg, (str, Path)):
        return load_model(ckpt_or_cfg).num_params()["active"]
    with torch.device("meta"):
        return Transformer(ckpt_or_cfg).num_params()["active"]


def base_ppl(base: Path, domains: list[str], args) -> dict:
    """The base model's per-domain validation perplexity on the same windows."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.distill.data import DistillDataConfig, build_streams
    from lightseek.distill.train import domain_perplexity
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(base)
    dc = DistillDataConfig(sources=sources(domains), text_field="text,context_text", cache=f"{args.out}/cache")
    streams = build_streams(dc, Tokenizer.load(ckpt / "tokenizer.json"), 0)
    return domain_perplexity(load_model(ckpt), streams.val, args.seq_len, args.batch_size, args.eval_windows)


def data_layer_figures() -> dict:
    """The classifier's and the pipeline's figures from their own benchmarks, when present."""
    out = {}
    for name in ("domains", "pipeline"):
        f = RESULTS / f"{name}.json"
        if f.exists():
            out[name] = json.loads(f.read_text())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    ap.add_argument("--expert-steps", type=int, default=200)
    ap.add_argument("--student-steps", type=int, default=800)
    ap.add_argument("--expert-lr", type=float, default=1e-3)
    ap.add_argument("--student-lr", type=float, default=3e-3)
    ap.add_argument("--ce-weight", type=float, default=0.5, help="next-token share of the students' distillation loss")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=64, help="validation windows per domain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_distill"))
    args = ap.parse_args()
    missing = [str(p) for d in args.domains for p in DOMAINS[d] if "*" not in str(p) and not Path(p).exists()]
    if missing or not SHARED.exists():
        sys.exit(f"skipped: the shared data is not here ({', '.join(missing) or SHARED})")
    sys.path.insert(0, str(ROOT / "bench"))
    from lora_vs_full import ensure_base

    from lightseek.model.config import preset

    ensure_base(Path(args.base))
    base = str(Path(args.base) / "checkpoint")
    out = Path(args.out)
    print("base model per-domain perplexity ...", flush=True)
    base_domains = base_ppl(Path(base), args.domains, args)

    experts = {}
    for d in args.domains:  # base -> expert, with a KL tie to the base on general text
        mix = ",".join([f"{d}={p}" for p in DOMAINS[d]] + [f"general={p}" for p in GENERAL])
        experts[d] = run(common(args, out / "experts" / d, args.expert_steps, args.expert_lr) + [
            f"--student={base}", f"--data.sources=[{mix}]", f"--data.weights.{d}=0.75", "--data.weights.general=0.25",
            f"--teachers.general={base}"], f"expert {d}")

    student_cfg = preset("tiny", vocab_size=8192, **STUDENT)
    ratio = active(student_cfg) / active(base)
    if ratio > 0.25:
        sys.exit(f"the student has {ratio:.1%} of the experts' active parameters; it must have at most 25%")
    model_flags = [f"--model.{k}={v}" for k, v in STUDENT.items()] + ["--preset=tiny", "--tokenizer=" + str(
        Path(base) / "tokenizer.json")]
    student_common = common(args, out / "x", args.student_steps, args.student_lr) + model_flags + [
        f"--data.sources=[{','.join(sources(args.domains))}]"]
    teachers = [f"--teachers.{d}={experts[d]['checkpoint']}" for d in args.domains] + [f"--teachers.general={base}"]
    kd = [f"--kd.ce_weight={args.ce_weight}", f"--kd.temperature={args.temperature}"]
    students = {
        "distilled": run([o if not o.startswith("--out_dir=") else f"--out_dir={out / 'student_kd'}"
                          for o in student_common] + teachers + kd, "student distilled"),
        "data only": run([o if not o.startswith("--out_dir=") else f"--out_dir={out / 'student_ce'}"
                          for o in student_common], "student data only"),
    }
    report(args, base_domains, experts, students, ratio, active(base), active(student_cfg))


def report(args, base_domains: dict, experts: dict, students: dict, ratio: float, teacher_active: int,
           student_active: int) -> None:
    rows = []
    for d in args.domains:
        t = experts[d]["domains"][d]
        kd_ppl, ce_ppl = students["distilled"]["domains"][d], students["data only"]["domains"][d]
        rows.append({"domain": d, "base_ppl": base_domains[d], "expert_ppl": t, "distilled_ppl": kd_ppl,
                     "data_only_ppl": ce_ppl, "retention_distilled": t / kd_ppl, "retention_data_only": t / ce_ppl,
                     "distillation_wins": kd_ppl < ce_ppl})
    general = {"base": base_domains["general"], "distilled": students["distilled"]["domains"]["general"],
               "data only": students["data only"]["domains"]["general"],
               **{f"expert {d}": experts[d]["domains"]["general"] for d in args.domains}}
    print(f"\nstudent: {student_active:,} active parameters = {ratio:.1%} of the experts' {teacher_active:,}\n")
    print("| domain | base ppl | expert ppl | student distilled | student data only | retention distilled | "
          "retention data only | distillation wins |")
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(f"| {r['domain']} | {r['base_ppl']:.2f} | {r['expert_ppl']:.2f} | {r['distilled_ppl']:.2f} | "
              f"{r['data_only_ppl']:.2f} | {r['retention_distilled']:.3f} | {r['retention_data_only']:.3f} | "
              f"{'yes' if r['distillation_wins'] else 'no'} |")
    print("\ngeneral text ppl: " + ", ".join(f"{k} {v:.2f}" for k, v in general.items()))
    print("time: " + ", ".join(f"{r['label']} {r['s_per_step']:.2f} s/step" for r in
                               [*experts.values(), *students.values()]))
    data_layer = data_layer_figures()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "distill.json"
    path.write_text(json.dumps({"rows": rows, "general_ppl": general, "student_active": student_active,
                                "teacher_active": teacher_active, "active_ratio": ratio,
                                "experts": experts, "students": students, "args": vars(args),
                                "data_layer": data_layer}, indent=2))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
