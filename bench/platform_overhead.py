"""What the platform (API keys, rate limits, the ledger) costs a server: the same checkpoint
served with and without ``--platform``, side by side in one run.

Two measurements, each on both servers in turn (off, on, off, on, ... so that drift in the
machine falls on both alike):

  latency      one client, requests one after another: the p50 and p95 of each request's time;
               the difference is what the key check, the reservation and the rate limits add
  throughput   16 clients at once, each sending requests back to back: completion tokens per
               second over the whole run

Requests are short completions (8 tokens by default) so that the platform's share of each is as
large as it will ever be. Each server is a `lightseek serve` process on loopback; the clients are
threads of this process with keep-alive connections. The platform server uses a SQLite database
in a temporary folder (WAL; the embedded default).

    python bench/platform_overhead.py [--checkpoint runs/base] [--requests 200] [--clients 16]
                                      [--max-tokens 8] [--rounds 2] [--result NAME]

Prints a markdown table and writes bench/results/platform_overhead.json (with the run's
provenance); other settings write platform_overhead_<what differs>.json, or --result NAME.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402

DEFAULTS = {"checkpoint": str(ROOT / "runs" / "base"), "requests": 200, "clients": 16, "max_tokens": 8, "rounds": 2}
PROMPT = "The history of the city begins with"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(checkpoint: str, db: str | None, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "lightseek", "serve", checkpoint, "--port", str(port), "--name", "m",
           "--max-waiting", "256"] + (["--platform", db] if db else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server did not start: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not become healthy in 120 s")


def client(port: int, key: str | None, n: int, max_tokens: int, out: list) -> None:
    """``n`` completions back to back on one keep-alive connection; appends (seconds, tokens)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True})
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body, headers)
        resp = conn.getresponse()
        data = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data}")
        out.append((time.perf_counter() - t0, data["usage"]["completion_tokens"]))
    conn.close()


def measure(port: int, key: str | None, args) -> dict:
    warm: list = []
    client(port, key, 10, args.max_tokens, warm)
    one: list = []
    client(port, key, args.requests, args.max_tokens, one)
    lat = sorted(t for t, _ in one)
    many: list = []
    per = max(1, args.requests // args.clients)
    threads = [threading.Thread(target=client, args=(port, key, per, args.max_tokens, many))
               for _ in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
            "tok_s": sum(n for _, n in many) / wall, "requests_16": len(many)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint to serve (default runs/base, the project's small base)")
    ap.add_argument("--requests", type=int, help="requests per measurement")
    ap.add_argument("--clients", type=int)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--rounds", type=int, help="off/on pairs of measurements")
    ap.add_argument("--result")
    args = ap.parse_args()
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    from lightseek.model.checkpoint import resolve_checkpoint

    ckpt = str(resolve_checkpoint(args.checkpoint))
    stem = result_name("platform_overhead", args, DEFAULTS)
    tmp = Path(tempfile.mkdtemp(prefix="lightseek-platform-bench-"))
    db = str(tmp / "platform.db")
    env = dict(os.environ)  # the key secret: the file the platform keeps beside its SQLite database
    from lightseek.platform.ledger import open_store

    engine, acc, _ = open_store(db)
    acc.create_org("bench", "enterprise")
    key, _ = acc.create_key("bench", "bench")
    engine.dispose()
    rows = {"off": [], "on": []}
    servers = {"off": start(ckpt, None, env), "on": start(ckpt, db, env)}
    try:
        for r in range(args.rounds):
            for mode in ("off", "on"):
                proc, port = servers[mode]
                m = measure(port, key if mode == "on" else None, args)
                rows[mode].append(m)
                print(f"round {r + 1} {mode:3s}: p50 {m['p50_ms']:.2f} ms, p95 {m['p95_ms']:.2f} ms, "
                      f"{m['tok_s']:.0f} tok/s at {args.clients} clients", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
    med = {mode: {k: statistics.median(x[k] for x in rs) for k in ("p50_ms", "p95_ms", "tok_s")}
           for mode, rs in rows.items()}
    added_p95 = med["on"]["p95_ms"] - med["off"]["p95_ms"]
    added_p50 = med["on"]["p50_ms"] - med["off"]["p50_ms"]
    loss = 1 - med["on"]["tok_s"] / med["off"]["tok_s"]
    from lightseek.db import connect
    from lightseek.platform.ledger import Ledger

    eng = connect(db)
    audit = Ledger(eng).audit()
    eng.dispose()
    print(f"\n| server | p50 (ms) | p95 (ms) | tok/s, {args.clients} clients |\n|---|---:|---:|---:|")
    for mode in ("off", "on"):
        print(f"| {'with' if mode == 'on' else 'without'} the platform | {med[mode]['p50_ms']:.2f} | "
              f"{med[mode]['p95_ms']:.2f} | {med[mode]['tok_s']:.0f} |")
    print(f"\nadded: p50 {added_p50:+.2f} ms, p95 {added_p95:+.2f} ms (target <= 2 ms); throughput "
          f"{-100 * loss:+.1f}% (target >= -5%); ledger audit: {'clean' if not audit else audit}")
    out = write_result(stem, {**provenance(), "checkpoint": args.checkpoint, "settings": vars(args),
                              "rounds": rows, "median": med, "added_p50_ms": added_p50, "added_p95_ms": added_p95,
                              "throughput_change": -loss, "audit_problems": audit})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
