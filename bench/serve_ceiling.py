"""What serving throughput this machine allows, whatever the model: the server with a forward pass
of a chosen, fixed cost, against transformers `generate`, in one run.

`lightseek serve` runs the shared base checkpoint (runs/base) with its forward pass replaced by
matrix products of a calibrated total cost (0, 1, 2, 3, 4 ms by default). The products release
the GIL as the model's own operations do, but far less often. The cost is calibrated in an idle
process, one thread, as the servers here run (`--threads 1`). Everything else is the real server:
tokenizer, sampling over the base's 8,192-token vocabulary, streaming, the `openai` clients of
bench/serve_load.py on loopback (64 new tokens, temperature 0.8, `ignore_eos`).

Measured in the same run:
  - the same server with the real model (the reference point);
  - the real model's decode forward for 16 rows inside the engine (ms per call, one thread, as
    `lightseek serve` runs it);
  - transformers `generate` at batch 16 (bench/serve_load.py's same-size Qwen2-MoE).

From these it reports which forward time the 16-client level needs to reach twice
transformers `generate`, against what the model's forward takes.

    python bench/serve_ceiling.py [--forward-ms 0 1 2 3 4] [--clients 16] [--seconds 15] [--result NAME]

Prints a markdown table and writes bench/results/serve_ceiling.json, with the run's provenance
(command, revision, date, machine, versions; one thread, as the servers run). Another
--checkpoint, --forward-ms or --clients than the defaults writes serve_ceiling_<the arguments that
differ>.json (`--forward-ms 1 2`: serve_ceiling_forward-ms-1-2.json), so that a probe never
overwrites the main result (bench/decode_floor.py reads that one); --seconds does not change the
name. --result NAME writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, result_name, write_result  # noqa: E402
from serve_load import free_port, hf_generate, launch, run_level, server_gauges  # noqa: E402


def serve_synthetic(checkpoint: str, port: int, forward_ms: float) -> None:
    """`lightseek serve` in this process, the model's forward replaced by products of a fixed cost."""
    import torch

    import lightseek.model.checkpoint as ck
    from lightseek.cli import main
    from lightseek.model.transformer import ModelOutput

    load_model = ck.load_model
    torch.set_num_threads(1)  # as the server below runs (--threads 1), and the real model's timing
    a = torch.randn(160, 160)
    for _ in range(20):  # warm-up
        torch.mm(a, a)
    t0 = time.perf_counter()
    for _ in range(200):
        torch.mm(a, a)
    per_call = (time.perf_counter() - t0) / 200
    n_calls = round(forward_ms / 1000 / per_call)

    def load_synthetic(path, *args, **kwargs):
        model = load_model(path, *args, **kwargs)
        logits = torch.randn(1, 1, model.cfg.vocab_size, generator=torch.Generator().manual_seed(0))

        def forward(idx_BT, targets_BT=None, cache=None, start_pos=None, last_only=False, **_):
            B, T = idx_BT.shape
            for _ in range(n_calls):
                torch.mm(a, a)
            if cache is not None:
                cache.advance(T)
            return ModelOutput(logits.expand(B, 1 if last_only else T, -1))

        model.forward = forward
        return model

    ck.load_model = load_synthetic
    sys.exit(main(["serve", checkpoint, "--name", "base", "--port", str(port), "--max-slots", "64",
                   "--max-waiting", "256", "--threads", "1"]))


def measure(cmd: list[str], port: int, clients: int, seconds: float) -> dict:
    proc = launch(cmd, port)
    try:
        r = asyncio.run(run_level(port, clients, seconds, 64, 0.0))
        r["engine_steps"] = server_gauges(port).get("lightseek_engine_steps_total")
        return r
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def real_forward_ms(checkpoint: str, rows: int = 16, steps: int = 60) -> float:
    """Median time of the model's decode forward inside the engine, `rows` rows, one thread."""
    import torch

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.serve.engine import Engine, GenParams

    torch.set_num_threads(1)
    ckpt = resolve_checkpoint(checkpoint)
    model, tok = load_model(ckpt), Tokenizer.load(ckpt / "tokenizer.json")
    engine = Engine(model, tok, max_slots=rows)
    for i in range(rows):
        engine.submit(tok.encode(f"The history of the city begins {i}"), GenParams(max_tokens=10_000, ignore_eos=True,
                                                                                  temperature=0.8))
    while engine.waiting or any(r.prefilled < len(r.prompt_ids) for r in engine.running.values()):
        engine.step()
    forward, times = model.forward, []

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = forward(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return out

    model.forward = timed
    for _ in range(steps):
        engine.step()
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--forward-ms", type=float, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: serve_ceiling, plus the "
                                     "arguments that differ from the defaults)")
    ap.add_argument("--serve-synthetic", nargs=2, metavar=("PORT", "MS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_synthetic:
        serve_synthetic(args.checkpoint, int(args.serve_synthetic[0]), float(args.serve_synthetic[1]))
        return
    stem = result_name("serve_ceiling", args, {k: ap.get_default(k) for k in ("checkpoint", "forward_ms", "clients")})
    from lora_vs_full import ensure_base

    ensure_base(Path(args.checkpoint))
    rows = []
    for ms in [*args.forward_ms, None]:
        port = free_port()
        if ms is None:
            cmd = [sys.executable, "-m", "lightseek", "serve", args.checkpoint, "--name", "base", "--port", str(port),
                   "--max-slots", "64", "--max-waiting", "256", "--threads", "1"]
        else:
            cmd = [sys.executable, __file__, "--checkpoint", args.checkpoint, "--serve-synthetic", str(port), str(ms)]
        r = measure(cmd, port, args.clients, args.seconds)
        r["forward_ms"] = ms
        rows.append(r)
        label = "real model" if ms is None else f"forward {ms:g} ms"
        print(f"{label}: {r['output_tok_s']:.0f} tok/s, ITL p50 {r['itl_p50_ms']:.1f} ms, "
              f"{r['engine_steps']:.0f} engine steps, {r['errors']} errors", flush=True)
    fwd = real_forward_ms(args.checkpoint, rows=args.clients)
    print(f"real model: decode forward for {args.clients} rows {fwd:.2f} ms (median, in the engine)", flush=True)
    hf = hf_generate(args.clients, 64)
    print(f"transformers generate, batch {args.clients}: {hf['output_tok_s']:.0f} tok/s", flush=True)

    target = 2 * hf["output_tok_s"]
    print(f"\n| forward per call | served tok/s at {args.clients} clients | vs transformers `generate` "
          f"| engine steps/s | ITL p50 ms |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        label = f"real model ({fwd:.2f} ms decode)" if r["forward_ms"] is None else f"{r['forward_ms']:g} ms"
        print(f"| {label} | {r['output_tok_s']:.0f} | {r['output_tok_s'] / hf['output_tok_s']:.2f}x | "
              f"{r['engine_steps'] / r['wall_s']:.0f} | {r['itl_p50_ms']:.1f} |")
    synthetic = sorted((r["forward_ms"], r["output_tok_s"]) for r in rows if r["forward_ms"] is not None)
    needed = None
    for (ms_a, tps_a), (ms_b, tps_b) in itertools.pairwise(synthetic):
        if tps_a >= target > tps_b:  # linear in 1 / throughput (time per token) between the two points
            f = (1 / target - 1 / tps_a) / (1 / tps_b - 1 / tps_a)
            needed = ms_a + f * (ms_b - ms_a)
    print(f"\ntwice transformers `generate`: {target:.0f} tok/s; " + (
        f"needs a forward of at most {needed:.2f} ms per call (the model's decode forward takes {fwd:.2f} ms)"
        if needed is not None else "not bracketed by the forward costs measured"))
    out = write_result(stem, {**provenance(1), "levels": rows, "real_forward_ms": fwd, "transformers_generate": hf,
                              "needed_forward_ms": needed, "args": vars(args)})
    print(f"written {out}")


if __name__ == "__main__":
    main()
