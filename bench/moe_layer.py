"""One MoE layer, forward and forward+backward: lightseek against Hugging Face DeepSeek-V3 and dense.

For each configuration (dims x routed experts; expert width, 1 shared expert, fp32 on CPU):

  - lightseek ``MoE``, sigmoid scores, normalised top-k weights: topk k=2 and k=3, and dynamic
    (threshold bisected on the benchmark input until the realised average k is 2.5 +- 0.05),
    once per dispatch path in ``DISPATCH`` except 'reference' and the decode path 'few_tokens'
    ('auto' marks the default);
  - ``transformers`` ``DeepseekV3MoE`` (k=2, k=3) with the same weights, once per experts
    implementation (eager, grouped_mm, batched_mm); before any timing, every implementation's
    output must equal lightseek's topk output (the run aborts otherwise), and a profiler trace
    must show that the requested implementation is what ran;
  - a dense SwiGLU with the same active parameters per token (width * (n_shared + k)).

Variants are interleaved within each repeat so that machine noise hits all of them alike; the
table gives median tokens/s. ``--profile`` adds, for lightseek's topk k=2 and dynamic layers, the
share of forward+backward time spent in the router, sort/permute, splitting the sorted rows
into per-expert segments and joining them (slice/cat/unbind), expert GEMMs and scatter.

    python bench/moe_layer.py [--dims 256 512] [--experts 16 64] [--width 128] [--tokens 2048]
                              [--repeats 15] [--warmup 3] [--profile] [--result NAME]

HF's batched_mm copies each token-slot's expert weights; where that would not fit in free memory
its row says "skipped". A path that raises on this machine is reported as failed, not fatal.
Needs ``transformers`` (pip install "lightseek[bench]"). Writes bench/results/moe_layer.json with
the run's provenance (command, revision, date, machine, versions). Other --dims, --experts,
--width, --tokens or --seed than the defaults measure other layers: such a run writes
moe_layer_<the arguments that differ>.json (`--dims 256 --experts 16`:
moe_layer_dims-256_experts-16.json), so that it never overwrites the main result; --repeats,
--warmup and --profile do not change the name. --result NAME writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lightseek.kernels import dispatch as dispatch_mod
from lightseek.model.config import ModelConfig
from lightseek.model.moe import MoE, SwiGLU

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, result_name, write_result  # noqa: E402

TOPK_KS = (2, 3)
TARGET_K, K_TOL = 2.5, 0.05           # dynamic mode: realised average k must land in target +- tol
MAX_K = 4                              # dynamic mode: most experts a token may take
EXPERT_STD = 0.02                      # expert and shared-expert weights
ROUTER_GAIN = 2.0                      # router weight std = gain / sqrt(D): logits of std ~2 on unit inputs
BIAS_STD = 0.01                        # selection-only balance bias (nonzero, so its mapping is exercised)
HF_IMPLS = ("eager", "grouped_mm", "batched_mm")
ATOL, RTOL = 1e-5, 1e-4
MEM_FRACTION = 0.7                     # skip a variant whose estimated peak exceeds this share of free RAM
# What a dispatch path or experts implementation that does not work on this machine raises
# (CPU out-of-memory is a RuntimeError); it is reported in the table, the run goes on.
PATH_ERRORS = (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError, IndexError, AttributeError)


# ----------------------------------------------------------------------------- building

def hf_moe_class():
    """(DeepseekV3Config, DeepseekV3MoE), or an ImportError that says how to install them."""
    try:
        import transformers
        from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    except ImportError as e:
        raise ImportError(f"bench/moe_layer.py needs transformers with DeepSeek-V3 ({e}); "
                          'pip install "lightseek[bench]"') from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise ImportError(f"bench/moe_layer.py needs transformers>=5 (stacked experts, experts_implementation), "
                          f'found {transformers.__version__}; pip install -U "lightseek[bench]"')
    transformers.logging.set_verbosity_error()
    return DeepseekV3Config, DeepseekV3MoE


def moe_config(dim: int, n_experts: int, width: int, mode: str, k: int = 2, n_shared: int = 1) -> ModelConfig:
    """lightseek's layer in DeepSeek-V3's routing: sigmoid scores, renormalised top-k weights."""
    return ModelConfig(dim=dim, n_heads=1, n_kv_heads=1, n_experts=n_experts, moe_inter_dim=width,
                       n_shared_experts=n_shared, router_mode=mode, top_k=k, score_fn="sigmoid",
                       norm_topk_prob=True, routed_scaling=1.0, target_k=TARGET_K, min_k=1, max_k=MAX_K)


@torch.no_grad()
def init_moe(layer: MoE, seed: int) -> MoE:
    """Deterministic weights: the same seed gives the same weights in every mode."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [layer.w1_EDH, layer.w3_EDH, layer.w2_EHD]
    if layer.shared is not None:
        tensors += [layer.shared.w1.weight, layer.shared.w3.weight, layer.shared.w2.weight]
    for t in tensors:
        t.copy_(torch.randn(t.shape, generator=gen) * EXPERT_STD)
    r = layer.router
    r.weight.copy_(torch.randn(r.weight.shape, generator=gen) * ROUTER_GAIN / math.sqrt(layer.cfg.dim))
    r.bias_E.copy_(torch.randn(r.bias_E.shape, generator=gen) * BIAS_STD)
    return layer


def build_ours(dim: int, n_experts: int, width: int, mode: str, k: int = 2, seed: int = 0) -> MoE:
    return init_moe(MoE(moe_config(dim, n_experts, width, mode, k)), seed)


def build_hf(ours: MoE, impl: str = "eager") -> nn.Module:
    """DeepseekV3MoE with lightseek's weights, experts implementation ``impl`` (read from the
    config at every forward call, so it is set on the config before construction)."""
    DeepseekV3Config, DeepseekV3MoE = hf_moe_class()
    c = ours.cfg
    hf_cfg = DeepseekV3Config(hidden_size=c.dim, moe_intermediate_size=c.moe_inter_dim,
                              n_routed_experts=c.n_experts, num_experts_per_tok=c.top_k,
                              n_shared_experts=c.n_shared_experts, n_group=1, topk_group=1,
                              norm_topk_prob=c.norm_topk_prob, routed_scaling_factor=c.routed_scaling,
                              hidden_act="silu", experts_implementation=impl)
    if hf_cfg._experts_implementation != impl:
        raise RuntimeError(f"DeepseekV3Config kept experts implementation {hf_cfg._experts_implementation!r}, "
                           f"asked for {impl!r}")
    hf = DeepseekV3MoE(hf_cfg)
    copy_to_hf(ours, hf)
    return hf


@torch.no_grad()
def copy_to_hf(ours: MoE, hf: nn.Module) -> None:
    """lightseek (E,D,H) gate/up and (E,H,D) down -> HF gate_up_proj (E,2H,D) = [gate; up], down (E,D,H)."""
    hf.experts.gate_up_proj.copy_(torch.cat([ours.w1_EDH, ours.w3_EDH], dim=2).transpose(1, 2))
    hf.experts.down_proj.copy_(ours.w2_EHD.transpose(1, 2))
    hf.gate.weight.copy_(ours.router.weight)
    hf.gate.e_score_correction_bias.copy_(ours.router.bias_E)
    for name, lin in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
        getattr(hf.shared_experts, name).weight.copy_(getattr(ours.shared, lin).weight)


def hf_grads_as_ours(hf: nn.Module) -> dict[str, torch.Tensor]:
    """HF parameter gradients in lightseek's layout (names of lightseek's parameters)."""
    gate_up = hf.experts.gate_up_proj.grad.transpose(1, 2)          # (E, D, 2H)
    H = gate_up.shape[2] // 2
    return {"w1_EDH": gate_up[..., :H], "w3_EDH": gate_up[..., H:],
            "w2_EHD": hf.experts.down_proj.grad.transpose(1, 2), "router.weight": hf.gate.weight.grad}


def dense_twin(dim: int, width: int, n_shared: int, k: float, seed: int = 0) -> SwiGLU:
    """Dense SwiGLU with the MoE's active parameters per token: width * (n_shared + k)."""
    mlp = SwiGLU(dim, round(width * (n_shared + k)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * EXPERT_STD)
    return mlp


@torch.no_grad()
def realised_k(layer: MoE, x_BTD: torch.Tensor) -> float:
    """Average number of routed experts per token on x."""
    ids_TK = layer.router(x_BTD).expert_ids_TK
    layer.router.reset_stats()
    return (ids_TK < layer.cfg.n_experts).sum(-1).float().mean().item()


def calibrate_threshold(layer: MoE, x_BTD: torch.Tensor, target: float = TARGET_K, tol: float = K_TOL) -> float:
    """Bisect the dynamic router's threshold (average k grows with it) toward k = target; keeps
    the closest threshold found and insists that it lands within tol."""
    lo, hi, best = 0.0, 1.0, (float("inf"), 0.5, 0.0)      # (|k - target|, threshold, k)
    for _ in range(40):
        mid = (lo + hi) / 2
        layer.router.threshold.fill_(mid)
        k = realised_k(layer, x_BTD)
        best = min(best, (abs(k - target), mid, k))
        if best[0] <= tol / 10:
            break
        lo, hi = (mid, hi) if k < target else (lo, mid)
    layer.router.threshold.fill_(best[1])
    if best[0] > tol:
        raise RuntimeError(f"threshold bisection did not reach k = {target} +- {tol} (closest k {best[2]:.3f})")
    return best[2]


def forward_and_grads(module: nn.Module, x_BTD: torch.Tensor, g_BTD: torch.Tensor):
    """Output and input gradient of sum(module(x) * g); parameter gradients stay on the module."""
    module.zero_grad(set_to_none=True)
    x = x_BTD.detach().clone().requires_grad_(True)
    y = module(x)
    (y * g_BTD).sum().backward()
    return y.detach(), x.grad


# ----------------------------------------------------------------------------- checks

def available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("inf")


def hf_memory_error(impl: str, tokens: int, k: int, dim: int, width: int) -> str | None:
    """batched_mm copies each pair's expert weights (3*H*D floats per token-slot); fwd+bwd keeps
    them and their gradient. Returns a skip reason when that would not fit in free memory."""
    if impl != "batched_mm":
        return None
    need = 2 * tokens * k * 3 * width * dim * 4
    free = available_bytes()
    if need > MEM_FRACTION * free:
        return f"skipped: per-pair weight copies need ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def experts_impl_that_ran(hf: nn.Module, x_BTD: torch.Tensor) -> str:
    """Which experts implementation a forward of ``hf`` really ran, read off its profiler trace."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        hf(x_BTD)
    names = {e.name for e in prof.events()}
    if any(n.startswith("aten::") and "grouped_mm" in n for n in names):
        return "grouped_mm"
    if "transformers::grouped_mm_fallback" in names:
        return "grouped_mm (HF fallback loop)"
    if "aten::bmm" in names:
        return "batched_mm"
    return "eager" if "aten::one_hot" in names else "unknown"


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    try:
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)
    except AssertionError as e:
        diff = (actual - expected).abs().max().item()
        raise SystemExit(f"ABORT: {what} differs from lightseek's topk layer (max abs diff {diff:.3g}); the "
                         f"weight mapping or the routing configs no longer match, so nothing is timed.\n{e}")


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:160]


# ----------------------------------------------------------------------------- timing

@dataclass
class Variant:
    name: str
    family: str                      # ours | hf | dense
    module: nn.Module
    k: float
    mode: str = "topk"               # topk | dynamic | dense
    path: str = ""                   # our dispatch path or HF experts implementation
    note: str = ""
    error: str | None = None
    fwd_s: list = field(default_factory=list)
    fwdbwd_s: list = field(default_factory=list)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "ours":
            self.module.set_dispatch(self.path)
        return self.module(x)

    def tok_s(self, which: str, tokens: int) -> float | None:
        times = getattr(self, which)
        return tokens / statistics.median(times) if times and not self.error else None


def run_once(v: Variant, x: torch.Tensor, xg: torch.Tensor, g: torch.Tensor, record: bool) -> None:
    with torch.no_grad():
        t0 = time.perf_counter()
        v(x)
        t1 = time.perf_counter()
    v.module.zero_grad(set_to_none=True)
    xg.grad = None
    t2 = time.perf_counter()
    (v(xg) * g).sum().backward()
    t3 = time.perf_counter()
    if record:
        v.fwd_s.append(t1 - t0)
        v.fwdbwd_s.append(t3 - t2)


def time_variants(variants: list[Variant], x: torch.Tensor, g: torch.Tensor, repeats: int, warmup: int) -> None:
    """Median-able times; the order rotates each repeat so no variant always runs first."""
    xg = x.detach().clone().requires_grad_(True)
    live = [v for v in variants if not v.error]
    for r in range(warmup + repeats):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for v in order:
            if v.error:
                continue
            try:
                run_once(v, x, xg, g, record=r >= warmup)
            except PATH_ERRORS as e:
                v.error = "failed: " + one_line(e)


# ----------------------------------------------------------------------------- profile

BUCKETS = ("router", "sort/permute", "split/join", "expert GEMMs", "scatter", "shared expert", "other")
PERMUTE_OPS = {"argsort", "sort", "bincount", "histc", "cumsum", "nonzero", "floor_divide", "index_select",
               "index", "gather", "item", "_local_scalar_dense"}
SPLIT_JOIN_OPS = {"slice", "narrow", "split", "split_with_sizes", "unbind", "select", "cat", "stack"}
SCATTER_OPS = {"index_add", "index_add_", "scatter_add", "scatter_add_", "index_put", "index_put_"}


def _op_bucket(scope: str, op: str) -> str | None:
    if scope in ("ls.router", "ls.shared"):
        return "router" if scope == "ls.router" else "shared expert"
    if scope != "ls.layer":
        return None                   # the loss, outside the layer
    if "mm" in op or op in ("matmul", "linear"):
        return "expert GEMMs"
    for bucket, ops in (("sort/permute", PERMUTE_OPS), ("split/join", SPLIT_JOIN_OPS), ("scatter", SCATTER_OPS)):
        if op in ops:
            return bucket
    return "other"


def profile_shares(layer: MoE, path: str, x: torch.Tensor, g: torch.Tensor, iters: int = 3) -> dict:
    """Self CPU time of forward+backward by bucket. Forward ops are scoped by module (router,
    shared expert, rest of the layer) and named by their outermost aten op; a backward op takes
    the scope of the forward op that made its autograd node (same sequence number) and the name
    of that node, so e.g. index_select's backward (an index_add) counts as permute."""
    from torch.profiler import ProfilerActivity, profile, record_function

    layer.set_dispatch(path)
    for mod, label in ((layer.router, "ls.router"), (layer.shared, "ls.shared")):
        def scoped(*a, _f=mod.forward, _l=label, **kw):
            with record_function(_l):
                return _f(*a, **kw)
        mod.forward = scoped
    try:
        xg = x.detach().clone().requires_grad_(True)
        forward_and_grads(layer, x, g)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                layer.zero_grad(set_to_none=True)
                with record_function("ls.layer"):
                    y = layer(xg)
                with record_function("ls.loss"):
                    loss = (y * g).sum()
                loss.backward()
    finally:
        del layer.router.forward, layer.shared.forward
    seq_scope, us = {}, defaultdict(float)
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        chain = [e]
        while chain[-1].cpu_parent is not None:
            chain.append(chain[-1].cpu_parent)
        bwd = [c for c in chain if c.name.startswith("autograd::engine::evaluate_function: ")]
        if bwd:
            node = bwd[-1].name.split(": ", 1)[1]
            scope = seq_scope.get(bwd[-1].sequence_nr, "ls.layer")
            op = re.sub(r"(?<!^)(?=[A-Z])", "_", re.sub(r"Backward\d*$", "", node)).lower()
        else:
            at = next((i for i, c in enumerate(chain) if c.name.startswith("ls.")), None)
            if at is None:
                continue
            scope, op = chain[at].name, chain[at - 1].name.split("::")[-1] if at else "python"
            if e.sequence_nr >= 0:
                seq_scope[e.sequence_nr] = scope   # the last op with a number made its node
        bucket = _op_bucket(scope, op)
        if bucket:
            us[bucket] += e.self_cpu_time_total
    total = sum(us.values()) or 1.0
    return {"ms_per_iter": total / iters / 1e3, **{b: us[b] / total for b in BUCKETS}}


# ----------------------------------------------------------------------------- one configuration

def our_paths() -> list[str]:
    # few_tokens is the decode path (a handful of rows): at training batch sizes it is a Python
    # loop over every token, which 'auto' never picks there
    return [name for name in dispatch_mod.DISPATCH if name not in ("reference", "few_tokens")]


def auto_path(x: torch.Tensor) -> str:
    """The dispatch path 'auto' picks for x's device and dtype."""
    pick = getattr(dispatch_mod, "auto_dispatch", None)
    if pick is not None:
        return pick(x.device.type, x.dtype)
    fn = dispatch_mod.get_dispatch("auto")
    return next((n for n, f in dispatch_mod.DISPATCH.items() if f is fn), "?")


def build_variants(dim: int, n_experts: int, width: int, x: torch.Tensor, seed: int) -> tuple[list[Variant], dict]:
    """Every variant, after checking outputs: HF and our fast paths against our reference path."""
    T = x.shape[0] * x.shape[1]
    auto = auto_path(x)
    info: dict = {"auto_path": auto, "hf_ran": {}}
    variants: list[Variant] = []
    ours = {k: build_ours(dim, n_experts, width, "topk", k, seed) for k in TOPK_KS}
    dyn = build_ours(dim, n_experts, width, "dynamic", seed=seed)
    k_dyn = calibrate_threshold(dyn, x)
    info.update(dynamic_k=k_dyn, dynamic_threshold=dyn.router.threshold.item())
    with torch.no_grad():
        for k, layer in ours.items():
            layer.set_dispatch("reference")
            expected = layer(x)
            for path in our_paths():
                v = Variant(f"ours topk k={k} [{path}]", "ours", layer, k, "topk", path,
                            note="auto" if path == auto else "")
                try:
                    got = v(x)
                except PATH_ERRORS as e:
                    v.error = "failed: " + one_line(e)
                else:
                    assert_same(got, expected, f"lightseek dispatch '{path}' (topk k={k})")
                variants.append(v)
            for impl in HF_IMPLS:
                v = Variant(f"HF DeepseekV3MoE k={k} [{impl}]", "hf", None, k, "topk", impl)
                v.error = hf_memory_error(impl, T, k, dim, width)
                if not v.error:
                    try:
                        v.module = build_hf(layer, impl)
                        ran = info["hf_ran"][f"k={k} {impl}"] = experts_impl_that_ran(v.module, x)
                        if ran != impl:
                            v.error = f"failed: asked for {impl}, the trace shows {ran}"
                        got = v(x)
                    except PATH_ERRORS as e:
                        v.error = "failed: " + one_line(e)
                    else:
                        assert_same(got, expected, f"HF DeepseekV3MoE [{impl}] (k={k})")
                variants.append(v)
    for path in our_paths():
        variants.append(Variant(f"ours dynamic k={k_dyn:.2f} [{path}]", "ours", dyn, k_dyn, "dynamic", path,
                                note="auto" if path == auto else ""))
    for k in (TOPK_KS[0], TARGET_K, TOPK_KS[-1]):
        mlp = dense_twin(dim, width, 1, k, seed)
        variants.append(Variant(f"dense SwiGLU, active of k={k:g} (inter {mlp.w1.out_features})", "dense",
                                mlp, k, "dense", "dense"))
    return variants, info


def _ratio(ours: float | None, other: float | None) -> float | None:
    return ours / other if ours and other else None


def headline(variants: list[Variant], T: int, k_dyn: float) -> list[dict]:
    """Our best path per mode against HF eager, HF's best implementation and the dense twin, at
    the same k (for dynamic: HF time interpolated linearly in k between k=2 and k=3)."""
    def tps(fam, mode, k, which, path=None):
        """(best tok/s, its path) among the variants that match."""
        vs = [v for v in variants if (v.family, v.mode, v.k) == (fam, mode, k) and path in (None, v.path)]
        return max(((v.tok_s(which, T), v.path) for v in vs if v.tok_s(which, T)), default=(None, None))

    def hf_at(k, which, impl):
        if k in TOPK_KS:
            return tps("hf", "topk", k, which, impl)[0]
        lo, hi = (tps("hf", "topk", kk, which, impl)[0] for kk in (TOPK_KS[0], TOPK_KS[-1]))
        if not (lo and hi):
            return None
        frac = (k - TOPK_KS[0]) / (TOPK_KS[-1] - TOPK_KS[0])
        return 1.0 / ((1 - frac) / lo + frac / hi)

    rows = []
    for mode, k, dense_k in [("topk", kk, kk) for kk in TOPK_KS] + [("dynamic", k_dyn, TARGET_K)]:
        row = {"ours": f"{mode} k={k:.2f}" if mode == "dynamic" else f"topk k={k}"}
        for which in ("fwd_s", "fwdbwd_s"):
            ours_tps, path = tps("ours", mode, k, which)
            hf_all = {impl: hf_at(k, which, impl) for impl in HF_IMPLS}
            hf_best = max(((t, i) for i, t in hf_all.items() if t), default=(None, None))
            dense = tps("dense", "dense", dense_k, which)[0]
            row[which] = {"ours_path": path, "ours_tok_s": ours_tps, "vs_hf_eager": _ratio(ours_tps, hf_all["eager"]),
                          "vs_hf_best": _ratio(ours_tps, hf_best[0]), "hf_best_impl": hf_best[1],
                          "vs_dense": _ratio(ours_tps, dense)}
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output

def _n(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_tables(title: str, variants: list[Variant], heads: list[dict], shares: list[dict], T: int) -> None:
    print(f"\n### {title}\n")
    print("| variant | fwd tok/s | fwd+bwd tok/s | note |\n|---|---:|---:|---|")
    for v in variants:
        print(f"| {v.name} | {_n(v.tok_s('fwd_s', T))} | {_n(v.tok_s('fwdbwd_s', T))} | "
              f"{v.error or ('auto pick' if v.note == 'auto' else v.note)} |")
    print("\nOur best path (tok/s ratio, >1 = ours faster; dynamic vs HF interpolated to the same k):\n")
    print("| ours | fwd vs HF eager | fwd vs HF best | fwd vs dense | fwd+bwd vs HF eager | fwd+bwd vs HF best "
          "| fwd+bwd vs dense |\n|---|---:|---:|---:|---:|---:|---:|")
    for h in heads:
        cells = []
        for which in ("fwd_s", "fwdbwd_s"):
            r = h[which]
            cells += [_x(r["vs_hf_eager"]), f"{_x(r['vs_hf_best'])} ({r['hf_best_impl'] or '-'})", _x(r["vs_dense"])]
        paths = f"{h['fwd_s']['ours_path'] or '-'}/{h['fwdbwd_s']['ours_path'] or '-'}"
        print(f"| {h['ours']} [{paths}] | " + " | ".join(cells) + " |")
    if shares:
        print("\nShare of forward+backward self CPU time (torch.profiler):\n")
        print("| ours | path | ms/iter | " + " | ".join(BUCKETS) + " |\n|---|---|---:|" + "---:|" * len(BUCKETS))
        for s in shares:
            print(f"| {s['variant']} | {s['path']} | {s['ms_per_iter']:.1f} | "
                  + " | ".join(f"{100 * s[b]:.0f}%" for b in BUCKETS) + " |")


def run_config(args, dim: int, n_experts: int) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, args.tokens, dim, generator=gen)              # (B, T, D)
    g = torch.randn(1, args.tokens, dim, generator=gen)              # fixed cotangent for backward
    variants, info = build_variants(dim, n_experts, args.width, x, args.seed)
    time_variants(variants, x, g, args.repeats, args.warmup)
    heads = headline(variants, args.tokens, info["dynamic_k"])
    shares = []
    if args.profile:
        for v in variants:
            if v.family == "ours" and (v.mode == "dynamic" or v.k == TOPK_KS[0]) and not v.error:
                mode = f"{v.mode} k={v.k:.2f}" if v.mode == "dynamic" else f"topk k={v.k}"
                shares.append({"variant": mode, "path": v.path, **profile_shares(v.module, v.path, x, g)})
    title = f"dim {dim}, {n_experts} routed experts, width {args.width}, 1 shared, {args.tokens} tokens, fp32 CPU"
    print_tables(title, variants, heads, shares, args.tokens)
    return {"dim": dim, "n_experts": n_experts, "width": args.width, "tokens": args.tokens, **info,
            "variants": [{"name": v.name, "family": v.family, "mode": v.mode, "k": v.k, "path": v.path,
                          "auto": v.note == "auto", "error": v.error,
                          "fwd_tok_s": v.tok_s("fwd_s", args.tokens), "fwdbwd_tok_s": v.tok_s("fwdbwd_s", args.tokens),
                          "fwd_s": v.fwd_s, "fwdbwd_s": v.fwdbwd_s} for v in variants],
            "headline": heads, "profile": shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 512], help="model widths D")
    ap.add_argument("--experts", type=int, nargs="+", default=[16, 64], help="routed experts E")
    ap.add_argument("--width", type=int, default=128, help="expert hidden width H")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per forward call")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds (the median is reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also break our fwd+bwd time into op buckets")
    ap.add_argument("--result", help="write bench/results/RESULT.json (default: moe_layer, plus the layer "
                                     "arguments that differ from the defaults)")
    args = ap.parse_args()
    layer = ("dims", "experts", "width", "tokens", "seed")  # what is measured; --repeats, --warmup, --profile: how
    stem = result_name("moe_layer", args, {k: ap.get_default(k) for k in layer})
    try:
        hf_moe_class()
    except ImportError as e:
        sys.exit(str(e))
    import transformers

    configs = [run_config(args, dim, e) for dim in args.dims for e in args.experts]
    meta = {"torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(), "python": platform.python_version(),
            "dtype": "float32", "device": "cpu", "argv": sys.argv[1:], "repeats": args.repeats, "warmup": args.warmup}
    out = write_result(stem, {**provenance(torch.get_num_threads()), "meta": meta, "configs": configs})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
