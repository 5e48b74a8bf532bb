"""Which experts each kind of text uses in SmolLM2 converted to a dynamic MoE, and how many.

`lightseek eval CKPT --data NAME=FILE ... --routing --plot PNG` on six kinds of text, about
--chars characters each: medical (MedQuAD answers), finance (FiQA answers), legal (CUAD
contracts), code (Python source of an installed library), English prose (State of the Union
addresses) and Chinese (CMRC 2018 Wikipedia passages; the model is English-first). Per kind:
perplexity, the average number of experts per token that dynamic routing spent, and each
expert's share per layer; the specialisation score (0 = every kind uses the experts alike,
1 = each has its own).

    python bench/moefy_routing.py [--ckpt CKPT] [--chars 40000]

The default checkpoint is the conversion `python bench/moefy.py` made (16 experts, dynamic
routing at 8). Writes bench/results/moefy_routing.json and docs/results/moefy_routing.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RUNS = ROOT / "runs" / "moefy_bench"


def corpora(chars: int, folder: Path) -> list[str]:
    """NAME=FILE items, one text file of about ``chars`` characters per kind."""
    import rich
    from moefy import eval_sources

    src = eval_sources()
    code = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(rich.__file__).parent.glob("*.py")))
    cmrc = json.loads((SHARED / "zh_cmrc2018_wiki" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    texts = {"medical": "\n\n".join(src["medical"]), "finance": "\n\n".join(src["finance"]),
             "legal": "\n\n".join(src["legal"]), "code": code, "prose": "\n\n".join(src["speeches"]),
             "chinese": "\n\n".join(r["context_text"] for r in cmrc)}
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for name, text in texts.items():
        budget = chars // 3 if name == "chinese" else chars  # about as many tokens as the others
        path = folder / f"{name}.txt"
        path.write_text(text[:budget], encoding="utf-8")
        items.append(f"{name}={path}")
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", help="a converted checkpoint (default: bench/moefy.py's conversion)")
    ap.add_argument("--chars", type=int, default=40_000)
    ap.add_argument("--result")
    args = ap.parse_args()
    stem = result_name("moefy_routing", args, {"ckpt": None, "chars": 40_000})

    import torch
    from moefy import latest_conversion

    from lightseek.eval.run import run_eval
    from lightseek.train.config import load_run_config

    ckpt = args.ckpt or str(latest_conversion())
    plot = ROOT / "docs" / "results" / f"{stem}.png"
    cfg = load_run_config(None, ["--train.seq_len=256", "--train.batch_size=8"])
    out = run_eval(ckpt, cfg, data=corpora(args.chars, RUNS / "routing_text"), routing=True, plot=str(plot))
    print(out["text"])
    kinds = {name: {"ppl": r["ppl"], "avg_k": r["avg_k"], "tokens": r["tokens"],
                    "layers": [{"layer": x["layer"], "avg_k": x["avg_k"], "tokens_per_expert": x["tokens_per_expert"]}
                               for x in r["routing"]]}
             for name, r in out["corpora"].items()}
    path = write_result(stem, {**provenance(torch.get_num_threads()), "checkpoint": Path(ckpt).name,
                               "chars": args.chars, "kinds": kinds, "specialisation": out["specialisation"]})
    print(f"wrote {path} and {plot}")


if __name__ == "__main__":
    main()
