"""A real model on this machine: SmolLM2-135M-Instruct in lightseek and in transformers, side by side.

For each system, in a process of its own (so that peak memory is its own): load time, prefill
tokens/s (one 512-token prompt), greedy decode tokens/s at batch 1 (a 64-token prompt, 64 new
tokens, prefill included, as `generate` is timed) and with 16 rows decoding together (16
prompts of 64 tokens, 32 new tokens each), and peak resident memory. Medians of --repeats runs.

Systems:
- lightseek fp32: the imported checkpoint (`lightseek fetch smollm2-135m-instruct`);
- lightseek int8 / int4: the same weights through `lightseek quant --bits 8` (per channel, rtn) and
  `--bits 4 --group 64` (rtn), computed by PyTorch's packed int8 / int4 CPU kernels;
- lightseek w8a8: `lightseek quant --bits 8 --activations 8` (8-bit inputs too, smoothed on
  bench/quant_real.py's calibration text), computed by fbgemm's integer kernels;
- transformers fp32: `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)` on the original
  GGUF, and its `generate`;
- llama.cpp (llama-cpp-python) on the original Q4_1 file, where that package is installed;
  otherwise the row says so.

    python bench/real_model.py [--repeats 3] [--threads 2]

Prints a markdown table and writes bench/results/real_model.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, write_result  # noqa: E402

NAME = "smollm2-135m-instruct"
PROMPT, NEW, PREFILL, ROWS, ROW_NEW = 64, 64, 512, 16, 32


def prompts(n: int, length: int, seed: int = 0, text_ids: list[int] | None = None) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids: random ids, or consecutive windows of ``text_ids``
    (real text, where routing depends on what is read)."""
    import torch

    if text_ids is not None:
        if len(text_ids) < n * length:
            raise SystemExit(f"--text holds {len(text_ids)} tokens; {n} prompts of {length} need more")
        return [text_ids[i * length:(i + 1) * length] for i in range(n)]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 40000, (n, length), generator=g).tolist()


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_mib() -> float:
    """This process's peak resident memory. Not getrusage: on Linux its maximum survives fork and
    exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- one system per process -------------------------------------------------------------------------
def decode_workload(model, text_ids: list[int] | None = None):
    """The two decode workloads, as functions: greedy `generate` of NEW tokens after a PROMPT-token
    prompt (returns the tokens), and ROWS rows decoding ROW_NEW tokens each after their prompts
    through the forward with a KV cache; prefill included in both."""
    import torch

    from lightseek.model.generate import generate_ids
    from lightseek.model.kv_cache import KVCache
    from lightseek.model.sampling import SamplingParams

    greedy = SamplingParams(temperature=0.0, max_new_tokens=NEW)
    one = prompts(1, PROMPT, text_ids=text_ids)[0]
    rows = torch.tensor(prompts(ROWS, PROMPT, text_ids=text_ids))

    def generate1() -> list[int]:
        return list(generate_ids(model, one, greedy))

    def generate16() -> None:
        with torch.inference_mode():
            cache = KVCache.for_model(model, ROWS, max_len=PROMPT + ROW_NEW)
            nxt = model(rows, cache=cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(ROW_NEW - 1):
                nxt = model(nxt, cache=cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)

    return generate1, generate16


def run_lightseek(ckpt: str, repeats: int, text: str | None = None, dispatch: str = "auto") -> dict:
    import torch

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model

    t = time.perf_counter()
    model = load_model(ckpt)
    load_s = time.perf_counter() - t
    model.set_dispatch(dispatch)  # the MoE layers' expert dispatch (a dense model has none)
    ids = Tokenizer.load(ckpt).encode(Path(text).read_text(encoding="utf-8")) if text else None
    long = torch.tensor(prompts(1, PREFILL, text_ids=ids))
    generate1, generate16 = decode_workload(model, ids)

    def prefill():
        with torch.inference_mode():
            model(long, last_only=True)

    def decode1():
        assert len(generate1()) == NEW

    model.reset_routing_stats()
    row = {"load_s": load_s, "prefill_tok_s": PREFILL / timed(prefill, repeats),
           "decode_b1_tok_s": NEW / timed(decode1, repeats),
           "decode_b16_tok_s": ROWS * ROW_NEW / timed(generate16, repeats), "peak_mib": peak_mib()}
    if model.cfg.is_moe:  # experts per token actually used, over every timed call
        report = model.routing_report()
        row["avg_k"] = sum(r["avg_k"] for r in report) / len(report)
    return row


def run_transformers(gguf: str, repeats: int) -> dict:
    import torch
    import transformers

    path = Path(gguf)
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    load_s = time.perf_counter() - t
    long = torch.tensor(prompts(1, PREFILL))
    one = torch.tensor(prompts(1, PROMPT))
    rows = torch.tensor(prompts(ROWS, PROMPT))

    def gen(x, n):
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out.shape[1] == x.shape[1] + n

    def prefill():
        with torch.inference_mode():
            model(long, logits_to_keep=1)

    return {"load_s": load_s, "prefill_tok_s": PREFILL / timed(prefill, repeats),
            "decode_b1_tok_s": NEW / timed(lambda: gen(one, NEW), repeats),
            "decode_b16_tok_s": ROWS * ROW_NEW / timed(lambda: gen(rows, ROW_NEW), repeats), "peak_mib": peak_mib()}


def run_llama_cpp(gguf: str, repeats: int, threads: int) -> dict:
    from llama_cpp import Llama

    t = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
    load_s = time.perf_counter() - t
    long, one = prompts(1, PREFILL)[0], prompts(1, PROMPT)[0]

    def prefill():
        llm.reset()
        llm.eval(long)

    def decode1():
        llm.reset()
        it = llm.generate(one, temp=0.0, top_k=1)
        for _ in range(NEW):
            next(it)

    return {"load_s": load_s, "prefill_tok_s": PREFILL / timed(prefill, repeats),
            "decode_b1_tok_s": NEW / timed(decode1, repeats), "decode_b16_tok_s": None, "peak_mib": peak_mib()}


# --- driver ------------------------------------------------------------------------------------------
def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.system == "transformers":
        row = run_transformers(args.source, args.repeats)
    elif args.system == "llama.cpp":
        row = run_llama_cpp(args.source, args.repeats, args.threads)
    else:
        row = run_lightseek(args.source, args.repeats, args.text, args.dispatch)
    print(json.dumps(row))


def quantized_checkpoint(src: Path, name: str, flags: list[str]) -> Path:
    out = ROOT / "runs" / "real_model" / name
    if not (out / "config.json").is_file():
        from lightseek.quant.run import load_quant_config, quantize_checkpoint

        quantize_checkpoint(src, load_quant_config(None, flags), out, show_progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--text", help=argparse.SUPPRESS)  # lightseek child: prompts cut from this text file
    ap.add_argument("--dispatch", default="auto", help=argparse.SUPPRESS)  # lightseek child: MoE dispatch
    args = ap.parse_args()
    if args.system:
        return child(args)

    from quant_real import w8a8_flags

    from lightseek.known_models import KNOWN_MODELS, cache_dir
    from lightseek.models.fetch import fetch

    ckpt = fetch(NAME)
    gguf = cache_dir() / "sources" / NAME / KNOWN_MODELS[NAME].member.rsplit("/", 1)[-1]
    systems = [("lightseek fp32", "lightseek", ckpt),
               ("lightseek int8", "lightseek", quantized_checkpoint(ckpt, "int8", ["--quant.bits=8"])),
               ("lightseek int4 g64", "lightseek",
                quantized_checkpoint(ckpt, "int4", ["--quant.bits=4", "--quant.group_size=64"])),
               ("lightseek w8a8", "lightseek", quantized_checkpoint(ckpt, "w8a8", w8a8_flags())),
               ("transformers fp32 (generate)", "transformers", gguf), ("llama.cpp Q4_1", "llama.cpp", gguf)]
    rows = []
    for label, system, source in systems:
        if system == "llama.cpp":
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                rows.append({"system": label, "skipped": "llama-cpp-python is not installed here "
                             "(pip builds it from source with cmake, about 15 minutes on 2 cores)"})
                continue
        cmd = [sys.executable, __file__, "--system", system, "--source", str(source),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            if system != "llama.cpp":
                sys.exit(f"{label} failed:\n{done.stderr[-3000:]}")
            # a llama.cpp build for instructions the machine does not enable (AMX in a VM) dies
            # with a signal: say so in the table instead of losing the run
            rows.append({"system": label, "skipped": f"llama-cpp-python exited with {done.returncode} "
                         f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no message'})"})
            continue
        rows.append({"system": label, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(f"{label}: {rows[-1]}", file=sys.stderr)

    base = next(r for r in rows if r["system"].startswith("transformers"))
    print("\n| system | load s | prefill tok/s | decode b1 tok/s | vs transformers | decode 16 rows tok/s | peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['system']} | {r['skipped']} ||||||")
            continue
        b16 = f"{r['decode_b16_tok_s']:.1f}" if r["decode_b16_tok_s"] else "-"
        print(f"| {r['system']} | {r['load_s']:.1f} | {r['prefill_tok_s']:.0f} | {r['decode_b1_tok_s']:.1f} | "
              f"{r['decode_b1_tok_s'] / base['decode_b1_tok_s']:.2f}x | {b16} | {r['peak_mib']:.0f} |")
    write_result("real_model", {**provenance(args.threads), "model": NAME,
                                 "settings": {"prompt": PROMPT, "new_tokens": NEW, "prefill": PREFILL, "rows": ROWS,
                                              "row_new_tokens": ROW_NEW, "repeats": args.repeats},
                                 "rows": rows})

if __name__ == "__main__":
    main()
