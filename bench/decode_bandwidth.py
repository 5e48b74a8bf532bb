"""How fast batch-1 fp32 decoding of SmolLM2-135M-Instruct can be on this machine: the memory ceiling.

At one row a decode step reads every weight once and does two flops with each, so its time is
bounded below by the bytes of its weights over the memory's read bandwidth. This measures, in
one process:

- the bytes a step reads: every projection of every block and the head (the tied embedding,
  read once as the head; the one embedding row looked up is left out);
- the machine's read bandwidth, as fast as PyTorch streams memory: the sum of a 1 GiB fp32
  tensor, with --threads threads (an upper bound for any product kernel: a sum does one add per
  value and has no second operand);
- the bandwidth of the one-row products the decode step uses (`sliced_linear`: the output
  features in slices through one ``bmm``), on the model's own weights in the step's order, and
  of the other one-row product kernels PyTorch has on the CPU (``F.linear``, MKL's packed GEMM,
  oneDNN's linear);
- the step itself (`DecodeStep` on a 64-token context, 64 tokens).

From these come the step's time and tokens/s at each bandwidth, and what 3x transformers
`generate` (the batch-1 target of the real-weights issue, from bench/results/real_model.json,
prefill included as that bench times it) needs: the bandwidth its step would have to stream
the weights at, with nothing else in the step.

    python bench/decode_bandwidth.py [--threads 2] [--repeats 5]

Writes bench/results/decode_bandwidth.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import RESULTS, provenance, write_result  # noqa: E402
from real_model import timed  # noqa: E402

NAME = "smollm2-135m-instruct"
CONTEXT, STEPS = 64, 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from lightseek.kernels.linear import sliced_linear
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.model.decode import DecodeStep
    from lightseek.model.kv_cache import KVCache

    torch.set_num_threads(args.threads)
    model = load_model(resolve_checkpoint(NAME)).eval()
    weights = [m.weight.detach() for block in model.layers
               for m in (block.attn.wq, block.attn.wk, block.attn.wv, block.attn.wo,
                         block.ffn.w1, block.ffn.w3, block.ffn.w2)]
    weights.append(model.head.weight.detach())
    step_bytes = sum(w.numel() * w.element_size() for w in weights)

    big = torch.ones(2 ** 28)  # 1 GiB
    read_gb_s = big.numel() * 4 / timed(big.sum, args.repeats) / 1e9
    del big

    rows = {n: torch.randn(1, n) for n in {w.shape[1] for w in weights}}

    def products():
        for w in weights:
            sliced_linear(rows[w.shape[1]], w, None, 8 if w is weights[-1] else 4)

    with torch.inference_mode():
        product_gb_s = step_bytes / timed(products, args.repeats) / 1e9
        kernels = {"F.linear": lambda: [F.linear(rows[w.shape[1]], w) for w in weights],
                   "sliced bmm (the step's)": products}
        if hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"):  # MKL's packed GEMM, as inductor's freezing uses
            packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, 1) for w in weights]
            kernels["MKL packed (_mkl_linear)"] = lambda: [
                torch.ops.mkl._mkl_linear(rows[w.shape[1]], p, w, None, 1) for p, w in zip(packed, weights)]
        if torch.backends.mkldnn.is_available():  # oneDNN's linear on its own weight layout
            onednn = [w.to_mkldnn() for w in weights]
            kernels["oneDNN (mkldnn_linear)"] = lambda: [
                torch._C._nn.mkldnn_linear(rows[w.shape[1]].to_mkldnn(), o, None) for o, w in zip(onednn, weights)]
        kernel_gb_s = {name: step_bytes / timed(fn, args.repeats) / 1e9 for name, fn in kernels.items()}
        del kernels
        step = DecodeStep.of(model)
        ids = torch.randint(100, 40_000, (CONTEXT,), generator=torch.Generator().manual_seed(0))

        def decode():
            cache = KVCache.for_model(model, 1, CONTEXT + STEPS)
            step.prefill(ids, cache)
            token = ids[-1:]
            for _ in range(STEPS):
                token = step(token, cache).argmax(-1)

        def prefill():
            step.prefill(ids, KVCache.for_model(model, 1, CONTEXT))

        prefill_s = timed(prefill, args.repeats)
        step_s = (timed(decode, args.repeats) - prefill_s) / STEPS

    real = json.loads((RESULTS / "real_model.json").read_text())
    by = {r["system"]: r for r in real["rows"]}
    reference = by["transformers fp32 (generate)"]["decode_b1_tok_s"]
    new = real["settings"]["new_tokens"]
    target_tok_s = 3 * reference
    # the bench times prompt + new tokens: the time left for the steps once this prefill is paid
    target_step_s = (new / target_tok_s - prefill_s) / new
    result = {
        "step_weight_bytes": step_bytes,
        "read_gb_s": read_gb_s,
        "product_gb_s": product_gb_s,
        "kernel_gb_s": kernel_gb_s,
        "step_ms": step_s * 1e3,
        "step_gb_s": step_bytes / step_s / 1e9,
        "prefill_ms": prefill_s * 1e3,
        "ceiling_tok_s": {"at read bandwidth": read_gb_s * 1e9 / step_bytes,
                          "at product bandwidth": product_gb_s * 1e9 / step_bytes,
                          "measured step": 1 / step_s},
        "target": {"transformers_tok_s": reference, "tok_s": target_tok_s, "step_ms": target_step_s * 1e3,
                   "needs_gb_s": step_bytes / target_step_s / 1e9,
                   "share_of_read_bandwidth": step_bytes / target_step_s / 1e9 / read_gb_s},
    }
    print(f"weights read per step: {step_bytes / 1e6:.1f} MB (fp32)")
    print(f"read bandwidth (sum of 1 GiB): {read_gb_s:.1f} GB/s; one-row products: {product_gb_s:.1f} GB/s; "
          f"the step: {result['step_gb_s']:.1f} GB/s ({result['step_ms']:.1f} ms)")
    print("one-row product kernels, GB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in kernel_gb_s.items()))
    print("tokens/s ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in result["ceiling_tok_s"].items()))
    t = result["target"]
    print(f"3x transformers ({reference:.1f} tok/s) = {t['tok_s']:.1f} tok/s: a step of {t['step_ms']:.1f} ms after a "
          f"{result['prefill_ms']:.0f} ms prefill, streaming {t['needs_gb_s']:.1f} GB/s "
          f"({t['share_of_read_bandwidth']:.0%} of the read bandwidth) with nothing else in the step")
    out = write_result("decode_bandwidth", {**provenance(args.threads), "model": NAME,
                                            "settings": {"context": CONTEXT, "steps": STEPS, "repeats": args.repeats},
                                            "real_model_revision": real.get("git_revision"), **result})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
