"""Structured outputs on the real model: do json_schema answers validate, and what does the mask cost?

200 chat requests (MedQuAD and FiQA questions from ../shared/data, each asking for a JSON answer
with one of SCHEMAS in turn) go through lightseek's serving engine twice, 16 at a time:

  constrained    response_format json_schema (llguidance masks every step, `serve/grammar.py`)
  free           the same prompts and sampling without response_format, each request generating
                 exactly as many tokens as its constrained answer (ignore_eos), so both runs
                 prefill and decode the same amounts in the same batches and differ only by
                 the masks

Reported: how many constrained answers finish, parse as JSON and validate against their schema
(jsonschema), and which the engine closed early to fit max_tokens; generated tokens, wall time and output tokens/s of each run, and the constrained
run's throughput relative to the free one (the cost of the masks).

    python bench/structured.py [--model smollm2-135m-instruct] [--requests 200] [--slots 16]
                               [--max-tokens 256]

Prints a table and writes bench/results/structured.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SHORT = {"type": "string", "maxLength": 80}
SCHEMAS = [
    ("a triage card", {"type": "object", "properties": {
        "topic": SHORT, "severity": {"enum": ["low", "medium", "high"]}, "see_a_doctor": {"type": "boolean"}},
        "required": ["topic", "severity", "see_a_doctor"], "additionalProperties": False}),
    ("a short answer with a confidence from 0 to 100", {"type": "object", "properties": {
        "answer": {"type": "string", "maxLength": 200}, "confidence": {"type": "integer", "minimum": 0,
                                                                       "maximum": 100}},
        "required": ["answer", "confidence"], "additionalProperties": False}),
    ("up to three keywords and a category", {"type": "object", "properties": {
        "keywords": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3},
        "category": {"enum": ["medicine", "finance", "law", "other"]}},
        "required": ["keywords", "category"], "additionalProperties": False}),
    ("a summary and the people it concerns", {"type": "object", "properties": {
        "summary": {"type": "string", "maxLength": 160},
        "who": {"type": "array", "items": {"type": "object", "properties": {"group": SHORT,
                                                                             "affected": {"type": "boolean"}},
                                           "required": ["group", "affected"], "additionalProperties": False},
                "maxItems": 2}},
        "required": ["summary", "who"], "additionalProperties": False}),
]


def questions(n: int) -> list[str]:
    """``n`` questions, alternating MedQuAD and FiQA, in file order."""
    sources = [sorted((SHARED / "medical_medquad_en").glob("*.jsonl")), [SHARED / "finance_fiqa_en" / "fiqa_648.jsonl"]]
    pools = []
    for files in sources:
        pool = []
        for f in files:
            with f.open(encoding="utf-8") as fh:
                pool += [json.loads(line)["question"] for line in fh if line.strip()]
        pools.append(pool)
    return [pools[i % 2][i // 2] for i in range(n)]


def run(engine, prompts: list[list[int]], formats: list[dict | None], max_tokens: list[int]) -> tuple[list, float]:
    from lightseek.serve.engine import GenParams

    reqs = [engine.submit(p, GenParams(max_tokens=n, temperature=0.7, top_p=0.95, seed=i, response_format=f,
                                       ignore_eos=f is None))
            for i, (p, f, n) in enumerate(zip(prompts, formats, max_tokens))]
    t0 = time.perf_counter()
    engine.run()
    return reqs, time.perf_counter() - t0


def score(reqs, schemas) -> dict:
    import jsonschema

    finished = parsed = valid = 0
    failures = []  # every answer that is not valid, with why: what a reader needs to judge the misses
    for i, (r, schema) in enumerate(zip(reqs, schemas)):
        finished += r.finish_reason == "stop"
        try:
            doc = json.loads(r.text)
        except ValueError as e:
            failures.append({"request": i, "finish_reason": r.finish_reason, "tokens": len(r.output_ids),
                             "error": f"not JSON: {e}", "text": r.text})
            continue
        parsed += 1
        try:
            jsonschema.validate(doc, schema)
            valid += 1
        except jsonschema.ValidationError as e:
            failures.append({"request": i, "finish_reason": r.finish_reason, "tokens": len(r.output_ids),
                             "error": f"schema: {e.message}", "text": r.text})
    tokens = sum(len(r.output_ids) for r in reqs)
    # answers the engine closed early to fit max_tokens (`serve.grammar`: finish_reason "length")
    closed = [{"request": i, "tokens": len(r.output_ids), "text": r.text}
              for i, r in enumerate(reqs) if r.constraint is not None and r.constraint.cut]
    return {"requests": len(reqs), "finished": finished, "parsed": parsed, "valid": valid, "tokens": tokens,
            "closed_by_budget": closed, "failures": failures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--result")
    args = ap.parse_args()
    stem = result_name("structured", args, {"model": "smollm2-135m-instruct", "requests": 200, "slots": 16,
                                            "max_tokens": 256})
    if not SHARED.exists():
        sys.exit(f"skipped: the shared data is not at {SHARED}")
    import torch

    from lightseek.data.chat import encode_chat
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.serve.engine import Engine

    torch.manual_seed(0)
    ckpt = resolve_checkpoint(args.model)
    model, tok = load_model(ckpt), Tokenizer.load(ckpt)
    engine = Engine(model, tok, max_slots=args.slots, max_waiting=args.requests, max_len=1024)
    picked = [SCHEMAS[i % len(SCHEMAS)] for i in range(args.requests)]
    prompts = [encode_chat(tok, [{"role": "user", "content": f"{q}\n\nReply in JSON: {what}."}],
                           add_generation_prompt=True)[0] for q, (what, _) in zip(questions(args.requests), picked)]
    formats = [{"type": "json_schema", "json_schema": {"name": "reply", "schema": s}} for _, s in picked]
    t0 = time.perf_counter()
    engine.grammars.constraint(formats[0])  # the vocabulary view, built once per model, outside the timing
    setup_s = time.perf_counter() - t0
    run(engine, prompts[:args.slots], [None] * args.slots, [4] * args.slots)  # warm-up
    results, lengths = {}, [args.max_tokens] * len(prompts)
    for name, fmts in (("constrained", formats), ("free", [None] * len(formats))):
        reqs, wall = run(engine, prompts, fmts, lengths)
        lengths = [max(1, len(r.output_ids)) for r in reqs]  # the free run generates the same lengths
        results[name] = {**score(reqs, [s for _, s in picked]), "wall_s": wall}
        if name == "free":  # cut to the constrained lengths, its texts say nothing: counts only
            results[name].pop("failures")
        results[name]["output_tok_s"] = results[name]["tokens"] / wall
        r = results[name]
        print(f"{name}: {r['valid']}/{r['requests']} valid, {r['parsed']} parse, {r['finished']} finished, "
              f"{len(r['closed_by_budget'])} closed by the budget, "
              f"{r['tokens']} tokens in {wall:.1f} s = {r['output_tok_s']:.1f} tok/s", flush=True)
        if name == "constrained":
            results[name]["examples"] = [r.text for r in reqs[:len(SCHEMAS)]]
    ratio = results["constrained"]["output_tok_s"] / results["free"]["output_tok_s"]
    print("\n| run | valid | parse | finished | tokens | wall | tokens/s |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['valid']}/{r['requests']} | {r['parsed']} | {r['finished']} | {r['tokens']:,} | "
              f"{r['wall_s']:.1f} s | {r['output_tok_s']:.1f} |")
    print(f"\nconstrained throughput: {100 * ratio:.1f}% of free (cost {100 * (1 - ratio):.1f}%); "
          f"vocabulary setup {setup_s:.2f} s")
    out = write_result(stem, {**provenance(), "model": args.model, "slots": args.slots,
                              "max_tokens": args.max_tokens, "schemas": [s for _, s in SCHEMAS],
                              "vocabulary_setup_s": setup_s, "results": results,
                              "constrained_over_free_tok_s": ratio})
    print(f"written {out}")


if __name__ == "__main__":
    main()
