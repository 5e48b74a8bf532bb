"""Run the pipeline: read inputs, cut them into shards of ``shard_records`` records, pass each
shard through the steps, and write its kept records, its exclusions and its dedup state
atomically before recording it in the manifest. A rerun skips the shards the manifest lists
(after restoring the dedup state they saved), so a killed run resumes with nothing lost or
repeated; a changed config or input is refused unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from lightseek.config import to_dict
from lightseek.data.pipeline.config import PipelineConfig
from lightseek.data.pipeline.readers import Record, display_path, input_files, iter_inputs
from lightseek.data.pipeline.report import write_report
from lightseek.data.pipeline.steps import Step, build_steps
from lightseek.data.pipeline.store import (
    MANIFEST,
    jsonl_bytes,
    load_state,
    open_out_dir,
    save_state,
    shard_name,
)
from lightseek.fileio import write_bytes_atomic, write_json_atomic


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reason_kind(reason: str) -> str:
    """The measure or rule a reason names: "digit_ratio 0.61 > 0.30" -> "digit_ratio"."""
    return reason.split(" ", 1)[0]


def _where(rec: Record) -> dict:
    return {"source": rec.source, "index": rec.index, "offset": rec.offset}


def process_shard(records: list[Record], steps: list[Step], cfg: PipelineConfig,
                  seconds: Counter) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, excluded rows, manifest entry) for one shard; ``seconds`` gains each step's time."""
    removed = {s.name: {"records": 0, "bytes": 0, "by_reason": {}, "examples": []} for s in steps}
    excluded: list[dict] = []
    survivors = records
    for step in steps:
        t0 = time.perf_counter()
        reasons = step.apply_batch(survivors)
        seconds[step.name] += time.perf_counter() - t0
        stat, after = removed[step.name], []
        for rec, reason in zip(survivors, reasons):
            if reason is None:
                rec.steps.append(step.name)
                after.append(rec)
                continue
            kind = reason_kind(reason)
            stat["records"] += 1
            stat["bytes"] += rec.bytes_in
            stat["by_reason"][kind] = stat["by_reason"].get(kind, 0) + 1
            if sum(ex["kind"] == kind for ex in stat["examples"]) < cfg.output.examples:
                stat["examples"].append({**_where(rec), "kind": kind, "reason": reason, "text": rec.text[:160]})
            excluded.append({**_where(rec), "step": step.name, "reason": reason, "bytes": rec.bytes_in,
                             "sha256": _sha(rec.text), "text": rec.text[:cfg.output.excluded_text_chars]})
        survivors = after
    kept = [{"text": r.text, **_where(r), "sha256": _sha(r.text), **r.meta, "steps": r.steps} for r in survivors]
    entry = {
        "records_in": len(records), "bytes_in": sum(r.bytes_in for r in records),
        "records_kept": len(kept), "bytes_kept": sum(len(r["text"].encode("utf-8")) for r in kept),
        "removed": removed,
        "pii": dict(sorted(sum((Counter(r.meta.get("pii", {})) for r in survivors), Counter()).items())),
        "langs": dict(sorted(Counter(r.meta["lang"] for r in survivors if "lang" in r.meta).items())),
        "domains": dict(sorted(Counter(r.meta["domain"] for r in survivors if "domain" in r.meta).items())),
    }
    return kept, excluded, entry


def _shards(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    buf: list[Record] = []
    for rec in records:
        buf.append(rec)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _write_shard(out: Path, shard: int, kept: list[dict], excluded: list[dict], steps: list[Step],
                 entry: dict, manifest: dict) -> None:
    name = shard_name(shard)
    kept_bytes, excluded_bytes = jsonl_bytes(kept), jsonl_bytes(excluded)
    write_bytes_atomic(out / "kept" / f"{name}.jsonl", kept_bytes)
    write_bytes_atomic(out / "excluded" / f"{name}.jsonl", excluded_bytes)
    state = {k: v for s in steps for k, v in s.take_state().items()}
    if state:
        save_state(out / "state" / f"{name}.npz", state)
    entry["files"] = {"kept": f"kept/{name}.jsonl", "kept_sha256": hashlib.sha256(kept_bytes).hexdigest(),
                      "excluded": f"excluded/{name}.jsonl",
                      "excluded_sha256": hashlib.sha256(excluded_bytes).hexdigest()}
    manifest["shards"][str(shard)] = entry
    write_json_atomic(out / MANIFEST, manifest)  # the commit point: the shard is done


def _restore(out: Path, manifest: dict, steps: list[Step]) -> None:
    if not any(s.stateful for s in steps):
        return
    for shard in sorted(map(int, manifest["shards"])):
        state = load_state(out / "state" / f"{shard_name(shard)}.npz")
        for step in steps:
            step.restore(state)


def _progress(cfg: PipelineConfig):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=not cfg.output.progress)


def run_pipeline(cfg: PipelineConfig, root: str | Path | None = None, overwrite: bool = False,
                 on_shard: Callable[[int], None] | None = None) -> dict:
    """Clean ``cfg.input.paths`` into ``cfg.out_dir`` (both relative to ``root``, default the current
    folder). ``on_shard(k)`` runs after shard k is committed. Returns a summary with per-step seconds."""
    t_start = time.perf_counter()
    root = Path(root) if root is not None else Path.cwd()
    files = input_files(cfg.input.paths, root, cfg.input.exclude)
    fingerprint = [[display_path(f, root), f.stat().st_size] for f in files]
    config_hash = cfg.result_hash(fingerprint)
    out = Path(cfg.out_dir) if Path(cfg.out_dir).is_absolute() else root / cfg.out_dir
    manifest = open_out_dir(out, config_hash, overwrite) or {
        "config_hash": config_hash, "tier": cfg.tier, "config": to_dict(cfg), "inputs": fingerprint,
        "complete": False, "shards": {}}
    manifest["config"] = to_dict(cfg)  # same results (same hash); out_dir and progress may differ
    if cfg.domain.classifier and not Path(cfg.domain.classifier).is_absolute():
        cfg = dataclasses.replace(cfg, domain=dataclasses.replace(
            cfg.domain, classifier=str(root / cfg.domain.classifier)))
    steps = build_steps(cfg)
    seconds: Counter = Counter()
    resumed = len(manifest["shards"])
    if not manifest["complete"]:
        _restore(out, manifest, steps)
        total = sum(size for _, size in fingerprint)
        total = min(total, cfg.input.max_bytes) if cfg.input.max_bytes else total
        with _progress(cfg) as bar:
            task = bar.add_task(f"{cfg.tier} pipeline", total=total)
            n = 0
            for n, records in enumerate(_shards(iter_inputs(files, root, cfg.input.text_field, cfg.input.chunk_chars,
                                                            cfg.input.max_bytes), cfg.output.shard_records), start=1):
                shard = n - 1
                if str(shard) not in manifest["shards"]:
                    kept, excluded, entry = process_shard(records, steps, cfg, seconds)
                    t0 = time.perf_counter()
                    _write_shard(out, shard, kept, excluded, steps, entry, manifest)
                    seconds["write"] += time.perf_counter() - t0
                    if on_shard is not None:
                        on_shard(shard)
                bar.update(task, advance=sum(r.bytes_in for r in records),
                           description=f"{cfg.tier} pipeline: shard {shard + 1}")
            bar.update(task, completed=total)
        manifest.update(complete=True, n_shards=n)
        write_json_atomic(out / MANIFEST, manifest)
    stats = write_report(out, manifest, cfg.output.examples)
    wall = time.perf_counter() - t_start
    seconds["read_and_other"] = max(0.0, wall - sum(seconds.values()))
    return {**stats["totals"], "out_dir": str(out), "resumed_shards": resumed, "wall_s": wall,
            "seconds": dict(seconds)}
