"""Which grammar library constrains the server's JSON outputs: llguidance, xgrammar or outlines-core.

All three run on the CPU and build their token tables from the model's own vocabulary (token
bytes; no hub). For each library and each JSON schema of SCHEMAS this measures, on the
tokenizer of SmolLM2-135M-Instruct (49,152 tokens):

  setup      building the library's view of the vocabulary (once per model)
  compile    turning one schema into a matcher (once per distinct schema)
  mask       computing the allowed-token mask for one step, timed at every token while the
             matcher walks a valid answer (the answer's own tokens): p50, p95 and max
  correct    every token of every valid answer allowed, the end allowed when the answer is
             complete, and tokens that cannot start an object ('[', 'Hello') refused first

    python bench/grammar_libs.py [--model smollm2-135m-instruct] [--repeats 3]

Prints a table and writes bench/results/grammar_libs.json. The mask must stay far below a
decode step (tens of milliseconds for this model on 2 cores) for constrained decoding to cost
little; the library the server uses is the one this table favours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, result_name, write_result  # noqa: E402

SCHEMAS = {
    "flat": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False},
             {"name": "Ada Lovelace", "age": 36}),
    "enum+number": ({"type": "object", "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]}, "confidence": {"type": "number"}},
        "required": ["sentiment", "confidence"], "additionalProperties": False},
        {"sentiment": "negative", "confidence": 0.82}),
    "array": ({"type": "object", "properties": {"symptoms": {"type": "array", "items": {"type": "string"},
                                                             "maxItems": 5}},
               "required": ["symptoms"], "additionalProperties": False},
              {"symptoms": ["blurred vision", "eye pain", "headache"]}),
    "nested": ({"type": "object", "properties": {
        "patient": {"type": "object", "properties": {"id": {"type": "string"}, "visits": {"type": "integer"}},
                    "required": ["id", "visits"], "additionalProperties": False},
        "diagnoses": {"type": "array", "items": {"type": "object", "properties": {
            "code": {"type": "string"}, "primary": {"type": "boolean"}}, "required": ["code", "primary"],
            "additionalProperties": False}}},
        "required": ["patient", "diagnoses"], "additionalProperties": False},
        {"patient": {"id": "p-0042", "visits": 3}, "diagnoses": [{"code": "H40.1", "primary": True},
                                                                 {"code": "E11.9", "primary": False}]}),
}
REFUSED = ("[", "Hello")  # an answer to an object schema cannot start with these


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok) -> None:
        import llguidance
        import llguidance.numpy as lnp

        self.llg, self.lnp = llguidance, lnp
        self.tokenizer = llguidance.LLTokenizer(tok._serialized, n_vocab=tok.vocab_size, eos_token=tok.eot_id)
        self.mask = lnp.allocate_token_bitmask(1, tok.vocab_size)

    def compile(self, schema: dict):
        from lightseek.serve.grammar import JSON_OPTIONS  # as the server compiles it

        grammar = self.llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
        return self.llg.LLMatcher(self.tokenizer, grammar)

    def allowed(self, m) -> set[int] | None:
        self.lnp.fill_next_token_bitmask(m, self.mask, 0)
        return None

    def is_allowed(self, token: int) -> bool:
        return bool((int(self.mask[0, token // 32]) >> (token % 32)) & 1)

    def advance(self, m, token: int) -> bool:
        return m.consume_token(token) and not m.is_error()


class XGrammar:
    name = "xgrammar"

    def __init__(self, tok) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        vocab = [b"" if tok.is_special(i) else tok.token_bytes(i) for i in range(tok.vocab_size)]
        info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=tok.vocab_size, stop_token_ids=[tok.eot_id])
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.mask = xgr.allocate_token_bitmask(1, tok.vocab_size)

    def compile(self, schema: dict):
        return self.xgr.GrammarMatcher(self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))

    def allowed(self, m) -> None:
        m.fill_next_token_bitmask(self.mask)

    def is_allowed(self, token: int) -> bool:
        return bool((int(self.mask[0, token // 32]) >> (token % 32)) & 1)

    def advance(self, m, token: int) -> bool:
        return m.accept_token(token)


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok) -> None:
        import outlines_core as oc

        self.oc = oc
        table: dict[bytes, list[int]] = {}
        for i in range(tok.vocab_size):
            if not tok.is_special(i):
                table.setdefault(tok.token_bytes(i), []).append(i)
        self.vocabulary = oc.Vocabulary(tok.eot_id, table)
        import numpy as np

        self.mask = np.zeros((tok.vocab_size + 31) // 32, dtype=np.int32)  # a bitmask, as the others fill

    def compile(self, schema: dict):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), r"[ ]?")
        return self.oc.Guide(self.oc.Index(regex, self.vocabulary))

    def allowed(self, m) -> None:
        m.write_mask_into(self.mask.ctypes.data, self.mask.size, 4)

    def is_allowed(self, token: int) -> bool:
        return bool((int(self.mask[token // 32]) >> (token % 32)) & 1)

    def advance(self, m, token: int) -> bool:
        try:
            m.advance(token)
        except ValueError:
            return False
        return True


def measure(lib_cls, tok, repeats: int) -> dict:
    t0 = time.perf_counter()
    lib = lib_cls(tok)
    setup_s = time.perf_counter() - t0
    compile_ms, mask_us, problems = {}, [], []
    for name, (schema, answer) in SCHEMAS.items():
        ids = tok.encode(json.dumps(answer))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            m = lib.compile(schema)
            times.append(1000 * (time.perf_counter() - t0))
        compile_ms[name] = statistics.median(times)
        lib.allowed(m)
        for text in REFUSED:
            if lib.is_allowed(tok.encode(text)[0]):
                problems.append(f"{name}: {text!r} allowed as the first token of an object")
        for token in ids:
            t0 = time.perf_counter()
            lib.allowed(m)
            mask_us.append(1e6 * (time.perf_counter() - t0))
            if not lib.is_allowed(token):
                problems.append(f"{name}: token {tok.decode([token])!r} of the valid answer refused")
                break
            if not lib.advance(m, token):
                problems.append(f"{name}: advancing on {tok.decode([token])!r} failed")
                break
        else:
            lib.allowed(m)
            if not lib.is_allowed(tok.eot_id):
                problems.append(f"{name}: the end refused after a complete answer")
    mask_us.sort()
    return {"setup_s": setup_s, "compile_ms": compile_ms, "compile_ms_mean": statistics.mean(compile_ms.values()),
            "mask_us_p50": mask_us[len(mask_us) // 2], "mask_us_p95": mask_us[int(0.95 * (len(mask_us) - 1))],
            "mask_us_max": mask_us[-1], "masks": len(mask_us), "correct": not problems, "problems": problems}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="checkpoint or fetched model whose tokenizer")
    ap.add_argument("--repeats", type=int, default=3, help="compilations per schema (the median is kept)")
    ap.add_argument("--result")
    args = ap.parse_args()
    stem = result_name("grammar_libs", args, {"model": "smollm2-135m-instruct"})
    from importlib.metadata import version

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import resolve_checkpoint

    tok = Tokenizer.load(resolve_checkpoint(args.model))
    results = {}
    for cls, dist in ((LLGuidance, "llguidance"), (XGrammar, "xgrammar"), (OutlinesCore, "outlines_core")):
        try:
            results[cls.name] = {"version": version(dist), **measure(cls, tok, args.repeats)}
        except ImportError:
            results[cls.name] = {"skipped": f"{dist} is not installed"}
        r = results[cls.name]
        print(f"{cls.name}: {r}" if "skipped" in r else
              f"{cls.name} {r['version']}: setup {r['setup_s']:.2f} s, compile {r['compile_ms_mean']:.1f} ms, mask "
              f"p50 {r['mask_us_p50']:.0f} us p95 {r['mask_us_p95']:.0f} us max {r['mask_us_max']:.0f} us, "
              f"correct {r['correct']} {r['problems'] or ''}", flush=True)
    print("\n| library | version | vocabulary setup | schema compile (mean) | mask p50 / p95 / max | correct |")
    print("|---|---|---:|---:|---:|---|")
    for name, r in results.items():
        if "skipped" not in r:
            print(f"| {name} | {r['version']} | {r['setup_s']:.2f} s | {r['compile_ms_mean']:.1f} ms | "
                  f"{r['mask_us_p50']:.0f} / {r['mask_us_p95']:.0f} / {r['mask_us_max']:.0f} us | {r['correct']} |")
    out = write_result(stem, {**provenance(), "model": args.model, "vocab_size": tok.vocab_size,
                              "schemas": {k: v[0] for k, v in SCHEMAS.items()}, "libraries": results})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
