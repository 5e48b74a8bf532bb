"""Serving a real model under load: SmolLM2-135M-Instruct in lightseek and in llama.cpp, side by side.

Each server runs in its own process on loopback with the same number of CPU threads; the clients
are the official `openai` async client (bench/serve_load.py's client loop) in a process of their
own that loads nothing else (a client process that had imported PyTorch halved llama.cpp's speed), each
sending streamed completions back to back (bench/serve_load.py's prompts without the Chinese one:
the model is English-first): 64 new tokens, temperature 0.8, the end-of-text tokens
suppressed (lightseek: `ignore_eos`; llama.cpp: a -100 logit bias on them), so that every request
generates its full budget. Levels of 1, 4, 16 and 64 concurrent clients; the last level runs
longest, with 10% of requests disconnecting mid-stream. Per level: output tokens/s, time to first
token and inter-token latency (p50, p95), requests, disconnects, errors, and for lightseek the
slots still held afterwards. lightseek's streams report usage; llama.cpp's do not, and its
chunks are not one per token (a character of several bytes waits for all of them), so its output
is counted by tokenizing the text received with the model's own tokenizer.

Servers:
- lightseek fp32: `lightseek serve smollm2-135m-instruct` (the imported checkpoint);
- lightseek MoE: the same model converted by `lightseek moefy --target-k 8` (16 experts per FFN,
  a shared expert, dynamic routing; made once under runs/real_model/);
- lightseek int8 / int4 g64: `lightseek quant --bits 8` and `--bits 4 --group 64` (rtn);
- lightseek w8a8: `lightseek quant --bits 8 --activations 8` (8-bit inputs too, smoothed on
  bench/quant_real.py's calibration text);
- llama.cpp Q4_1: `python -m llama_cpp.server` (llama-cpp-python[server]) on the GGUF the package
  ships; llama.cpp Q8_0: the same model re-quantized to Q8_0 by llama.cpp's own quantizer
  (`llama_model_quantize`, from the Q4_1 weights: 8-bit codes of 4-bit values, so its quality is
  the Q4_1 file's and only its speed differs). llama-cpp-python's server runs one request at a time
  (`--interrupt_requests False`: a new request waits instead of cutting the running one off).

Baselines in the same run, no HTTP: transformers `generate` on the same weights (the GGUF,
dequantized to fp32), sampling, 64 new tokens, at batch 1 and at batch 16.

    python bench/serve_real.py [--levels 1 4 16 64] [--seconds 15] [--long-seconds 30] [--threads 2]
    python bench/serve_real.py --systems "lightseek int8" "llama.cpp Q4_1"   # a subset (a probe)

Prints a markdown table and writes bench/results/serve_real.json with the run's provenance; a run
with other --levels, --systems or --threads than the defaults writes serve_real_<those>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402
from serve_load import PROMPTS, free_port, launch, run_level, server_gauges  # noqa: E402

NAME = "smollm2-135m-instruct"
WORK = ROOT / "runs" / "real_model"
SYSTEMS = ("lightseek fp32", "lightseek MoE", "lightseek int8", "lightseek int4 g64", "lightseek w8a8",
           "llama.cpp Q4_1", "llama.cpp Q8_0")
END_IDS = (0, 2)  # SmolLM2's <|endoftext|> and <|im_end|>
# SmolLM2 is English-first: its Chinese is poor, and after one Chinese request llama-cpp-python's
# server streamed every later request at 25 instead of 65-70 tok/s (measured; see serving.md)
ENGLISH = [p for p in PROMPTS if p.isascii()]


def lightseek_checkpoint(label: str, ckpt: Path) -> Path:
    """The checkpoint a lightseek system serves, made once under runs/real_model/."""
    if label == "lightseek fp32":
        return ckpt
    out = WORK / {"lightseek MoE": "moe-k8", "lightseek int8": "int8", "lightseek int4 g64": "int4",
                  "lightseek w8a8": "w8a8"}[label]
    if (out / "config.json").is_file():
        return out
    if label == "lightseek MoE":  # as the README converts it
        subprocess.run([sys.executable, "-m", "lightseek", "moefy", NAME, "--out", str(out), "--target-k", "8",
                        "--quiet"], check=True)
    else:
        from quant_real import w8a8_flags  # imports PyTorch: not at the top (see `clients`)

        from lightseek.quant.run import load_quant_config, quantize_checkpoint

        flags = {"lightseek int8": ["--quant.bits=8"],
                 "lightseek int4 g64": ["--quant.bits=4", "--quant.group_size=64"],
                 "lightseek w8a8": w8a8_flags()}[label]
        quantize_checkpoint(ckpt, load_quant_config(None, flags), out, show_progress=False)
    return out


def q8_gguf(q4: Path) -> Path:
    """The Q4_1 GGUF re-quantized to Q8_0 by llama.cpp's quantizer (made once)."""
    import llama_cpp

    out = WORK / "SmolLM2-135M-Instruct.Q8_0.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        params.nthread = 2
        tmp = out.with_suffix(".part")
        if llama_cpp.llama_model_quantize(str(q4).encode(), str(tmp).encode(), params) != 0:
            sys.exit("llama.cpp could not re-quantize the GGUF to Q8_0")
        tmp.rename(out)
    return out


def start(label: str, source: Path, threads: int, max_slots: int):
    """(process, port, extra request fields) of one server, answering once it is up."""
    port = free_port()
    if label.startswith("lightseek"):
        cmd = [sys.executable, "-m", "lightseek", "serve", str(source), "--name", "base", "--port", str(port),
               "--max-slots", str(max_slots), "--max-waiting", str(4 * max_slots), "--max-len", "512",
               "--threads", str(threads)]
        return launch(cmd, port), port, {"ignore_eos": True}
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(source), "--model_alias", "base",
           "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048",
           "--interrupt_requests", "False"]
    return launch(cmd, port, health="/v1/models"), port, {"logit_bias": {str(i): -100 for i in END_IDS}}


def hf_generate(gguf: Path, batch: int, max_tokens: int, rounds: int = 3) -> dict:
    """transformers `generate` on the same weights, batched, sampling, the full budget."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(100, 40000, (batch, 8), generator=g)
    times = []
    with torch.inference_mode():
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=True, temperature=0.8, pad_token_id=0)
            times.append(time.perf_counter() - t0)
            assert out.shape[1] == x.shape[1] + max_tokens
    t = statistics.median(times[1:])
    return {"batch": batch, "s": t, "output_tok_s": batch * max_tokens / t}


def clients(args) -> None:
    """One level's clients, in a process with nothing but the HTTP client and the tokenizer loaded:
    a client process that had imported PyTorch halved llama.cpp's server's speed here (64 to
    33 tok/s at one client, measured), so the benchmark's own process never runs the clients."""
    import json

    from lightseek.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    r = asyncio.run(run_level(args.port, args.clients, args.seconds, args.max_tokens, args.disconnect_share,
                              json.loads(args.extra), lambda text: len(tokenizer.encode(text)), ENGLISH))
    print(json.dumps(r))


def run_clients(port: int, n: int, seconds: float, max_tokens: int, disconnect_share: float, extra: dict,
                tokenizer: Path) -> dict:
    import json

    cmd = [sys.executable, __file__, "--clients", str(n), "--port", str(port), "--seconds", str(seconds),
           "--max-tokens", str(max_tokens), "--disconnect-share", str(disconnect_share), "--extra", json.dumps(extra),
           "--tokenizer", str(tokenizer)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the clients failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each level but the last")
    ap.add_argument("--long-seconds", type=float, default=30.0, help="duration of the last level")
    ap.add_argument("--disconnect-share", type=float, default=0.1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of every server and of transformers")
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    ap.add_argument("--hf-batches", type=int, nargs="*", default=[1, 16])
    for hidden in ("--clients", "--port"):  # a child process running one level's clients
        ap.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--extra", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.clients:
        return clients(args)
    stem = result_name("serve_real", args, {k: ap.get_default(k) for k in ("levels", "systems", "threads")})

    import torch

    from lightseek.known_models import KNOWN_MODELS, cache_dir
    from lightseek.models.fetch import fetch

    ckpt = fetch(NAME)
    gguf = cache_dir() / "sources" / NAME / KNOWN_MODELS[NAME].member.rsplit("/", 1)[-1]
    max_slots = max(args.levels)
    systems = []
    for label in args.systems:
        if label.startswith("llama.cpp"):
            try:
                import llama_cpp.server  # noqa: F401
            except ImportError as e:
                systems.append({"system": label, "skipped": f"llama-cpp-python[server] is not installed here ({e})"})
                continue
            source = gguf if label == "llama.cpp Q4_1" else q8_gguf(gguf)
        else:
            source = lightseek_checkpoint(label, ckpt)
        try:
            server, port, extra = start(label, source, args.threads, max_slots)
        except SystemExit as e:  # a server that does not come up is reported, the others still run
            systems.append({"system": label, "skipped": str(e)[:300]})
            print(f"{label}: {e}", flush=True)
            continue
        levels = []
        try:
            run_clients(port, 1, 3.0, 8, 0.0, extra, ckpt)  # warm-up, not reported
            for i, n in enumerate(args.levels):
                last = i == len(args.levels) - 1
                r = run_clients(port, n, args.long_seconds if last else args.seconds, args.max_tokens,
                                args.disconnect_share if last else 0.0, extra, ckpt)
                time.sleep(1.0)
                if label.startswith("lightseek"):
                    g = server_gauges(port)
                    r["leaked_slots"] = int(max_slots - g["lightseek_slots_free"])
                levels.append(r)
                print(f"{label}, {n:2d} clients: {r['output_tok_s']:6.1f} tok/s, TTFT p50 {r['ttft_p50_ms']:.0f} "
                      f"p95 {r['ttft_p95_ms']:.0f} ms, ITL p50 {r['itl_p50_ms']:.1f} p95 {r['itl_p95_ms']:.1f} ms, "
                      f"{r['requests']} requests, {r['disconnects']} disconnects, {r['errors']} errors"
                      + (f", {r['leaked_slots']} slots held after" if "leaked_slots" in r else ""), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
        systems.append({"system": label, "source": str(source.relative_to(ROOT) if source.is_relative_to(ROOT)
                                                       else source.name), "levels": levels})
    torch.set_num_threads(args.threads)
    hf = [hf_generate(gguf, b, args.max_tokens) for b in args.hf_batches]
    for h in hf:
        print(f"transformers generate, batch {h['batch']}: {h['output_tok_s']:.1f} tok/s", flush=True)

    same = {h["batch"]: h["output_tok_s"] for h in hf}
    print("\n| system | clients | output tok/s | vs 1 client | vs transformers b1 | vs transformers b16 "
          "| TTFT p50 / p95 ms | ITL p50 / p95 ms | requests | disconnects | errors |")
    print("|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|")
    for s in systems:
        if "skipped" in s:
            print(f"| {s['system']} | {s['skipped']} |||||||||")
            continue
        one = s["levels"][0]["output_tok_s"]
        for r in s["levels"]:
            ratio = [f"{r['output_tok_s'] / same[b]:.2f}x" if b in same else "-" for b in (1, 16)]
            print(f"| {s['system']} | {r['clients']} | {r['output_tok_s']:.0f} | {r['output_tok_s'] / one:.2f}x | "
                  f"{ratio[0]} | {ratio[1]} | {r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} | "
                  f"{r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f} | {r['requests']} | {r['disconnects']} | "
                  f"{r['errors']} |")
    out = write_result(stem, {**provenance(args.threads), "model": NAME, "systems": systems,
                              "transformers_generate": hf, "args": vars(args)})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
