"""`lightseek domains build`: labelled passages for the domain classifier from ../shared/data.

Documents are cut into passages (``min_chars``..``max_chars``), split into train / held-out by
a stable hash of the document (so chunks of one document never straddle the split), and
capped so that each domain has about ``per_domain`` passages shared fairly among its sources.
A second evaluation set holds texts written differently from the training passages:
questions, headlines, titles and headings, taken from held-out documents (or from texts that
no training passage contains), checked to occur in no training passage.

Writes train.jsonl, heldout.jsonl, questions.jsonl ({"text", "domain", "source", "doc"}),
manifest.json (counts per split, domain and source) and README.md into the output folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from lightseek.config import to_dict
from lightseek.data.domains.config import BuildConfig
from lightseek.data.domains.sources import SOURCES, read_source
from lightseek.errors import DataError
from lightseek.progress import progress

SPLITS = ("train", "heldout", "questions")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")


def stable_unit(*parts: str) -> float:
    """A number in [0, 1) from the sha256 of ``parts``: the same on every machine and run."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def passages(text: str, min_chars: int, max_chars: int) -> list[str]:
    """``text`` with whitespace tidied, cut at paragraph (then sentence) boundaries into passages
    of at most ``max_chars`` characters; pieces shorter than ``min_chars`` are dropped."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n|\n(?=\s)", text)]
    pieces = []
    for para in filter(None, paras):
        if len(para) <= max_chars:
            pieces.append(para)
            continue
        for sentence in filter(None, _SENTENCE_END.split(para)):
            pieces += [sentence[i:i + max_chars] for i in range(0, len(sentence), max_chars)]
    out, buf = [], ""
    for piece in pieces:
        if buf and len(buf) + 1 + len(piece) > max_chars:
            out.append(buf)
            buf = ""
        buf = f"{buf} {piece}" if buf else piece
    if buf:
        out.append(buf)
    return [p for p in out if len(p) >= min_chars]


def share(available: dict[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` among sources as evenly as their ``available`` counts allow (a source
    with fewer gives the rest to the others)."""
    take = {s: 0 for s in available}
    left, open_ = budget, sorted(available, key=lambda s: (available[s], s))
    while open_ and left > 0:
        each = left // len(open_)
        source = open_[0]
        if available[source] <= each or each == 0:
            n = min(available[source], max(each, 1 if each == 0 else each), left)
            take[source] = n
            left -= n
            open_.pop(0)
            continue
        for s in open_:
            take[s] = each
        left -= each * len(open_)
        for s in sorted(open_)[:left]:
            take[s] += 1
        break
    return take


def build(cfg: BuildConfig, out: str | Path) -> dict:
    """Build the three labelled sets into folder ``out`` (atomically); return the manifest."""
    from lightseek.fileio import write_dir_atomic

    root = Path(cfg.shared)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (the shared corpora; set --shared)")
    names = [n for n, (_, _, instruct) in SOURCES.items() if cfg.alpaca or not instruct]
    missing = [n for n in names if not (root / n).is_dir()]
    names = [n for n in names if n not in missing]
    pools, questions = {}, {}
    with progress(len(names), "reading corpora") as step:
        for name in names:
            pools[name], questions[name] = _read(root, name, cfg)
            step(1)
    domains = sorted({SOURCES[n][0] for n in names})
    if len(domains) < 2:
        raise DataError(f"{root}: corpora of at least two domains are needed, found {domains or 'none'}")
    rows = {"train": [], "heldout": []}
    for domain in domains:
        mine = [n for n in names if SOURCES[n][0] == domain]
        take = share({n: len(pools[n]) for n in mine}, cfg.per_domain)
        for n in mine:
            for split, text, doc in _pick(pools[n], take[n], cfg.short_fraction):
                rows[split].append({"text": text, "domain": domain, "source": n, "doc": doc})
    rows["questions"] = _second_set(questions, rows["train"], domains, cfg)
    manifest = _manifest(cfg, rows, missing)

    def fill(tmp: Path) -> None:
        for split in SPLITS:
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split])
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        (tmp / "README.md").write_text(_readme(manifest), encoding="utf-8")

    write_dir_atomic(out, fill)
    return manifest


def _read(root: Path, name: str, cfg: BuildConfig) -> tuple[list, list]:
    """(passages as (short?, split, text, doc) in stable random order, second-set candidates).
    A ``short_fraction`` of the documents is cut into short passages (``short_chars``)."""
    pool, cands = [], []
    for doc in read_source(root, name, cfg.section_chars):
        held = stable_unit(name, doc.doc_id) < cfg.heldout_fraction
        short = stable_unit(name, doc.doc_id, "short") < cfg.short_fraction
        split = "heldout" if held else "train"
        size = min(cfg.short_chars, cfg.max_chars) if short else cfg.max_chars
        for k, text in enumerate(passages(doc.text, min(cfg.min_chars, size - 1), size)):
            pool.append((stable_unit(name, doc.doc_id, str(k)), short, split, text, doc.doc_id))
        if held or doc.questions_unseen:
            for k, q in enumerate(doc.questions):
                q = " ".join(q.split())
                if len(q) >= 4:
                    cands.append((stable_unit(name, doc.doc_id, "q", str(k)), q, doc.doc_id))
    pool.sort()
    cands.sort()
    return [p[1:] for p in pool], [c[1:] for c in cands]


def _pick(pool: list, n: int, short_fraction: float) -> list[tuple[str, str, str]]:
    """``n`` passages (split, text, doc): about ``short_fraction`` of them short ones."""
    short = [p[1:] for p in pool if p[0]]
    long = [p[1:] for p in pool if not p[0]]
    n_short = min(len(short), max(round(n * short_fraction), n - len(long)))
    return short[:n_short] + long[:n - n_short]


def _second_set(questions: dict, train: list[dict], domains: list[str], cfg: BuildConfig) -> list[dict]:
    """Per domain up to ``questions_per_domain`` unique texts that occur in no training passage."""
    seen_text = "\x00".join(r["text"] for r in train)
    used: set[str] = set()
    clean = {}
    for name, cands in questions.items():
        keep = []
        for q, doc in cands:
            if q not in used and " ".join(q.split()) not in seen_text:
                used.add(q)
                keep.append((q, doc))
            if len(keep) >= cfg.questions_per_domain:
                break
        clean[name] = keep
    rows = []
    for domain in domains:
        mine = [n for n in clean if SOURCES[n][0] == domain and clean[n]]
        take = share({n: len(clean[n]) for n in mine}, cfg.questions_per_domain)
        for n in mine:
            rows += [{"text": q, "domain": domain, "source": n, "doc": doc} for q, doc in clean[n][:take[n]]]
    return rows


def _manifest(cfg: BuildConfig, rows: dict, missing: list[str]) -> dict:
    counts = {}
    for split in SPLITS:
        by_domain = Counter(r["domain"] for r in rows[split])
        by_source = Counter((r["domain"], r["source"]) for r in rows[split])
        counts[split] = {"total": len(rows[split]), "domains": dict(sorted(by_domain.items())),
                         "sources": {f"{d}/{s}": n for (d, s), n in sorted(by_source.items())}}
    return {"config": to_dict(cfg), "counts": counts, "missing_sources": missing,
            "documents_per_split": {s: len({(r["source"], r["doc"]) for r in rows[s]}) for s in SPLITS[:2]}}


def _readme(manifest: dict) -> str:
    c = manifest["counts"]
    lines = [
        "# Domain classifier data", "",
        "Built by `lightseek domains build` from the shared corpora (each corpus folder's README.md",
        "gives its source and license). Every record is {\"text\", \"domain\", \"source\", \"doc\"}.", "",
        "- `train.jsonl`: passages of the training documents (answers, abstracts, articles, book",
        "  sections, contracts, laws, Wikipedia paragraphs, instruction outputs).",
        "- `heldout.jsonl`: passages of the held-out documents, chosen by a stable hash of the",
        "  document id, so no document has passages in both files.",
        "- `questions.jsonl`: the second evaluation set, written differently from the training text:",
        "  questions (MedQuAD, PubMedQA, FiQA, CMRC 2018, DRCD, patient questions of the medical",
        "  dialogues), Reuters headlines and Alpaca instructions of held-out documents; titles of",
        "  Chinese laws and of court cases (headings are removed from the training text);",
        "  CUAD clause excerpts of contracts that are not among the training contracts. None of these",
        "  texts occurs inside any training passage.", "",
        "| split | domain | source | texts |", "|---|---|---|---:|",
    ]
    for split in SPLITS:
        for key, n in c[split]["sources"].items():
            domain, source = key.split("/", 1)
            lines.append(f"| {split} | {domain} | {source} | {n} |")
        lines.append(f"| {split} | **all** | | **{c[split]['total']}** |")
    if manifest["missing_sources"]:
        lines += ["", "Missing corpora (skipped): " + ", ".join(manifest["missing_sources"])]
    return "\n".join(lines) + "\n"
