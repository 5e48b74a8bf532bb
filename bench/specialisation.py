"""Expert specialisation: which experts each kind of text uses.

Builds six corpora from ../shared/data (English books, classical Chinese poetry and prose,
medical Q&A, financial news, legal contracts) plus Python source from the standard library,
holds out 60 documents of each, trains the `tiny` dynamic MoE on the mixture of the rest, then
runs the CLI on the held-out parts:

    lightseek eval runs/specialisation/run --routing --data english=... poetry_zh=... ... --plot PNG

    python bench/specialisation.py [--steps 500] [--result NAME]

Writes runs/specialisation/ (corpora as JSONL, the run), docs/results/specialisation.png and
bench/results/specialisation.json, with the run's provenance (command, revision, date, machine,
versions) and the `lightseek eval` command it ran ("eval_command"). With other --steps than the default,
specialisation_steps-<N>.json and docs/results/specialisation_steps-<N>.png instead, so that a
probe never overwrites the main result; --result NAME writes NAME.json and NAME.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
HELD_OUT = 60          # documents per corpus kept out of training
MAX_CHARS = 1_500_000  # per corpus, so that no corpus dominates the mixture


def _chunks(text: str, size: int = 3000) -> Iterator[str]:
    buf, n = [], 0
    for para in text.split("\n\n"):
        buf.append(para)
        n += len(para)
        if n >= size:
            yield "\n\n".join(buf)
            buf, n = [], 0
    if buf:
        yield "\n\n".join(buf)


def _jsonl(path: Path, field: str) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)[field]


def corpora() -> dict[str, list[str]]:
    from lightseek.data.corpus import stdlib_documents
    from lightseek.data.domains.sources import poem_texts

    out = {
        "english": [c for f in sorted((SHARED / "en_gutenberg").glob("*.txt"))
                    for c in _chunks(f.read_text(encoding="utf-8"))],
        "poetry_zh": [t for f in sorted((SHARED / "zh_classical_poetry").glob("*/*.json"))
                      for t in poem_texts(json.loads(f.read_text(encoding="utf-8")))],
        "medical": [f"{q}\n{a}" for f in sorted((SHARED / "medical_medquad_en").glob("*.jsonl"))
                    for q, a in zip(_jsonl(f, "question"), _jsonl(f, "answer")) if a],
        "finance": [t for f in sorted((SHARED / "finance_reuters21578_en").glob("*.jsonl")) for t in _jsonl(f, "text")],
        "legal": [c for f in sorted((SHARED / "legal_cuad_en" / "full_contract_txt_sample").glob("*.txt"))
                  for c in _chunks(f.read_text(encoding="utf-8"))],
        "python": [c for d in stdlib_documents(8_000_000) if d.source.endswith(".py") for c in _chunks(d.text)],
    }
    for name, docs in out.items():
        kept, n = [], 0
        for i, d in enumerate(docs):  # an even sample across the corpus, up to MAX_CHARS
            if i % max(1, len(docs) // 2000) == 0 and d.strip():
                kept.append(d)
                n += len(d)
                if n >= MAX_CHARS:
                    break
        out[name] = kept
    return out


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "runs" / "specialisation"))
    ap.add_argument("--result", help="write bench/results/RESULT.json and docs/results/RESULT.png (default: "
                                     "specialisation, plus --steps when it is not the default)")
    args = ap.parse_args()
    stem = result_name("specialisation", args, {"steps": ap.get_default("steps")})
    if not SHARED.exists():
        sys.exit(f"{SHARED} is not here: this benchmark needs the shared corpora")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "corpora").mkdir(parents=True)
    held_out = {}
    for name, docs in corpora().items():
        write_jsonl(out / "corpora" / f"{name}_train.jsonl", docs[:-HELD_OUT])
        write_jsonl(out / "corpora" / f"{name}_heldout.jsonl", docs[-HELD_OUT:])
        held_out[name] = out / "corpora" / f"{name}_heldout.jsonl"
        print(f"{name}: {len(docs) - HELD_OUT} training documents, {HELD_OUT} held out")
    train_files = [str(p) for p in sorted((out / "corpora").glob("*_train.jsonl"))]
    lightseek = [sys.executable, "-m", "lightseek"]
    subprocess.run(lightseek + ["train", "--preset=tiny", f"--out_dir={out / 'run'}",
                                f"--data.inputs={json.dumps(train_files)}", f"--train.steps={args.steps}",
                                "--train.eval_every=250", "--train.ckpt_every=250", "--quiet"], check=True)
    png = ROOT / "docs" / "results" / f"{stem}.png"
    eval_cmd = lightseek + ["eval", str(out / "run"), "--routing", "--train.eval_batches=8", "--plot", str(png),
                            "--data", *[f"{n}={p}" for n, p in held_out.items()]]
    result = subprocess.run(eval_cmd, check=True, capture_output=True, text=True)
    print(result.stdout)
    out = write_result(stem, {**provenance(), "steps": args.steps, "eval_command": " ".join(eval_cmd[2:]),
                              "report": result.stdout})
    print(f"written {out}")


if __name__ == "__main__":
    main()
