"""The `lightseek domains build|train|eval|classify` commands (the CLI's argument parser lives in
lightseek.cli; these take its parsed arguments). Config keys come from ``--config YAML`` (its
``domains:`` section), then ``--domains.KEY=VALUE`` overrides, then the commands' own flags."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from lightseek.config import from_dict, load_yaml, parse_overrides
from lightseek.data.domains.classifier import DomainClassifier, read_labelled
from lightseek.data.domains.config import BuildConfig, DomainConfig
from lightseek.data.domains.metrics import evaluate, format_report, plot_confusion
from lightseek.errors import ConfigError, DataError
from lightseek.progress import progress

BATCH = 512  # texts classified per call: bounded memory on any input size


def domain_config(cls, args, overrides: list[str], flags: dict):
    """``cls`` (DomainConfig or BuildConfig) from YAML ``domains:``, overrides and flags."""
    data = dict(load_yaml(args.config).get("domains") or {}) if getattr(args, "config", None) else {}
    parsed = parse_overrides(overrides)
    for key in parsed:
        if key != "domains":
            raise ConfigError(f"unknown override --{key}... (domains commands take --domains.KEY=VALUE)")
    data.update(parsed.get("domains", {}))
    data.update({k: v for k, v in flags.items() if v is not None})
    return from_dict(cls, data, prefix="domains.")


def run_build(args, overrides: list[str]) -> dict:
    from lightseek.data.domains.build import build

    cfg = domain_config(BuildConfig, args, overrides, {"shared": args.shared})
    manifest = build(cfg, args.out)
    for split, c in manifest["counts"].items():
        per = ", ".join(f"{d} {n}" for d, n in c["domains"].items())
        print(f"{split:9s} {c['total']:6d} texts ({per})")
    print(f"written to {args.out} (see its README.md)")
    return manifest


def _train_files(data: str) -> tuple[Path, list[Path]]:
    """A folder made by `domains build` means its train.jsonl, evaluated on heldout.jsonl and
    questions.jsonl; anything else is the training data itself."""
    path = Path(data)
    if path.is_dir() and (path / "train.jsonl").is_file():
        return path / "train.jsonl", [p for p in (path / "heldout.jsonl", path / "questions.jsonl") if p.is_file()]
    return path, []


def run_train(args, overrides: list[str]) -> DomainClassifier:
    cfg = domain_config(DomainConfig, args, overrides, {
        "encoder": args.encoder, "model": args.model, "zero_shot": args.zero_shot, "threshold": args.threshold,
        "text_field": args.text_field,
        "label_field": args.label_field})
    train, evals = _train_files(args.data)
    evals += [Path(p) for p in args.eval or []]
    texts, labels, files = read_labelled(train, cfg.text_field, cfg.label_field)
    print(f"training on {len(texts):,} texts of {len(set(labels))} domains from {train}", flush=True)
    from rich.console import Console

    with Console(stderr=True).status("fitting features and logistic regression"):
        clf = DomainClassifier.fit(texts, labels, cfg, files)
    metrics = {}
    for path in evals:
        report = evaluate_file(clf, path)
        metrics[path.stem] = {"file": str(path), **report}
        print(format_report(report, title=f"{path.stem} ({path})") + "\n")
    clf.meta["metrics"] = metrics
    out = clf.save(args.out)
    print(f"domain classifier ({', '.join(clf.domains)}; threshold {clf.threshold}) written to {out}")
    return clf


def evaluate_file(clf: DomainClassifier, path, text_field: str | None = None,
                  label_field: str | None = None) -> dict:
    """Metrics of ``clf`` (threshold applied) on a labelled file."""
    texts, labels, _ = read_labelled(path, text_field or clf.config.text_field,
                                     label_field or clf.config.label_field)
    predicted = []
    with progress(len(texts), f"classifying {Path(path).name}") as step:
        for start in range(0, len(texts), BATCH):
            predicted += [d for d, _ in clf.predict(texts[start:start + BATCH])]
            step(len(texts[start:start + BATCH]))
    order = clf.domains + ([clf.config.fallback] if clf.config.fallback not in clf.domains else [])
    return evaluate(labels, predicted, order)


def run_eval(args, overrides: list[str]) -> dict:
    if overrides:
        raise ConfigError(f"unexpected {overrides[0]} (eval takes --threshold, --text-field, --label-field)")
    clf = DomainClassifier.load(args.model, threshold=args.threshold)
    report = evaluate_file(clf, args.data, args.text_field, args.label_field)
    print(format_report(report, title=f"{args.data} (threshold {clf.threshold})"))
    if args.plot:
        title = f"{Path(args.data).name}: macro-F1 {report['macro_f1']:.3f}"
        print(f"confusion matrix plot: {plot_confusion(report, args.plot, title=title)}")
    if args.json:
        from lightseek.fileio import write_json_atomic

        write_json_atomic(args.json, {"model": str(args.model), "data": str(args.data),
                                      "threshold": clf.threshold, **report})
    return report


def _lines(source: str) -> Iterator[tuple[int, str]]:
    import contextlib

    try:
        f = contextlib.nullcontext(sys.stdin) if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise DataError(f"{source}: cannot read: {e.strerror or e}") from None
    with f as lines:
        try:
            for lineno, line in enumerate(lines, start=1):
                yield lineno, (line.removeprefix("\ufeff") if lineno == 1 else line).rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{source}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _records(source: str, fmt: str, text_field: str) -> Iterator[tuple[dict, str]]:
    """(output record, text) per non-empty input line; JSONL or plain text lines."""
    from lightseek.data.corpus import record_text

    name = "<stdin>" if source == "-" else source
    for lineno, line in _lines(source):
        if not line.strip():
            continue
        if fmt == "auto":
            fmt = "jsonl" if line.lstrip().startswith("{") else "text"
        if fmt == "text":
            yield {"text": line}, line
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{name}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield record, record_text(record, [text_field], f"{name}:{lineno}")


def run_classify(args, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"unexpected {overrides[0]} (classify takes --threshold, --text-field, --format)")
    clf = DomainClassifier.load(args.model, threshold=args.threshold)
    fmt = args.format
    if fmt == "auto" and args.input != "-":
        fmt = "jsonl" if Path(args.input).suffix.lower() == ".jsonl" else "text"
    text_field = args.text_field or clf.config.text_field
    if not args.out:
        return _classify_to(clf, _records(args.input, fmt, text_field), sys.stdout)
    from lightseek.fileio import atomic_open

    out = Path(args.out)
    with atomic_open(out) as f:
        n = _classify_to(clf, _records(args.input, fmt, text_field), f)
    print(f"{n:,} texts classified into {out}", file=sys.stderr)
    return n


def _classify_to(clf: DomainClassifier, records: Iterator[tuple[dict, str]], f) -> int:
    n, batch = 0, []

    def flush() -> None:
        for (record, _), (domain, conf) in zip(batch, clf.predict([t for _, t in batch])):
            f.write(json.dumps({**record, "domain": domain, "confidence": round(conf, 4)}, ensure_ascii=False) + "\n")
        batch.clear()

    for item in records:
        batch.append(item)
        n += 1
        if len(batch) >= BATCH:
            flush()
    flush()
    return n
