"""Serving under load: concurrent streaming clients on loopback against `lightseek serve`.

The server (`lightseek serve` on the shared base checkpoint, runs/base) runs in its own process;
clients are the official `openai` async client in this one, each sending streamed completions back to back
(64 new tokens, sampling at temperature 0.8, `ignore_eos` so every request generates its full
budget). For each concurrency level: output tokens/s, time to first token and inter-token
latency (p50, p95), errors, and the slots still held afterwards (leaks). The highest level runs
longest, with a share of clients that disconnect mid-stream.

Compared in the same run:
  (a) one request at a time: the 1-client level;
  (b) Hugging Face transformers `generate`, batched at each level's client count, on a Qwen2-MoE model of the same size and
      shape (dim 128, 4 layers, 16 routed + 1 shared expert, top-2), random weights.

    python bench/serve_load.py [--levels 1 4 16 64] [--seconds 20] [--long-seconds 60] [--result NAME]

Prints a markdown table and writes bench/results/serve_load.json, with the run's provenance
(command, revision, date, machine, versions; the server's thread count). Another --checkpoint,
--levels, --disconnect-share, --max-tokens, --max-slots or --server-threads than the defaults
writes serve_load_<the arguments that differ>.json (`--levels 1 16`: serve_load_levels-1-16.json),
so that a probe never overwrites the main result; --seconds and --long-seconds do not change the
name. --result NAME writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

PROMPTS = ["The history of the city begins", "Interest rates rose again this quarter as", "A patient with high blood pressure",
           "The court held that the contract", "在中国的历史上，", "Once upon a time, in a small village,",
           "The main causes of the disease are", "Investors should consider"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], port: int, health: str = "/health", log=None) -> subprocess.Popen:
    """Start a server command in its own process and wait until it answers ``health`` on ``port``.
    Its output goes to a file, not a pipe: a chatty server (llama.cpp logs every tensor it loads)
    would fill a pipe nobody reads and stall. ``log``: that file (opened for binary reading and
    writing; by default a temporary one), for a caller who reads the server's output afterwards."""
    import tempfile

    log = tempfile.TemporaryFile() if log is None else log
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-2000:]

    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"the server stopped: {output()}")
        try:
            if http_get(port, health)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"the server did not come up in 60 s: {output()}")


def start_server(checkpoint: str, max_slots: int, max_waiting: int, threads: int = 0):
    """`lightseek serve` in its own process (clients run in this one); returns (process, port)."""
    port = free_port()
    proc = launch([sys.executable, "-m", "lightseek", "serve", checkpoint, "--name", "base",
                   "--port", str(port), "--max-slots", str(max_slots), "--max-waiting", str(max_waiting),
                   "--threads", str(threads)], port)
    return proc, port


def http_get(port: int, path: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.read().decode()


def server_gauges(port: int) -> dict:
    out = {}
    for line in http_get(port, "/metrics")[1].splitlines():
        if line.startswith("lightseek_") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


async def client_loop(client, deadline: float, max_tokens: int, disconnect_share: float, rng: random.Random,
                      stats: dict, extra: dict, count=None, prompts: list[str] = PROMPTS) -> None:
    """Streamed completions back to back until ``deadline``; ``extra``: fields the server needs to
    generate the full budget (lightseek's ``ignore_eos``). Tokens are counted from the stream's
    usage; a server that sends none (llama-cpp-python) has its text counted by ``count`` (the
    model's tokenizer): its chunks are not one per token, as a character of several bytes waits
    for all of them."""
    while time.perf_counter() < deadline:
        prompt = rng.choice(prompts)
        drop = rng.random() < disconnect_share
        t0 = time.perf_counter()
        last = None
        try:
            stream = await client.completions.create(
                model="base", prompt=prompt, max_tokens=max_tokens, temperature=0.8, stream=True,
                stream_options={"include_usage": True}, extra_body=extra)
            n_chunks, counted, text = 0, False, []
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].text:
                    if last is None:
                        stats["ttft"].append(now - t0)
                    else:
                        stats["itl"].append(now - last)
                    last = now
                    n_chunks += 1
                    text.append(chunk.choices[0].text)
                if chunk.usage is not None:
                    stats["tokens"] += chunk.usage.completion_tokens
                    stats["requests"] += 1
                    counted = True
                if drop and n_chunks >= 5:
                    await stream.close()
                    stats["disconnects"] += 1
                    # streamed before the disconnect (one token per chunk at most)
                    stats["tokens"] += count("".join(text)) if count else n_chunks
                    break
            else:
                if not counted:  # no usage in the stream
                    stats["tokens"] += count("".join(text)) if count else n_chunks
                    stats["requests"] += 1
        except Exception as e:  # counted and reported: the target is zero
            stats["errors"] += 1
            stats.setdefault("error_kinds", []).append(type(e).__name__)


async def run_level(port: int, n_clients: int, seconds: float, max_tokens: int, disconnect_share: float,
                    extra: dict | None = None, count=None, prompts: list[str] = PROMPTS) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                                timeout=120)
    stats = {"ttft": [], "itl": [], "tokens": 0, "requests": 0, "errors": 0, "disconnects": 0}
    t0 = time.perf_counter()
    deadline = t0 + seconds
    extra = {"ignore_eos": True} if extra is None else extra
    await asyncio.gather(*(client_loop(client, deadline, max_tokens, disconnect_share, random.Random(i), stats, extra,
                                       count, prompts)
                           for i in range(n_clients)))
    wall = time.perf_counter() - t0
    await client.close()
    return {"clients": n_clients, "wall_s": wall, "output_tok_s": stats["tokens"] / wall,
            "requests": stats["requests"], "disconnects": stats["disconnects"], "errors": stats["errors"],
            "error_kinds": sorted(set(stats.get("error_kinds", []))),
            "ttft_p50_ms": 1000 * pct(stats["ttft"], 0.5), "ttft_p95_ms": 1000 * pct(stats["ttft"], 0.95),
            "itl_p50_ms": 1000 * pct(stats["itl"], 0.5), "itl_p95_ms": 1000 * pct(stats["itl"], 0.95)}


def hf_generate(batch: int, max_tokens: int, rounds: int = 3) -> dict:
    """transformers `generate` on a same-size Qwen2-MoE, batched, sampling, full budget."""
    import torch
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(vocab_size=8192, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=384, moe_intermediate_size=96,
                         shared_expert_intermediate_size=96, num_experts=16, num_experts_per_tok=2,
                         mlp_only_layers=[0], max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(cfg).eval()
    x = torch.randint(0, 8192, (batch, 8))
    times = []
    with torch.no_grad():
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                           min_new_tokens=max_tokens, do_sample=True, temperature=0.8, pad_token_id=0)
            times.append(time.perf_counter() - t0)
    t = statistics.median(times[1:])
    return {"batch": batch, "params": sum(p.numel() for p in model.parameters()), "s": t,
            "output_tok_s": batch * max_tokens / t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each level but the last")
    ap.add_argument("--long-seconds", type=float, default=60.0, help="duration of the last level")
    ap.add_argument("--disconnect-share", type=float, default=0.1, help="last level: requests dropped mid-stream")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-slots", type=int, default=64)
    ap.add_argument("--server-threads", type=int, default=0,
                    help="the server's PyTorch threads (0 = lightseek serve's default: one core fewer than the machine)")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: serve_load, plus the arguments "
                                     "that differ from the defaults)")
    args = ap.parse_args()
    measured = ("checkpoint", "levels", "disconnect_share", "max_tokens", "max_slots", "server_threads")
    stem = result_name("serve_load", args, {k: ap.get_default(k) for k in measured})
    from lora_vs_full import ensure_base

    ensure_base(Path(args.checkpoint))
    server, port = start_server(args.checkpoint, args.max_slots, 4 * args.max_slots, args.server_threads)
    levels = []
    for i, n in enumerate(args.levels):
        last = i == len(args.levels) - 1
        r = asyncio.run(run_level(port, n, args.long_seconds if last else args.seconds, args.max_tokens,
                                  args.disconnect_share if last else 0.0))
        time.sleep(1.0)
        g = server_gauges(port)
        r["leaked_slots"] = int(args.max_slots - g["lightseek_slots_free"])
        r["left_running"], r["left_waiting"] = int(g["lightseek_requests_running"]), int(g["lightseek_requests_waiting"])
        levels.append(r)
        print(f"{n:3d} clients: {r['output_tok_s']:8.1f} tok/s, TTFT p50 {r['ttft_p50_ms']:.0f} ms p95 "
              f"{r['ttft_p95_ms']:.0f} ms, ITL p50 {r['itl_p50_ms']:.1f} ms p95 {r['itl_p95_ms']:.1f} ms, "
              f"{r['requests']} requests, {r['disconnects']} disconnects, {r['errors']} errors, "
              f"{r['leaked_slots']} slots held after", flush=True)
    server.terminate()
    server.wait(timeout=30)
    hf = [hf_generate(b, args.max_tokens) for b in sorted(set(args.levels))]  # a baseline at every level's batch
    for h in hf:
        print(f"transformers generate, batch {h['batch']}: {h['output_tok_s']:.1f} tok/s", flush=True)

    one = next((r for r in levels if r["clients"] == 1), None)
    same_batch = {h["batch"]: h for h in hf}
    print("\n| clients | output tok/s | vs 1 at a time | vs transformers generate, same batch | TTFT p50 / p95 ms "
          "| ITL p50 / p95 ms | requests | disconnects | errors | slots held after |")
    print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for r in levels:
        print(f"| {r['clients']} | {r['output_tok_s']:.0f} | "
              f"{r['output_tok_s'] / one['output_tok_s']:.2f}x | " if one else "| - | ",
              end="")
        base = same_batch.get(r["clients"])
        print(f"{r['output_tok_s'] / base['output_tok_s']:.2f}x | " if base else "- | ", end="")
        print(f"{r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} | {r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f} | "
              f"{r['requests']} | {r['disconnects']} | {r['errors']} | {r['leaked_slots']} |")
    server_threads = args.server_threads or max(1, (os.cpu_count() or 2) - 1)  # as `lightseek serve` chooses
    out = write_result(stem, {**provenance(server_threads), "levels": levels, "transformers_generate": hf,
                              "args": vars(args)})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
