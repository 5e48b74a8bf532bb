"""Prefix caching on a real model: requests that share a long system prompt, one after another
(the case a chat product sends all day), with the engine's prefix cache on and off in one run;
then the same requests arriving all at once (a burst: a running request's computed prompt start
is copied to the others).

Each request is the system prompt plus a different short question; the measured time is each
request's time to its first token (its prefill, less what the cache already holds). Greedy
outputs are compared between the two engines: the cache must change nothing but the time.

    python bench/prefix_cache.py [--model smollm2-135m-instruct] [--questions 16] [--system-repeat 6]

Prints a table and writes bench/results/prefix_cache.json (other settings: prefix_cache_<...>.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, result_name, write_result  # noqa: E402

DEFAULTS = {"model": "smollm2-135m-instruct", "questions": 16, "system_repeat": 6}
SYSTEM = ("You are the support assistant of a hospital's patient portal. Answer in plain English, "
          "in at most three sentences, and never give a diagnosis; suggest seeing a doctor when "
          "symptoms are severe or persistent. ")
QUESTIONS = ["What is glaucoma?", "How do I book an appointment?", "What are the symptoms of flu?",
             "Can I change my password?", "What is high blood pressure?", "How long does a blood test take?",
             "What should I bring to my first visit?", "Is the pharmacy open on Sundays?",
             "What is an MRI scan?", "How do I get my test results?", "What is asthma?",
             "Can I bring a family member?", "What is a normal heart rate?", "How do vaccines work?",
             "Where do I park?", "What is diabetes?"]


def run(engine, tok, prompts) -> tuple[list[float], list[list[int]]]:
    from lightseek.serve.engine import GenParams

    times, outs = [], []
    for p in prompts:
        t0 = time.perf_counter()
        req = engine.submit(p, GenParams(max_tokens=8, temperature=0))
        first = None
        while not req.done:
            engine.step()
            if first is None and req.output_ids:
                first = time.perf_counter() - t0
        times.append(first)
        outs.append(req.output_ids)
    return times, outs


def burst(engine, prompts) -> tuple[list[float], list[list[int]], float]:
    """Every prompt submitted at once: each one's time to its first token, outputs, wall time."""
    from lightseek.serve.engine import GenParams

    t0 = time.perf_counter()
    reqs = [engine.submit(p, GenParams(max_tokens=8, temperature=0)) for p in prompts]
    first: dict[int, float] = {}
    while not all(r.done for r in reqs):
        engine.step()
        for r in reqs:
            if r.id not in first and r.output_ids:
                first[r.id] = time.perf_counter() - t0
    return [first[r.id] for r in reqs], [r.output_ids for r in reqs], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--questions", type=int)
    ap.add_argument("--system-repeat", type=int)
    ap.add_argument("--result")
    args = ap.parse_args()
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    import torch

    from lightseek.data.chat import encode_chat
    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.serve.engine import Engine

    torch.set_num_threads(2)
    ckpt = resolve_checkpoint(args.model)
    model, tok = load_model(ckpt), Tokenizer.load(ckpt / "tokenizer.json")
    system = SYSTEM * args.system_repeat
    prompts = [encode_chat(tok, [{"role": "system", "content": system}, {"role": "user", "content": q}],
                           add_generation_prompt=True)[0] for q in (QUESTIONS * 4)[:args.questions]]
    print(f"{len(prompts)} requests of {statistics.mean(map(len, prompts)):.0f} prompt tokens on average", flush=True)
    rows, outputs = {}, {}
    for name, on in (("off", False), ("on", True), ("off again", False)):
        engine = Engine(model, tok, max_slots=4, prefill_chunk=256, prefix_cache=on)
        run(engine, tok, prompts[:1])  # warm-up, outside the measurement (and it fills a slot)
        times, outs = run(engine, tok, prompts)
        rows[name] = {"ttft_ms_p50": 1000 * statistics.median(times), "ttft_ms_mean": 1000 * statistics.mean(times),
                      "prefix_hit_tokens": engine.stats()["prefix_hit_tokens"]}
        outputs[name] = outs
        print(f"prefix cache {name}: TTFT p50 {rows[name]['ttft_ms_p50']:.0f} ms, "
              f"{rows[name]['prefix_hit_tokens']} prompt tokens reused", flush=True)
    together = {}
    for name, on in (("off", False), ("on", True)):
        engine = Engine(model, tok, max_slots=len(prompts), prefill_chunk=256, prefix_cache=on)
        burst(engine, prompts[:2])  # warm-up
        engine = Engine(model, tok, max_slots=len(prompts), prefill_chunk=256, prefix_cache=on)
        times, outs, wall = burst(engine, prompts)
        together[name] = {"ttft_ms_p50": 1000 * statistics.median(times), "ttft_ms_max": 1000 * max(times),
                          "wall_s": wall, "prefix_hit_tokens": engine.stats()["prefix_hit_tokens"],
                          "outputs_identical": outs == outputs["off"]}
        print(f"all at once, prefix cache {name}: TTFT p50 {together[name]['ttft_ms_p50']:.0f} ms, last first token "
              f"{together[name]['ttft_ms_max']:.0f} ms, {together[name]['prefix_hit_tokens']} prompt tokens reused",
              flush=True)
    same = outputs["on"] == outputs["off"]
    speedup = rows["off"]["ttft_ms_p50"] / rows["on"]["ttft_ms_p50"]
    print("\n| prefix cache | TTFT p50 (ms) | TTFT mean (ms) | prompt tokens reused |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['ttft_ms_p50']:.0f} | {r['ttft_ms_mean']:.0f} | {r['prefix_hit_tokens']:,} |")
    print(f"\nTTFT {speedup:.1f}x faster with the cache; greedy outputs identical: {same}")
    out = write_result(result_name("prefix_cache", args, DEFAULTS), {
        **provenance(2), "settings": {k: getattr(args, k) for k in DEFAULTS},
        "mean_prompt_tokens": statistics.mean(map(len, prompts)), "rows": rows, "ttft_speedup": speedup,
        "outputs_identical": same, "together": together})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
