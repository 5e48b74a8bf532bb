"""The stats report of a pipeline run, from its manifest: per step how many records and bytes
it removed (with a few examples), what was kept, languages, domains and PII replaced. Written
as stats.json and stats.md; made from the manifest alone, so a resumed run reports the same."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lightseek.fileio import write_bytes_atomic, write_json_atomic


def build_stats(manifest: dict, examples: int) -> dict:
    shards = [manifest["shards"][k] for k in sorted(manifest["shards"], key=int)]
    steps = manifest["config"]["steps"]
    per_step = {s: {"records": 0, "bytes": 0, "by_reason": Counter(), "examples": []} for s in steps}
    pii, langs, domains = Counter(), Counter(), Counter()
    for entry in shards:
        for name, stat in entry["removed"].items():
            agg = per_step[name]
            agg["records"] += stat["records"]
            agg["bytes"] += stat["bytes"]
            agg["by_reason"].update(stat["by_reason"])
            for ex in stat["examples"]:  # the first few of each kind of reason, in input order
                if sum(e["kind"] == ex["kind"] for e in agg["examples"]) < examples:
                    agg["examples"].append(ex)
        pii.update(entry["pii"])
        langs.update(entry["langs"])
        domains.update(entry["domains"])
    for agg in per_step.values():
        agg["by_reason"] = dict(sorted(agg["by_reason"].items(), key=lambda kv: (-kv[1], kv[0])))
    totals = {key: sum(e[key] for e in shards) for key in ("records_in", "bytes_in", "records_kept", "bytes_kept")}
    totals["shards"] = len(shards)
    return {"tier": manifest["tier"], "config_hash": manifest["config_hash"], "complete": manifest["complete"],
            "totals": totals, "steps": per_step, "pii": dict(sorted(pii.items())),
            "langs": dict(sorted(langs.items())), "domains": dict(sorted(domains.items()))}


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_markdown(stats: dict) -> str:
    t = stats["totals"]
    lines = [f"# Pipeline stats: {stats['tier']} tier", "",
             (f"Input: {t['records_in']:,} records, {t['bytes_in'] / 1e6:.2f} MB in {t['shards']} shards. "
              f"Kept: {t['records_kept']:,} records ({_pct(t['records_kept'], t['records_in'])}), "
              f"{t['bytes_kept'] / 1e6:.2f} MB. Config hash `{stats['config_hash'][:12]}`."), "",
             "| step | records removed | % of input | MB removed | % of input bytes | by reason |",
             "|---|---:|---:|---:|---:|---|"]
    for name, s in stats["steps"].items():
        reasons = ", ".join(f"{k} {v:,}" for k, v in s["by_reason"].items()) or "-"
        lines.append(f"| {name} | {s['records']:,} | {_pct(s['records'], t['records_in'])} | "
                     f"{s['bytes'] / 1e6:.3f} | {_pct(s['bytes'], t['bytes_in'])} | {reasons} |")
    for title, counts in (("Languages kept", stats["langs"]), ("Domains kept", stats["domains"]),
                          ("PII replaced", stats["pii"])):
        if counts:
            lines += ["", f"{title}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())]
    lines += ["", "## Examples of removed records"]
    for name, s in stats["steps"].items():
        if not s["examples"]:
            continue
        lines += ["", f"### {name}"]
        for ex in s["examples"]:
            where = f"{ex['source']}#{ex['index']}" + (f"@{ex['offset']}" if ex["offset"] is not None else "")
            snippet = " ".join(ex["text"].split())[:120].replace("|", "\\|")
            lines.append(f"- `{where}`: {ex['reason']} | {snippet}")
    return "\n".join(lines) + "\n"


def write_report(out: Path, manifest: dict, examples: int) -> dict:
    stats = build_stats(manifest, examples)
    write_json_atomic(out / "stats.json", stats)
    write_bytes_atomic(out / "stats.md", render_markdown(stats).encode("utf-8"))
    return stats
