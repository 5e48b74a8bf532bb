"""Knowledge distillation from larger domain teachers into a student with at most a quarter of
their active parameters, against the same student trained on the same data without distillation.

On the shared base checkpoint (runs/base, built by recipes/base.yaml when missing) and the
domain folders of ../shared/data (medical, finance, legal; English and Chinese). Two set-ups:

--setup base-student (default): the student is the base model itself, as in the data layer's
  design (experts -> base).
  1. teachers: for each domain, the base grown in depth (`lightseek.model.grow.expand_depth`:
     identity blocks inserted, 4 -> 34 layers, so the student has under 25% of its active
     parameters) trains on that domain (75% of the rows) while keeping a KL tie to the base on
     general text (25%). --shared-teacher trains one grown teacher on all domains instead.
  2. students: two copies of the base train for the same steps on the same rows:
       distilled    each domain row taught by the teacher, general rows by the base
       data only    next-token loss alone

--setup small-student: the teachers are the base fine-tuned per domain (base -> expert, with
  the KL tie), and the students are a new 48-wide, 2-layer model trained from scratch.

Reported: per-domain validation perplexity of the base, the teacher(s) and both students, and
retention = teacher perplexity / student perplexity. Validation documents are held out by the
project's one hash rule with the base run's seed and val_fraction, so no model trained on them.
Two sets of windows from them: the first --eval-windows of each domain, which the set-up and
step counts were chosen on, and the --fresh-windows after those, which were looked at only to
report (a check that the choices did not fit the first set).

    python bench/distill.py [--setup base-student] [--teacher-steps 200] [--student-steps 900] [--reuse]

--reuse measures runs already finished in --out instead of training them again (for example the
teachers, when only the students change): a run is taken when its config is the same and the
checkpoints it started from and learned from still hold the weights it recorded.

Also reports, when their benchmarks have written results, the domain classifier's macro-F1
(bench/domains.py) and the cleaning pipeline's throughput (bench/pipeline.py).
Prints a markdown table and writes bench/results/distill_<setup>[-shared].json with the run's
provenance (command, revision, date, machine, versions): distill_base-student.json,
distill_base-student-shared.json or distill_small-student.json. A run with other settings than
the set-up's defaults (--domains, step counts, learning rates, loss weights, batch, windows, seed,
--base, --teacher-copies) writes distill_<setup>[-shared]_<those>.json instead (for example
distill_base-student_domains-finance_teacher-steps-20.json), so that a probe never overwrites a
main result; --result NAME writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import RESULTS, ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
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


def run(overrides: list[str], label: str, args) -> dict:
    """Train one run of ``lightseek distill train`` and measure it on the fresh windows too. With
    ``args.reuse``, a finished run in the same folder under the same config is measured again
    instead of trained again."""
    from lightseek.config import to_dict
    from lightseek.distill.train import distill_train, load_distill_config
    from lightseek.train.metrics import read_metrics

    cfg = load_distill_config(None, overrides)
    out = Path(cfg.out_dir)
    if args.reuse and finished(out, to_dict(cfg), inputs(cfg)):
        measured, wall = ppl(out / "checkpoint", args), None
    else:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        summary = distill_train(cfg, show_progress=False)
        wall = time.time() - t0
        (out / "inputs.json").write_text(json.dumps(inputs(cfg), indent=2))
        measured = {"domains": summary["domains"], **ppl(out / "checkpoint", args, first=False)}
    domains, fresh = measured["domains"], measured["fresh"]
    step_s = statistics.median(r["step_s"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train")
    print(f"  {label}: " + (f"{wall / 60:.1f} min" if wall else "reused") + f" ({step_s:.2f} s/step); " +
          ", ".join(f"{d} {p:.2f}" for d, p in domains.items()) + "; fresh windows: " +
          ", ".join(f"{d} {p:.2f}" for d, p in fresh.items()), flush=True)
    return {"label": label, "wall_s": wall, "s_per_step": step_s, "domains": domains, "fresh": fresh,
            "checkpoint": str(out / "checkpoint")}


def inputs(cfg) -> dict:
    """The sha256 of the weights of every checkpoint a run starts from or learns from: the same
    paths may hold other weights later (a teacher trained again, a base rebuilt in place)."""
    from lightseek.adapters.store import base_fingerprint

    paths = {"student": cfg.student, **{f"teacher {d}": p for d, p in cfg.teachers.items()}}
    return {k: base_fingerprint(p)["sha256"] for k, p in paths.items() if p}


def finished(out: Path, config: dict, weights: dict) -> bool:
    """Whether ``out`` holds a run that trained all its steps under exactly ``config``, from and
    with checkpoints whose weights are ``weights`` (see `inputs`)."""
    import yaml

    from lightseek.train.metrics import read_metrics

    if not all((out / f).exists() for f in ("config.yaml", "checkpoint", "inputs.json")):
        return False
    if json.loads((out / "inputs.json").read_text()) != weights:
        return False

    def relative(text: str) -> str:  # the same run, whether its paths were given from ROOT or in full
        return text.replace(f"{ROOT}/", "")

    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    same = relative((out / "config.yaml").read_text()) == relative(yaml.safe_dump(config, sort_keys=False,
                                                                                  allow_unicode=True))
    return same and config["train"]["steps"] in steps


def active(ckpt_or_cfg) -> int:
    import torch

    from lightseek.model.checkpoint import load_model
    from lightseek.model.transformer import Transformer

    if isinstance(ckpt_or_cfg, (str, Path)):
        return load_model(ckpt_or_cfg).num_params()["active"]
    with torch.device("meta"):
        return Transformer(ckpt_or_cfg).num_params()["active"]


def ppl(ckpt: Path, args, first: bool = True) -> dict:
    """A checkpoint's per-domain validation perplexity (all domains and general text; the hash
    rule holds out the same documents whatever the mix), from one load of the model and the
    streams: ``fresh`` on the ``--fresh-windows`` windows after the first ``--eval-windows`` of
    each domain (windows that no choice of set-up or steps was ever made on), and with ``first``
    also ``domains`` on those first windows."""
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.distill.data import DistillDataConfig, build_streams
    from lightseek.distill.train import domain_perplexity
    from lightseek.model.checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(ckpt)
    dc = DistillDataConfig(sources=sources(list(DOMAINS)), text_field="text,context_text", cache=f"{args.out}/cache")
    val = build_streams(dc, Tokenizer.load(ckpt / "tokenizer.json"), 0).val
    model = load_model(ckpt)
    after = {d: stream[args.eval_windows * args.seq_len:] for d, stream in val.items()}
    out = {"fresh": domain_perplexity(model, after, args.seq_len, args.batch_size, args.fresh_windows)}
    if first:
        out["domains"] = domain_perplexity(model, val, args.seq_len, args.batch_size, args.eval_windows)
    return out


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
    ap.add_argument("--setup", choices=["base-student", "small-student"], default="base-student")
    ap.add_argument("--base", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="teacher training steps (default: 200 per domain teacher, 300 for --shared-teacher)")
    ap.add_argument("--shared-teacher", action="store_true",
                    help="base-student: one grown teacher trained on every domain instead of one per domain")
    ap.add_argument("--teacher-copies", type=int, default=10, help="base-student: identity blocks after each MoE layer")
    ap.add_argument("--student-steps", type=int, default=None, help="default: 900 (base-student), 800 (small-student)")
    ap.add_argument("--expert-lr", type=float, default=1e-3)
    ap.add_argument("--student-lr", type=float, default=None, help="default: 1e-3 (base-student), 3e-3 (small-student)")
    ap.add_argument("--ce-weight", type=float, default=0.5, help="next-token share of the students' distillation loss")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=64, help="validation windows per domain")
    ap.add_argument("--fresh-windows", type=int, default=256,
                    help="windows after those, per domain, measured only for the report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true",
                    help="measure, not retrain, runs already finished in --out under the same config")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_distill"))
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: distill_<setup>[-shared], plus "
                                     "the settings that differ from the set-up's defaults)")
    args = fill_defaults(ap.parse_args())
    if args.eval_windows < 1 or args.fresh_windows < 1:
        sys.exit("--eval-windows and --fresh-windows must be at least 1 (the fresh windows start after the others)")
    small = args.setup == "small-student"
    args.label = args.setup + ("-shared" if args.shared_teacher and not small else "")
    # the set-up's main run: its defaults, with the set-up flags of this run (they name the file already)
    main_run = fill_defaults(ap.parse_args(["--setup", args.setup] + ["--shared-teacher"] * args.shared_teacher))
    measured = ("base", "domains", "teacher_steps", "teacher_copies", "student_steps", "expert_lr", "student_lr",
                "ce_weight", "temperature", "batch_size", "seq_len", "eval_windows", "fresh_windows", "seed")
    stem = result_name(f"distill_{args.label}", args, {k: getattr(main_run, k) for k in measured})
    missing = [str(p) for d in args.domains for p in DOMAINS[d] if "*" not in str(p) and not Path(p).exists()]
    if missing or not SHARED.exists():
        sys.exit(f"skipped: the shared data is not here ({', '.join(missing) or SHARED})")
    from lora_vs_full import ensure_base

    ensure_base(Path(args.base))
    base = str(Path(args.base) / "checkpoint")
    out = Path(args.out) / args.label
    print("base model per-domain perplexity ...", flush=True)
    base_ppl = ppl(Path(base), args)
    teachers, student_flags, student_active, teacher_active = (small_student if small else base_student)(args, base, out)
    kd = [f"--teachers.{d}={teachers[d]['checkpoint']}" for d in args.domains] + [
        f"--teachers.general={base}", f"--kd.ce_weight={args.ce_weight}", f"--kd.temperature={args.temperature}"]

    def student(folder: str, extra: list[str], label: str) -> dict:
        return run(common(args, out / folder, args.student_steps, args.student_lr) + student_flags + [
            f"--data.sources=[{','.join(sources(args.domains))}]"] + extra, label, args)

    students = {"distilled": student("student_kd", kd, "student distilled"),
                "data only": student("student_ce", [], "student data only")}
    report(stem, args, base_ppl, teachers, students, student_active / teacher_active, teacher_active, student_active)


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The set-up's step counts and student learning rate where not given."""
    small = args.setup == "small-student"
    args.teacher_steps = args.teacher_steps or (300 if args.shared_teacher and not small else 200)
    args.student_steps = args.student_steps or (800 if small else 900)
    args.student_lr = args.student_lr or (3e-3 if small else 1e-3)
    return args


def check_ratio(student_active: int, teacher_active: int) -> None:
    """The issue's bound, checked before any training: at most a quarter of the teacher's active
    parameters (embedding included). Training does not change either count."""
    if student_active > 0.25 * teacher_active:
        sys.exit(f"the student has {student_active / teacher_active:.1%} of the teachers' active parameters; "
                 f"it must have at most 25%")


def small_student(args, base: str, out: Path) -> tuple[dict, list[str], int, int]:
    """Per-domain experts (base -> expert with the KL tie); a new small student. Returns the
    teachers' runs, the student's flags and the student's and a teacher's active parameters."""
    from lightseek.model.config import preset

    student_active, teacher_active = active(preset("tiny", vocab_size=8192, **STUDENT)), active(base)
    check_ratio(student_active, teacher_active)
    experts = {d: run(common(args, out / "experts" / d, args.teacher_steps, args.expert_lr) + [f"--student={base}"]
                      + domain_mix(d, base), f"expert {d}", args) for d in args.domains}
    flags = [f"--model.{k}={v}" for k, v in STUDENT.items()] + ["--preset=tiny", f"--tokenizer={Path(base) / 'tokenizer.json'}"]
    return experts, flags, student_active, teacher_active


def domain_mix(d: str, base: str) -> list[str]:
    """A domain teacher's rows: 75% its domain, 25% general text on which the base teaches
    (the KL tie that keeps general text as the base had it)."""
    mix = ",".join([f"{d}={p}" for p in DOMAINS[d]] + [f"general={p}" for p in GENERAL])
    return [f"--data.sources=[{mix}]", f"--data.weights.{d}=0.75", "--data.weights.general=0.25",
            f"--teachers.general={base}"]


def base_student(args, base: str, out: Path) -> tuple[dict, list[str], int, int]:
    """Teachers grown in depth from the base and trained with the KL tie, one per domain (or one
    for all with --shared-teacher); the base itself is the student."""
    from lightseek.model.checkpoint import load_model, save_checkpoint
    from lightseek.model.grow import expand_depth

    init = out / "teacher_init"
    model = load_model(base)
    grown = expand_depth(model, args.teacher_copies)
    student_active, teacher_active = model.num_params()["active"], grown.num_params()["active"]
    check_ratio(student_active, teacher_active)
    save_checkpoint(init, grown, tokenizer_file=Path(base) / "tokenizer.json")
    print(f"teacher: the base grown to {grown.cfg.n_layers} layers, {teacher_active:,} active parameters", flush=True)
    if args.shared_teacher:
        teacher = run(common(args, out / "teacher", args.teacher_steps, args.expert_lr) + [
            f"--student={init}", f"--data.sources=[{','.join(sources(args.domains))}]", f"--teachers.general={base}"],
            "teacher", args)
        return dict.fromkeys(args.domains, teacher), [f"--student={base}"], student_active, teacher_active
    teachers = {d: run(common(args, out / "teachers" / d, args.teacher_steps, args.expert_lr) + [f"--student={init}"]
                       + domain_mix(d, base), f"teacher {d}", args) for d in args.domains}
    return teachers, [f"--student={base}"], student_active, teacher_active


def report(stem: str, args, base_ppl: dict, teachers: dict, students: dict, ratio: float, teacher_active: int,
           student_active: int) -> None:
    print(f"\nstudent: {student_active:,} active parameters = {ratio:.1%} of the teacher's {teacher_active:,}")
    tables = {}
    for key, title in (("domains", f"the first {args.eval_windows} validation windows of each domain"),
                       ("fresh", f"the next {args.fresh_windows} windows (fresh: looked at only here)")):
        rows = []
        for d in args.domains:
            t = teachers[d][key][d]
            kd_ppl, ce_ppl = students["distilled"][key][d], students["data only"][key][d]
            rows.append({"domain": d, "base_ppl": base_ppl[key][d], "teacher_ppl": t, "distilled_ppl": kd_ppl,
                         "data_only_ppl": ce_ppl, "retention_distilled": t / kd_ppl,
                         "retention_data_only": t / ce_ppl, "distillation_wins": kd_ppl < ce_ppl})
        general = {"base": base_ppl[key]["general"], "distilled": students["distilled"][key]["general"],
                   "data only": students["data only"][key]["general"],
                   **{f"teacher {d}": teachers[d][key]["general"] for d in args.domains}}
        tables[key] = {"rows": rows, "general_ppl": general}
        print(f"\n{title}:\n")
        print("| domain | base ppl | teacher ppl | student distilled | student data only | retention distilled | "
              "retention data only | distillation wins |")
        print("|---|---:|---:|---:|---:|---:|---:|:---:|")
        for r in rows:
            print(f"| {r['domain']} | {r['base_ppl']:.2f} | {r['teacher_ppl']:.2f} | {r['distilled_ppl']:.2f} | "
                  f"{r['data_only_ppl']:.2f} | {r['retention_distilled']:.3f} | {r['retention_data_only']:.3f} | "
                  f"{'yes' if r['distillation_wins'] else 'no'} |")
        print("\ngeneral text ppl: " + ", ".join(f"{k} {v:.2f}" for k, v in general.items()))
    runs = {r["label"]: r for r in [*teachers.values(), *students.values()]}.values()  # one teacher may serve all
    print("time: " + ", ".join(f"{r['label']} {r['s_per_step']:.2f} s/step" for r in runs))
    import torch

    path = write_result(stem, {
        **provenance(torch.get_num_threads()), **tables["domains"], "fresh": tables["fresh"],
        "student_active": student_active, "teacher_active": teacher_active, "active_ratio": ratio,
        "teachers": teachers, "students": students, "args": vars(args), "data_layer": data_layer_figures()})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
