"""Training throughput of the tiny dynamic MoE against dense models, measured in one run.

Variants (same data, batch, sequence length, optimizer):
  - dynamic MoE (tiny preset, target k 2.5), topk MoE with k = 2
  - dense twin with the same *active* parameters per token (the equal-compute baseline)
Rounds alternate between variants so that machine noise hits all of them alike.

    python bench/train_throughput.py [--steps 30] [--rounds 3] [--batch-size 8] [--seq-len 256] [--result NAME]

Prints a markdown table and writes bench/results/train_throughput.json, with the run's provenance
(command, revision, date, machine, versions). Another --batch-size, --seq-len or --max-warmup than
the defaults writes train_throughput_<the arguments that differ>.json (`--seq-len 128`:
train_throughput_seq-len-128.json), so that a probe never overwrites the main result; --steps and
--rounds (how long the same measurement runs) do not change the name. --result NAME writes
bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from lightseek.model.config import preset
from lightseek.model.transformer import Transformer, dense_equivalent
from lightseek.train.config import TrainConfig
from lightseek.train.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, result_name, write_result  # noqa: E402


def variants() -> dict:
    tiny = preset("tiny")
    return {
        "dynamic MoE (k~2.5)": tiny,
        "topk MoE (k=2)": tiny.replace(router_mode="topk", top_k=2),
        "dense, equal active params": dense_equivalent(tiny),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-warmup", type=int, default=400, help="most warm-up steps (dynamic k settling)")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: train_throughput, plus the "
                                     "arguments that differ from the defaults)")
    args = ap.parse_args()
    stem = result_name("train_throughput", args,
                       {k: ap.get_default(k) for k in ("batch_size", "seq_len", "max_warmup")})

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    runs = {}
    for name, cfg in variants().items():
        torch.manual_seed(0)
        model = Transformer(cfg).train()
        runs[name] = {"model": model, "opt": build_optimizer(model, TrainConfig()), "times": [],
                      "params": model.num_params(), "flops": model.flops_per_token(args.seq_len)}
    tokens = args.batch_size * args.seq_len

    def step(r: dict) -> float:
        """One training step; returns the step's mean experts per token (0 for dense)."""
        batch = torch.randint(0, 4096, (args.batch_size, args.seq_len + 1), generator=gen)
        out = r["model"](batch[:, :-1], batch[:, 1:])
        out.loss.backward()
        r["opt"].step()
        r["opt"].zero_grad(set_to_none=True)
        report = r["model"].routing_report()
        r["model"].update_routing()
        r["model"].reset_routing_stats()
        return sum(x["avg_k"] for x in report) / len(report) if report else 0.0

    for r in runs.values():
        # Warm up; a dynamic model also until its controller has brought k to the target (a
        # fresh router spreads its mass evenly and starts at max_k).
        cfg = r["model"].cfg
        for i in range(args.max_warmup):
            k = step(r)
            if i >= 5 and (cfg.router_mode != "dynamic" or abs(k - cfg.target_k) < 0.05):
                break
        r["k"] = []
    for _ in range(args.rounds):
        for r in runs.values():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                r["k"].append(step(r))
            r["times"].append((time.perf_counter() - t0) / args.steps)

    dense_tps = tokens / statistics.median(runs["dense, equal active params"]["times"])
    rows = []
    for name, r in runs.items():
        tps = tokens / statistics.median(r["times"])
        rows.append({"variant": name, "tokens_per_s": tps, "ratio_to_dense": tps / dense_tps,
                     "avg_k": statistics.mean(r["k"]),
                     "total_params": r["params"]["total"], "active_params": r["params"]["active"],
                     "active_mflops_per_token": r["flops"]["active"] / 1e6})
    print("| variant | train tokens/s | vs dense (equal active) | experts/token while timed | total params "
          "| active params | active MFLOPs/token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['tokens_per_s']:,.0f} | {row['ratio_to_dense']:.2f}x | {row['avg_k']:.2f} | "
              f"{row['total_params']:,} | {row['active_params']:,} | {row['active_mflops_per_token']:.2f} |")
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "rounds": args.rounds}
    out = write_result(stem, {**provenance(torch.get_num_threads()), "meta": meta, "rows": rows})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
