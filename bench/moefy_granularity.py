"""How finely to cut SmolLM2's FFNs: the FFN output error an oracle router leaves, per layer.

Before converting a whole model (minutes) and evaluating it (more minutes), this measures what
the conversion can reach at best: for a few layers of SmolLM2-135M-Instruct, on calibration
activations, the relative error ``||y_moe - y_dense|| / ||y_dense||`` of an FFN cut into E
experts (plus an optional always-on shared expert) when each token takes the experts with the
largest outputs (an oracle router), at a given share of the FFN's weights. The neuron-level
oracle (each token keeps its own largest neurons) and TEAL-style thresholding (one magnitude
threshold on the intermediate activations for all tokens) are the references.

    python bench/moefy_granularity.py [--layers 3 10 17 24] [--shares 0.35 0.5]

Writes bench/results/moefy_granularity.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, result_name, write_result  # noqa: E402

EXPERTS = (16, 32, 64)
SHARED = (0, 256, 512)


def rel_error(y_ND, ref_ND) -> float:
    return float((y_ND - ref_ND).norm() / ref_ND.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 10, 17, 24])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.35, 0.5])
    ap.add_argument("--result")
    args = ap.parse_args()
    stem = result_name("moefy_granularity", args, {"layers": [3, 10, 17, 24], "shares": [0.35, 0.5]})

    import torch
    import torch.nn.functional as F

    from lightseek.data.tokenizer import Tokenizer
    from lightseek.model.checkpoint import load_model, resolve_checkpoint
    from lightseek.moefy.convert import layerwise
    from lightseek.moefy.split import neuron_contributions, shared_neurons, split_neurons

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from moefy import calibration_mix

    torch.manual_seed(0)
    ckpt = resolve_checkpoint("smollm2-135m-instruct")
    model = load_model(ckpt).eval()
    windows = calibration_mix(Tokenizer.load(ckpt), model.cfg.max_seq_len)
    rows = []
    with torch.inference_mode():
        for i, block, u_ND in layerwise(model, windows):
            if i not in args.layers:
                continue
            ffn = block.ffn
            perm = torch.randperm(u_ND.shape[0], generator=torch.Generator().manual_seed(0))
            fit, test = u_ND[perm[:8192]], u_ND[perm[-4096:]]
            h_NI = F.silu(ffn.w1(test)) * ffn.w3(test)
            w2_ID = ffn.w2.weight.T
            y_ref = h_NI @ w2_ID
            n_neurons = h_NI.shape[1]
            contrib_NI = h_NI.abs() * ffn.w2.weight.norm(dim=0)
            for share in args.shares:
                keep = int(round(share * n_neurons))
                top = contrib_NI.topk(keep, dim=1).indices
                mask = torch.zeros_like(h_NI, dtype=torch.bool).scatter_(1, top, True)
                rows.append({"layer": i, "share": share, "method": "neuron oracle",
                             "rel_error": rel_error((h_NI * mask) @ w2_ID, y_ref)})
                t = h_NI.abs().flatten().kthvalue(int((1 - share) * h_NI.numel())).values
                rows.append({"layer": i, "share": share, "method": "teal (h threshold)",
                             "rel_error": rel_error((h_NI * (h_NI.abs() > t)) @ w2_ID, y_ref)})
            fit_contrib = neuron_contributions(ffn, fit)
            for shared_dim in SHARED:
                shared = shared_neurons(fit_contrib, shared_dim)
                is_shared = torch.zeros(n_neurons, dtype=torch.bool)
                is_shared[shared] = True
                routed = torch.nonzero(~is_shared).squeeze(1)
                for E in EXPERTS:
                    if (n_neurons - shared_dim) % E:
                        continue
                    for split in ("coactivation", "random"):
                        groups_EH = split_neurons(split, E, routed, ffn=ffn, contrib_NI=fit_contrib, iters=20,
                                                  generator=torch.Generator().manual_seed(0))
                        y_shared = h_NI[:, shared] @ w2_ID[shared]
                        y_NEd = torch.einsum("neh,ehd->ned", h_NI[:, groups_EH], w2_ID[groups_EH])
                        norms_NE = y_NEd.norm(dim=-1)
                        order_NE = norms_NE.argsort(dim=1, descending=True)
                        width = groups_EH.shape[1]
                        for share in args.shares:
                            k = (share * n_neurons - shared_dim) / width
                            if k < 1:
                                continue
                            k = int(round(k))
                            chosen = torch.zeros_like(norms_NE, dtype=torch.bool).scatter_(1, order_NE[:, :k], True)
                            y = y_shared + (y_NEd * chosen[..., None]).sum(1)
                            rows.append({"layer": i, "share": share, "method": f"{split} E{E} shared{shared_dim}",
                                         "experts": E, "shared_dim": shared_dim, "k": k, "split": split,
                                         "real_share": (shared_dim + k * width) / n_neurons,
                                         "rel_error": rel_error(y, y_ref)})
                        print(f"layer {i} E{E} shared {shared_dim} {split}: " + ", ".join(
                            f"{r['share']:.2f} -> {r['rel_error']:.3f}" for r in rows[-len(args.shares):]), flush=True)
    summary = {}
    for r in rows:
        summary.setdefault((r["method"], r["share"]), []).append(r["rel_error"])
    table = sorted(({"method": m, "share": s, "mean_rel_error": sum(v) / len(v)} for (m, s), v in summary.items()),
                   key=lambda x: (x["share"], x["mean_rel_error"]))
    for x in table:
        print(f"{x['share']:.2f}  {x['mean_rel_error']:.3f}  {x['method']}")
    out = write_result(stem, {**provenance(torch.get_num_threads()), "model": "smollm2-135m-instruct",
                              "layers": args.layers, "rows": rows, "summary": table})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
