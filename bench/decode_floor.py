"""How fast PyTorch can run the base model's 16-row decode forward on one core of this machine.

The serving ceiling (bench/serve_ceiling.py) says which forward time twice transformers
`generate` needs. This measures what the model's decode forward takes, and what the same
forward takes when written for decoding alone and compiled, as the best PyTorch can do here:

  model            `Transformer.forward` on one new token per row over a `KVCache`, every row at
                   the same position (the engine's `SlotCache` adds per-row positions and a mask)
  static eager     the same computation as one function with fixed shapes: fused QKV projection,
                   attention over the cached keys plus the new token (no copy of the cache),
                   every routed expert and the shared experts as three products per MoE layer
                   (routing weights as a mask, zero for experts not chosen, so the result is the
                   same dropless mixture), the head
  static compiled  that function under `torch.compile` (inductor), default settings
  static frozen    the same with inductor's weight freezing (weights folded in as constants)

Each static variant is checked against the model's logits before it is timed. The static
function is a measuring device only: no adapters, no routing statistics (the model's forward
accumulates them, as the engine needs for /metrics), one fixed span, no per-row mask.

    python bench/decode_floor.py [--rows 16] [--span 96]
    python bench/decode_floor.py --checkpoint smollm2-135m-instruct --rows 1 --span 64 --threads 2

Prints a table and writes bench/results/decode_floor.json, with the run's provenance (command,
revision, date, machine, versions). So that a probe never overwrites the main result, another
checkpoint than the default base writes decode_floor_<name>_b<rows>.json, and the base with other
--rows, --span or --threads than the defaults decode_floor_<those>.json (decode_floor_rows-1.json);
--result NAME writes bench/results/NAME.json instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import RESULTS, ROOT, provenance, result_name, timed_ms, write_result  # noqa: E402


def static_step(model):
    """The model's decode forward for fixed shapes, as one function of (ids, keys, values)."""
    import torch
    import torch.nn.functional as F

    cfg = model.cfg
    Hq, Hk, d, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps
    G, scale = Hq // Hk, cfg.head_dim ** -0.5
    layers = []
    for block in model.layers:
        a, f = block.attn, block.ffn
        w = {"attn_norm": block.attn_norm.weight, "ffn_norm": block.ffn_norm.weight,
             "wqkv": torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]).t().contiguous(),
             "wo": a.wo.weight.t().contiguous()}
        if hasattr(f, "router"):
            E, D, H = f.w1_EDH.shape
            shared = [f.shared] if f.shared is not None else []  # always-on experts ride along ungated
            w.update(router=f.router.weight.t().contiguous(), bias=f.router.bias_E, threshold=f.router.threshold,
                     E=E, H=H,
                     w1=torch.cat([f.w1_EDH.permute(1, 0, 2).reshape(D, E * H), *(s.w1.weight.t() for s in shared)],
                                  1).contiguous(),
                     w3=torch.cat([f.w3_EDH.permute(1, 0, 2).reshape(D, E * H), *(s.w3.weight.t() for s in shared)],
                                  1).contiguous(),
                     w2=torch.cat([f.w2_EHD.reshape(E * H, D), *(s.w2.weight.t() for s in shared)], 0).contiguous())
        else:
            w.update(w1=f.w1.weight.t().contiguous(), w3=f.w3.weight.t().contiguous(), w2=f.w2.weight.t().contiguous())
        layers.append(w)
    embed, head, norm = model.embed.weight, model.head.weight, model.norm.weight
    cos_table, sin_table = model.rope_cos, model.rope_sin
    K = cfg.max_k if cfg.router_mode == "dynamic" else cfg.top_k

    def rms(x, weight):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def rope(x, cos, sin):
        x1, x2 = x.chunk(2, -1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)

    def route(h, w):
        logits = h @ w["router"]
        scores = logits.softmax(-1) if cfg.score_fn == "softmax" else logits.sigmoid()
        select = logits if cfg.score_fn == "softmax" else scores
        if cfg.balance_bias:
            select = select + w["bias"]
        ids = select.topk(K, -1).indices
        g = scores.gather(1, ids)
        if cfg.router_mode == "dynamic":
            probs = scores if cfg.score_fn == "softmax" else scores / scores.sum(-1, keepdim=True)
            mass = probs.gather(1, ids).cumsum(-1)
            k_B = ((mass < w["threshold"]).sum(-1) + 1).clamp(cfg.min_k, cfg.max_k)
            g = g * (torch.arange(K)[None] < k_B[:, None])
        if cfg.norm_topk_prob:
            g = g / g.sum(-1, keepdim=True).clamp_min(1e-20)
        gate = torch.zeros(h.shape[0], w["E"]).scatter(1, ids, g * cfg.routed_scaling)
        ones = torch.ones(h.shape[0], w["w1"].shape[1] - w["E"] * w["H"])  # the shared expert: always on
        return torch.cat([gate.repeat_interleave(w["H"], 1), ones], 1)

    def attend(q, k_new, v_new, keys, values):
        """One query per row over the cached keys plus its own new key, without copying the cache.
        Query head h reads key head h // G, as grouped-query attention does."""
        B = q.shape[0]
        q = q.view(B, Hk, G, d)
        scores = torch.cat([q @ keys.transpose(-1, -2), (q * k_new).sum(-1, keepdim=True)], -1) * scale
        p = scores.softmax(-1)
        return (p[..., :-1] @ values + p[..., -1:] * v_new).reshape(B, Hq * d)

    def step(ids_B, pos, keys, values):
        """ids (B,), all rows at position ``pos`` (an int), keys/values (L, B, Hk, pos, d)."""
        B = ids_B.shape[0]
        x = embed[ids_B]
        cos, sin = cos_table[pos], sin_table[pos]
        for i, w in enumerate(layers):
            qkv = rms(x, w["attn_norm"]) @ w["wqkv"]
            q = rope(qkv[:, :Hq * d].view(B, Hq, d), cos, sin)
            k = rope(qkv[:, Hq * d:(Hq + Hk) * d].view(B, Hk, 1, d), cos, sin)
            v = qkv[:, (Hq + Hk) * d:].view(B, Hk, 1, d)
            x = x + attend(q, k, v, keys[i], values[i]) @ w["wo"]
            h = rms(x, w["ffn_norm"])
            mix = F.silu(h @ w["w1"]) * (h @ w["w3"])
            if "router" in w:
                mix = mix * route(h, w)
            x = x + mix @ w["w2"]
        return rms(x, norm) @ head.t()

    return step


def static_step_int8(model):
    """`static_step` for a dense model quantized to int8 per channel (`lightseek quant --bits 8`):
    the same fixed-shape function with PyTorch's packed int8 kernel for every product (bf16
    activations, as the quantized layers compute), the query, key and value weights fused."""
    import torch
    import torch.nn.functional as F

    cfg = model.cfg
    if model.moe_layers() or any(getattr(m, "bits", 8) != 8 for m in model.modules()):
        raise SystemExit("the int8 static step covers dense models quantized to int8 only")
    Hq, Hk, d, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps
    G, scale, bf = Hq // Hk, cfg.head_dim ** -0.5, torch.bfloat16

    def packed(*mods):
        return (torch.cat([m.qweight for m in mods]).contiguous(), torch.cat([m.scales for m in mods]).to(bf))

    layers = [{"attn_norm": b.attn_norm.weight, "ffn_norm": b.ffn_norm.weight,
               "qkv": packed(b.attn.wq, b.attn.wk, b.attn.wv), "wo": packed(b.attn.wo),
               "w13": packed(b.ffn.w1, b.ffn.w3), "w2": packed(b.ffn.w2), "H": b.ffn.w1.out_features}
              for b in model.layers]
    head, norm, embed = packed(model.head), model.norm.weight, model.embed
    cos_table, sin_table = model.rope_cos, model.rope_sin

    def mm(x, w):
        return torch._weight_int8pack_mm(x.to(bf), *w).float()

    def rope(x, cos, sin):
        x1, x2 = x.chunk(2, -1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)

    def step(ids_B, pos, keys, values):
        B = ids_B.shape[0]
        x = embed(ids_B)
        cos, sin = cos_table[pos], sin_table[pos]
        for i, w in enumerate(layers):
            qkv = mm(F.rms_norm(x, (x.shape[-1],), w["attn_norm"], eps), w["qkv"])
            q = rope(qkv[:, :Hq * d].view(B, Hk, G, d), cos, sin)
            k = rope(qkv[:, Hq * d:(Hq + Hk) * d].view(B, Hk, 1, d), cos, sin)
            v = qkv[:, (Hq + Hk) * d:].view(B, Hk, 1, d)
            scores = torch.cat([q @ keys[i].transpose(-1, -2), (q * k).sum(-1, keepdim=True)], -1) * scale
            p = scores.softmax(-1)
            x = x + mm((p[..., :-1] @ values[i] + p[..., -1:] * v).reshape(B, Hq * d), w["wo"])
            h13 = mm(F.rms_norm(x, (x.shape[-1],), w["ffn_norm"], eps), w["w13"])
            x = x + mm(F.silu(h13[:, :w["H"]]) * h13[:, w["H"]:], w["w2"])
        return mm(F.rms_norm(x, (x.shape[-1],), norm, eps), head)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "base"))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--span", type=int, default=96, help="cached tokens per row (the new token is one more)")
    ap.add_argument("--repeats", type=int, default=100, help="calls per timed block (5 blocks, median)")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch threads (1: as `lightseek serve` runs here)")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: named after the checkpoint and "
                                     "the arguments that differ from the defaults)")
    args = ap.parse_args()
    default = str(ROOT / "runs" / "base")
    if args.checkpoint == default:  # the base: named after the arguments that differ from the defaults
        stem = result_name("decode_floor", args, {k: ap.get_default(k) for k in ("rows", "span", "threads")})
    else:  # another checkpoint: named after it and the rows
        stem = result_name(f"decode_floor_{Path(args.checkpoint).name}_b{args.rows}", args, {})
    if args.checkpoint == default:
        from lora_vs_full import ensure_base

        ensure_base(Path(args.checkpoint))

    import torch
    import torch._inductor.config as inductor_config

    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.model.kv_cache import KVCache

    torch.set_num_threads(args.threads)
    model = load_model(resolve_checkpoint(args.checkpoint)).eval()
    cfg, B, S = model.cfg, args.rows, args.span
    quantized = bool(getattr(model, "quant_layers", None))
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
    new = torch.randint(0, cfg.vocab_size, (B,), generator=g)
    results = {}
    with torch.no_grad():
        cache = KVCache.for_model(model, B, S + 1)
        model(prefix, cache=cache)
        keys = torch.stack([k[:, :, :S] for k in cache.k]).contiguous()
        values = torch.stack([v[:, :, :S] for v in cache.v]).contiguous()
        reference = model(new[:, None], cache=cache).logits[:, -1]

        def model_decode():
            cache.length = S
            return model(new[:, None], cache=cache)

        results["model"] = timed_ms(model_decode, args.repeats)
        def checked(label: str, fn):
            diff = (fn(new, S, keys, values) - reference).abs().max().item()
            print(f"{label} against the model: max |logit difference| {diff:.2e}", flush=True)
            # an int8 model's logits come out of a bf16 product: at |logit| ~30 one bf16 step is 0.125,
            # so allow 4 steps there; fp32 models must agree to 1e-3
            limit = 4 * 2.0 ** (int(reference.abs().max().log2().floor()) - 7) if quantized else 1e-3
            if diff > limit:
                raise SystemExit(f"{label} does not reproduce the model; not timing it")
            results[label] = timed_ms(lambda: fn(new, S, keys, values), args.repeats)

        step = static_step_int8(model) if quantized else static_step(model)
        checked("static eager", step)
        for label, freezing in (("static compiled", False), ("static frozen", True)):
            torch._dynamo.reset()
            inductor_config.freezing = freezing
            t0 = time.perf_counter()
            compiled = torch.compile(step, dynamic=False)
            compiled(new, S, keys, values)
            print(f"{label}: compiled in {time.perf_counter() - t0:.0f} s", flush=True)
            checked(label, compiled)
        inductor_config.freezing = False
        head_x = torch.randn(B, cfg.dim)
        results["head product alone"] = timed_ms(lambda: model.head(head_x), args.repeats)

    ceiling = RESULTS / "serve_ceiling.json"
    needed = json.loads(ceiling.read_text()).get("needed_forward_ms") if ceiling.exists() else None
    print(f"\n| {B}-row decode forward, {S} cached tokens, {args.threads} thread(s) | ms |")
    print("|---|---:|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.2f} |")
    if needed:
        print(f"| needed for twice transformers `generate` (bench/results/serve_ceiling.json) | {needed:.2f} |")
    out = write_result(stem, {**provenance(args.threads), "ms": results, "needed_ms": needed, "args": vars(args),
                              "torch": torch.__version__})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
