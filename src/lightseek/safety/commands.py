"""`lightseek safety`: train the cascade's classifiers, check texts, evaluate on the fixed
validation splits."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def shared_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("LIGHTSEEK_SHARED_DATA") or SHARED)


def train(out: str | Path, data: str | Path, model: str | None = None, layer: int = 15,
          model_examples: int = 8000, harmless_per_source: int = 4000, seed: int = 0, log=print,
          extra: list[str | Path] | None = None) -> dict:
    """Fit the linear stage on every training example (and the model stage on a balanced sample
    of them when ``model`` is given); returns what was trained. ``extra``: files of labelled
    examples (LabelHub's safety export) trained on whole, their labels over the shared sets' for
    the same text."""
    from lightseek.errors import DataError
    from lightseek.safety.classifier import SafetyClassifier
    from lightseek.safety.data import for_training, load_examples, load_labelled

    Path(out).mkdir(parents=True, exist_ok=True)  # a folder that cannot be written fails now, not after the fit
    try:
        examples = load_examples(data, harmless_per_source, seed)
    except DataError:
        if not extra:
            raise
        examples = []
    train_set = for_training(examples)
    if extra:
        labelled = {e.text: e for path in extra for e in load_labelled(path)}
        train_set = [e for e in train_set if e.text not in labelled] + list(labelled.values())
        log(f"{len(labelled)} labelled examples from {', '.join(map(str, extra))}")
    if len({c for e in train_set for c in e.categories}) == 0 or all(e.harmful for e in train_set):
        raise DataError("the training examples need harmful and harmless texts both")
    log(f"{len(train_set)} training examples ({sum(e.harmful for e in train_set)} harmful) of {len(examples)}")
    sources = sorted({e.source for e in train_set})
    t0 = time.time()
    lin = SafetyClassifier("linear").fit([e.text for e in train_set], [e.categories for e in train_set])
    lin.save(out, {"sources": sources, "train_s": round(time.time() - t0, 1)})
    log(f"linear stage: {len(lin.heads)} heads in {time.time() - t0:.0f} s -> {out}/linear.pkl")
    done = {"linear": lin.card}
    if model:
        rng = random.Random(seed)
        harmful = [e for e in train_set if e.harmful]
        harmless = [e for e in train_set if not e.harmful]
        rng.shuffle(harmful)
        rng.shuffle(harmless)
        sample = harmful[:model_examples // 2] + harmless[:model_examples - min(len(harmful), model_examples // 2)]
        t0 = time.time()
        m = SafetyClassifier("model", model=model, layer=layer, C=0.5).fit([e.text for e in sample],
                                                                          [e.categories for e in sample])
        m.save(out, {"sources": sources, "train_s": round(time.time() - t0, 1)})
        log(f"model stage ({model}, layer {layer}): {len(sample)} examples in {time.time() - t0:.0f} s")
        done["model"] = m.card
    return done


def cmd_safety_train(args, overrides) -> int:
    train(args.out, shared_dir(args.data), args.model, args.layer, args.model_examples, args.harmless,
          extra=args.extra)
    return 0


def cmd_safety_check(args, overrides) -> int:
    from lightseek.safety.cascade import Moderator

    mod = Moderator(args.classifier, args.policy, args.rules)
    texts = args.texts or [line.rstrip("\n") for line in open(args.file, encoding="utf-8")]
    for text, d in zip(texts, mod.check(texts)):
        print(json.dumps({"text": text[:80], "action": d.action, "categories": d.categories, "stage": d.stage,
                          "harmful": round(d.harmful, 3)}, ensure_ascii=False))
    return 0


def add_safety_commands(sub, add: Callable) -> None:
    safety = sub.add_parser("safety", help="Content safety: train and check the moderation cascade.") \
        .add_subparsers(dest="sub", metavar="SUB")
    p = add("train", cmd_safety_train, "Train the cascade's classifiers on the shared safety data sets "
            "(fixed splits; evaluation-only sets are left out).", safety)
    p.add_argument("--out", required=True, help="folder for the classifiers")
    p.add_argument("--data", help="the shared data folder (default ../shared/data or $LIGHTSEEK_SHARED_DATA)")
    p.add_argument("--model", help="also train the model stage on this checkpoint's hidden states "
                   "(e.g. smollm2-135m-instruct)")
    p.add_argument("--layer", type=int, default=15, help="the model stage's layer")
    p.add_argument("--model-examples", type=int, default=8000, help="training texts for the model stage")
    p.add_argument("--harmless", type=int, default=4000, help="harmless texts per instruction or QA set")
    p.add_argument("--extra", nargs="+", metavar="JSONL", help="labelled examples {text, categories} trained on "
                   "as well (LabelHub's `label export --format safety`)")
    p = add("check", cmd_safety_check, "Moderate texts: the action, categories and deciding stage of each.", safety)
    p.add_argument("classifier", help="folder written by `lightseek safety train`")
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", help="one text per line")
    p.add_argument("--policy", help="policy YAML (default: every category blocks at 0.5)")
    p.add_argument("--rules", help="rules YAML (default: the package's default_rules.yaml)")
