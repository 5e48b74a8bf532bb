"""One sequence, one token at a time: the decode step `generate_ids` runs after the prompt.

`Transformer.forward` serves every case: chunks of any length, per-row positions and masks for
continuous batching, adapters chosen per row, gradient checkpointing. Decoding a single sequence
needs none of that, and at batch one on a CPU a step's time is mostly the cost of issuing
operations, not arithmetic (a quantized SmolLM2-135M reads 130 MB of weights per token). The
step here computes the same thing with fewer operations:

- the query, key and value projections as one product (and, for quantized layers, whose kernels
  cost more per call, the gate and up projections of the FFN as one);
- the rotary embedding of queries and keys as one small product with the position's rotation
  matrix, made once a step (`rope_matrix`);
- the new key and value written straight into the cache, and attention over a view of it;
- no masks, position tensors, routing-state lookups or adapter checks;
- for one row, norms whose mean square is read on the host, and W8A8 products that hand the
  row's range to the integer kernel (`w8a8_row`) with the inputs' smoothing folded into the norm
  before them. At one row a step's operations, not its arithmetic, set its time: each of these
  saved 0.3-1.4 ms of SmolLM2's 20-23 ms W8A8 step.

The prompt goes through the same products as one chunk (`prefill`).

MoE layers run through their own module (dropless dispatch, routing statistics as usual), but
for one row on the CPU through `OneRowMoE`: routing decided on the host, and the chosen
experts' weights read in place through embedding bags (fp32) or gathered into a few packed
products (quantized). A
model the step does not cover (latent attention, adapters chosen per row) decodes through
`Transformer.forward`; `DecodeStep.unsupported` says why. An adapter chosen for the sequence
applies as in the forward: wrapped projections are not fused, each runs through its own module.
The fused weights are built once and kept on the model until its weights or layers change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.kernels.dispatch import bag_experts
from lightseek.kernels.linear import Linear, sliced_linear
from lightseek.model.kv_cache import KVCache, SlotCache
from lightseek.model.moe import MoE, SwiGLU
from lightseek.model.transformer import Attention, apply_rope

Product = Callable[[torch.Tensor], torch.Tensor]


class Layer(NamedTuple):
    """One block as the step runs it: its products and the weights of its norms (with the
    smoothing of 8-bit-input layers folded in, see `DecodeStep._product`)."""
    block: nn.Module
    attn_norm: torch.Tensor | None
    qkv: Product
    wo: Product
    ffn_norm: torch.Tensor | None
    w13: Product | None  # None: the FFN runs as ``moe`` or through its module (fp32 SwiGLU, MoE)
    w2: Product | None
    moe: OneRowMoE | None = None  # a MoE layer's one-row path


def fused(mods: Sequence[nn.Module]) -> tuple[Product, list[torch.Tensor]] | None:
    """One product computing ``torch.cat([m(x) for m in mods], -1)``, and the tensors it was
    built from (to notice when they change); None when the layers cannot be fused (adapters).

    Plain linear layers concatenate their weights; other layers fuse when their class offers
    ``fuse(mods)`` and it accepts them (quantized layers of one format: codes and scales
    concatenate along the output rows)."""
    kind = type(mods[0])
    if all(type(m) in (nn.Linear, Linear) for m in mods):
        weight = torch.cat([m.weight.detach() for m in mods])
        bias = None
        if any(m.bias is not None for m in mods):
            bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                              for m in mods])
        # the class's SLICES read at each call, as the layers' own products do
        return ((lambda x: sliced_linear(x, weight, bias, kind.SLICES if issubclass(kind, Linear) else 1)),
                [t for m in mods for t in (m.weight, m.bias) if t is not None])
    fuse = getattr(kind, "fuse", None)
    product = fuse(mods) if fuse is not None and all(type(m) is kind for m in mods) else None
    if product is None:
        return None
    return product, [t for m in mods for t in m.buffers()]


def separate(mods: Sequence[nn.Module]) -> Product:
    return lambda x: torch.cat([m(x) for m in mods], -1)


class DecodeStep:
    """The decode step of one model for one sequence (see the module's docstring)."""

    @staticmethod
    def unsupported(model) -> str | None:
        """Why the step cannot decode ``model`` (None when it can)."""
        selection = getattr(model, "lora_selection", None)
        if selection is not None and selection.mixed:
            return "adapters are chosen per row"
        for block in model.layers:
            if type(block.attn) is not Attention:
                return f"{type(block.attn).__name__} layers"
            if not isinstance(block.ffn, (SwiGLU, MoE)):
                return f"{type(block.ffn).__name__} feed-forward layers"
        return None

    def __init__(self, model):
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"the one-sequence decode step does not cover this model: {reason}")
        self.model, self.cfg = model, model.cfg
        self.sources: list[torch.Tensor] = []
        # each block's products for rows of any number (``layers``) and for one row (``row_layers``, `run`)
        self.layers: list[Layer] = []
        self.row_layers: list[Layer] = []
        for block in model.layers:
            a, f = block.attn, block.ffn
            qkv, attn_norm = self._product([a.wq, a.wk, a.wv], block.attn_norm)
            wo = self._bare(a.wo)
            w13 = w2 = (None, None)
            ffn_norm = block.ffn_norm.weight
            if isinstance(f, SwiGLU) and type(f.w1) not in (nn.Linear, Linear):  # see `_product`
                w13, ffn_norm = self._product([f.w1, f.w3], block.ffn_norm)
                w2 = self._bare(f.w2)
            moe = OneRowMoE(f) if OneRowMoE.covers(f) else None
            if moe is not None and moe.row_experts is not None:  # its gathered products: rebuilt on change
                self.sources += [t for m in _ffn_projections(f) for t in m.buffers()]
            self.layers.append(Layer(block, attn_norm, qkv[0], wo[0], ffn_norm, w13[0], w2[0]))
            self.row_layers.append(Layer(block, attn_norm, qkv[1], wo[1], ffn_norm, w13[1], w2[1], moe))
        self.heads = self._bare(model.head)  # a quantized head's bare products (its exact top logits too)
        self.version = self._version()

    def _product(self, mods, norm: nn.RMSNorm) -> tuple[tuple[Product, Product], torch.Tensor]:
        """The product of ``mods`` fused (for rows of any number, and for one row), and the weight
        of ``norm``, which normalises their input. Layers with 8-bit inputs smooth it by their
        ``act_scale``: that folds into the norm's weight here, an operation fewer per product."""
        # fp32 products at this size are bound by memory traffic: fusing the FFN's gate and up
        # weights saves nothing measurable there and would copy 200 MB for SmolLM2, so only the
        # attention projections (and every quantized layer, whose kernels are bound by calls) fuse
        built = fused(mods)
        if built is None:
            product = separate(mods)
            return (product, product), norm.weight
        product, sources = built
        self.sources += sources
        smooth = getattr(product, "act_scale", None)
        if smooth is not None and (rows := _bound(product, smoothed=True)) is not None:
            if norm.weight is not None:
                self.sources.append(norm.weight)
            return ((rows, _bound(product, one_row=True, smoothed=True)),
                    smooth if norm.weight is None else norm.weight.detach() * smooth)
        rows = _bound(product) or product
        return (rows, _bound(product, one_row=True) or product), norm.weight

    def _bare(self, mod: nn.Module) -> tuple[Product, Product]:
        """``mod`` itself, or its bare packed products for rows of any number and for one row
        (`_bound`; its buffers then join the version the step checks)."""
        bound = _bound(mod)
        if bound is None:
            return mod, mod
        self.sources += list(mod.buffers())
        return bound, _bound(mod, one_row=True)

    def _version(self) -> tuple:
        """What the fused weights were built from: the projection and FFN modules (an adapter wraps
        projections in new ones, quantizing replaces them) and their tensors' storage and versions
        (training and loading change them)."""
        mods = tuple((id(m), getattr(m, "kernel", None)) for block in self.model.layers
                     for m in (block.attn.wq, block.attn.wk, block.attn.wv, block.attn.wo, block.ffn,
                               *_ffn_projections(block.ffn)))
        head = self.model.head
        mods += ((id(head), getattr(head, "kernel", None), getattr(head, "exact_top", None)),)
        return mods, tuple((t.data_ptr(), t._version) for t in self.sources)

    @classmethod
    def of(cls, model) -> DecodeStep | None:
        """The model's step, built on first use and rebuilt when its weights have changed; None
        when the step does not cover the model."""
        if cls.unsupported(model):
            return None
        step = model.__dict__.get("_decode_step")
        if step is None or step.version != step._version() or step.model is not model:
            # built as ordinary tensors even when called under inference mode: those do not
            # count their versions, which is how the step and the packed kernels see a change
            with torch.inference_mode(False), torch.no_grad():
                step = cls(model)
            model.__dict__["_decode_step"] = step  # not a submodule: not saved, not moved
        return step

    def __call__(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """fp32 logits (1, V) after ``token`` (a (1,) tensor) at position ``cache.length``; its
        keys and values go into ``cache`` (one row), which advances by one."""
        logits = self.run(token, cache.k, cache.v, cache.length)
        cache.advance(1)
        return logits

    def run(self, token: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], pos: int,
            row: int = 0) -> torch.Tensor:
        """The step on row ``row`` of any cache laid out (rows, kv heads, tokens, head dim) per
        layer: ``KVCache`` (one row) or the serving engine's ``SlotCache`` (a slot per row). The
        row's ``pos`` cached tokens are read and its new key and value written at ``pos``."""
        cfg = self.cfg
        if pos + 1 > cfg.max_seq_len:
            raise ValueError(f"sequence of {pos + 1} tokens exceeds max_seq_len {cfg.max_seq_len}")
        if pos + 1 > keys[0].shape[2]:
            raise ValueError(f"KV cache holds {keys[0].shape[2]} tokens; {pos + 1} requested")
        first = max(0, pos + 1 - cfg.sliding_window) if cfg.sliding_window else 0

        def attend(i: int, scale, q, k, v):                                    # q (1, Hq, d), k, v (1, Hk, d)
            layer_k, layer_v = keys[i], values[i]
            layer_k[row, :, pos] = k[0]
            layer_v[row, :, pos] = v[0]
            return _grouped_attention(q, layer_k[row:row + 1, :, first:pos + 1],
                                      layer_v[row:row + 1, :, first:pos + 1], None, scale)

        return self._layers(token, self.model.rope_cos[pos], self.model.rope_sin[pos], attend, one_row=True)

    def run_rows(self, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """The step on several sequences at once, each at its own position: the serving engine's
        decode batch. ``cache.bind(slots, 1)`` names the rows' slots first (as for the forward);
        ``tokens`` (B,) are the rows' last tokens; the cache advances by one. fp32 logits (B, V)."""
        return self.run_batch(tokens, cache)[0]

    def run_batch(self, tokens: torch.Tensor, cache: SlotCache, chunk: torch.Tensor | None = None,
                  slot: int = 0, chunk_logits: str = "last") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One pass for the engine's whole step: B decode rows (``tokens`` (B,), their slots bound
        by ``cache.bind(slots, 1)``; B may be 0, then nothing is bound) and a prompt ``chunk``
        (C,) of the sequence in slot ``slot``, which goes on from that slot's length. Every token
        goes through the products together, so the chunk costs a few more rows of the batch's
        products instead of a pass over all the weights of its own; attention is the rows' (each
        over its slot) and the chunk's (causal, over its slot). Returns (decode logits (B, V) or
        None, the chunk's logits: (1, V) for its last token with ``chunk_logits`` "last", (C, V)
        with "all"). The bound slots advance by one and the chunk's slot by C."""
        cfg, model = self.cfg, self.model
        B = len(tokens)
        C = 0 if chunk is None else len(chunk)
        if not B and not C:
            raise ValueError("run_batch: no decode rows and no prompt chunk")
        if chunk_logits not in ("last", "all"):
            raise ValueError(f"run_batch: chunk_logits must be 'last' or 'all', got {chunk_logits!r}")
        if B:
            bound = cache.bound_slots()
            if bound is None or bound[1] != 1 or len(bound[0]) != B:
                raise ValueError(f"run_batch: bind the {B} decode rows' slots for one token first "
                                 f"(cache.bind(slots, 1)); bound: {bound}")
            if C and slot in bound[0]:
                raise ValueError(f"run_batch: slot {slot} is both a decode row and the chunk's sequence")
        start = cache.lengths[slot] if C else 0
        if C:
            self._check_chunk(C, start, cache.max_len)
        pos = cache.positions[:, 0] if B else torch.empty(0, dtype=torch.long, device=tokens.device)
        if B and int(pos.max()) >= cfg.max_seq_len:
            raise ValueError(f"position {int(pos.max())} exceeds max_seq_len {cfg.max_seq_len}")
        if C:
            pos = torch.cat([pos, torch.arange(start, start + C, device=pos.device)])
        gqa = cfg.n_heads != cfg.n_kv_heads
        # the forward's masks (every layer has the same window): the rows' over their slots, (B, 1, 1, S);
        # the chunk's causal over its slot, after its ``start`` cached tokens
        attn = model.layers[0].attn
        mask = attn._mask(1, cache.attn_mask.shape[-1], cache, pos.device)[0] if B else None
        chunk_mask, causal = attn._mask(C, start + C, None, pos.device) if C else (None, False)

        def attend(i: int, scale, q, k, v):                                    # q (B + C, Hq, d), k, v (B + C, Hk, d)
            out = []
            if B:
                layer_k, layer_v = cache.update(i, k[:B, :, None], v[:B, :, None])  # (B, Hk, S, d)
                out.append(_grouped_attention(q[:B], layer_k, layer_v, mask, scale))
            if C:
                out.append(_chunk_attention(cache.k[i], cache.v[i], slot, start, q[B:], k[B:], v[B:],
                                            chunk_mask, causal, scale, gqa))
            return out[0] if len(out) == 1 else torch.cat(out)

        # every row's logits, and the chunk's last token's or all of its tokens'
        keep = torch.tensor([*range(B), B + C - 1], device=pos.device) if C and chunk_logits == "last" else None
        all_tokens = tokens if not C else torch.cat([tokens, chunk.to(tokens.device)])
        logits = self._layers(all_tokens, model.rope_cos[pos][:, None], model.rope_sin[pos][:, None], attend, keep)
        if B:
            cache.advance(1)
        if C:
            cache.lengths[slot] = start + C
        return (logits[:B] if B else None), (logits[B:] if C else None)

    def _check_chunk(self, C: int, start: int, cache_len: int) -> None:
        """A prompt chunk of C tokens after ``start`` cached ones must fit the model's context and
        the cache."""
        context = min(self.cfg.max_seq_len, cache_len)
        if start + C > context:
            raise ValueError(f"a chunk of {C} tokens after {start} exceeds the context ({context} tokens)")

    def prefill(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """A one-sequence cache's (`KVCache`, one row) next ``tokens`` (C,), the prompt, as one chunk
        through the step's products (as `run_batch` takes a chunk): the fused projections and
        bare packed products save a quantized SmolLM2 about a sixth of its prompt's time against
        the forward. fp32 logits (1, V) of the last token; the cache advances by C."""
        cfg, model = self.cfg, self.model
        C, start = len(tokens), cache.length
        if not C:
            raise ValueError("prefill: no tokens")
        self._check_chunk(C, start, cache.max_len)
        pos = torch.arange(start, start + C, device=tokens.device)
        mask, causal = model.layers[0].attn._mask(C, start + C, None, pos.device)
        gqa = cfg.n_heads != cfg.n_kv_heads

        def attend(i: int, scale, q, k, v):
            return _chunk_attention(cache.k[i], cache.v[i], 0, start, q, k, v, mask, causal, scale, gqa)

        logits = self._layers(tokens, model.rope_cos[pos][:, None], model.rope_sin[pos][:, None], attend,
                              keep=pos[-1:] - start)
        cache.advance(C)
        return logits

    def _layers(self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend,
                keep: torch.Tensor | None = None, one_row: bool = False) -> torch.Tensor:
        """Logits after ``tokens`` (N,): the embedding, every block and the head, with
        ``attend(layer, scale, q, k, v)`` storing each token's new key and value and returning its
        attention output (N, Hq, 1, d). ``cos``/``sin``: the tokens' rotary angles. ``keep``: the
        tokens whose logits are wanted (default all: (N, V)). ``one_row``: ``tokens`` is one token
        (the products of ``row_layers``)."""
        model, cfg = self.model, self.cfg
        Hq, Hk, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        rs = cfg.residual_scale
        x = model.embed(tokens)                                                   # (N, D)
        N = x.shape[0]
        angles = cos.numel() // (d // 2)  # 1 (every token at one position) or N
        # the rotation as a product where queries and keys rotate together (no query/key norm)
        rot = (rope_matrix(cos.reshape(-1, d // 2), sin.reshape(-1, d // 2))
               if cfg.qk_norm == "none" and angles <= ROPE_MATRICES else None)
        if cfg.embed_scale != 1.0:
            x = x * cfg.embed_scale
        norm = _one_row_rms_norm if one_row and x.device.type == "cpu" else _rms_norm  # a host read stalls a GPU
        for i, (block, attn_norm, qkv, wo, ffn_norm, w13, w2, moe) in enumerate(self.row_layers if one_row
                                                                                else self.layers):
            a = block.attn
            t = qkv(norm(x, attn_norm, block.attn_norm.eps))
            if a.qk_norm == "none":  # queries and keys roped together: one rotation, not two
                qk = t[:, :(Hq + Hk) * d].view(N, Hq + Hk, d)
                qk = apply_rope(qk, cos, sin) if rot is None else _rotate(qk, rot)
                q, k, v = qk[:, :Hq], qk[:, Hq:], t[:, (Hq + Hk) * d:]
            else:
                q, k, v = t.split([Hq * d, Hk * d, Hk * d], -1)
                if a.qk_norm == "full":
                    q, k = a.q_norm(q), a.k_norm(k)
                q, k = q.view(N, Hq, d), k.view(N, Hk, d)
                if a.qk_norm == "head":
                    q, k = a.q_norm(q), a.k_norm(k)
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            y = attend(i, a.scale, q, k, v.reshape(N, Hk, d))
            out = wo(y.reshape(N, Hq * d))
            x = x + out * rs if rs != 1.0 else x + out
            h = norm(x, ffn_norm, block.ffn_norm.eps)
            if w13 is not None:
                u = w13(h)
                H = u.shape[-1] // 2
                out = w2(F.silu(u[:, :H]) * u[:, H:])
            elif moe is not None:
                out = moe(h)
            else:
                out = block.ffn(h[None])[0] if isinstance(block.ffn, MoE) else block.ffn(h)
            x = x + out * rs if rs != 1.0 else x + out
        if keep is not None:
            x = x.index_select(0, keep)
        logits = self.heads[one_row](norm(x, model.norm.weight, model.norm.eps)).float()
        return logits * cfg.logits_scale if cfg.logits_scale != 1.0 else logits


ROPE_MATRICES = 256  # up to this many tokens a step (16 KB each for SmolLM2), the rotation is a product


def _grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                       scale) -> torch.Tensor:
    """Attention of one new token per row: q (B, Hq, d) over the rows' keys and values (B, Hk, S, d),
    ``mask`` (B, 1, 1, S) or None. The query heads that share a key head go in as that head's
    queries (B, Hk, Hq / Hk, d), so grouped-query attention needs no copy of the keys and
    values per query head (SDPA's ``enable_gqa`` with a mask makes one: 16 rows of SmolLM2,
    280 -> 216 us a layer). Returns (B, Hq, 1, d)."""
    B, Hq, d = q.shape
    Hk = k.shape[1]
    y = F.scaled_dot_product_attention(q.view(B, Hk, Hq // Hk, d), k, v, attn_mask=mask, scale=scale)
    return y.reshape(B, Hq, 1, d)


def _chunk_attention(layer_k: torch.Tensor, layer_v: torch.Tensor, row: int, start: int, q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale,
                     gqa: bool) -> torch.Tensor:
    """A prompt chunk's attention: its C tokens' keys and values (C, Hk, d) written into row ``row``
    of one layer's cache after ``start`` cached tokens, and its queries (C, Hq, d) attending over
    the row's first start + C (``mask`` / ``causal``: `Attention._mask`). Returns (C, Hq, 1, d)."""
    C = len(q)
    layer_k[row, :, start:start + C] = k.transpose(0, 1)
    layer_v[row, :, start:start + C] = v.transpose(0, 1)
    y = F.scaled_dot_product_attention(q[None].transpose(1, 2), layer_k[row:row + 1, :, :start + C],
                                       layer_v[row:row + 1, :, :start + C], attn_mask=mask,
                                       is_causal=causal, scale=scale, enable_gqa=gqa)
    return y[0].transpose(0, 1)[:, :, None]


def rope_matrix(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding at each of M positions as a matrix: ``x @ R[m]`` equals
    ``apply_rope(x, cos[m], sin[m])`` for x (..., d) (rotate-half layout). cos, sin: (M, d/2);
    returns (M, d, d). One product per layer instead of the rotation's eight operations."""
    c, s = torch.diag_embed(cos), torch.diag_embed(sin)
    return torch.cat([torch.cat([c, s], -1), torch.cat([-s, c], -1)], -2)


def _rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` of x (N, H, d) as a product with `rope_matrix`'s (1 or N, d, d), computed in
    the rotation's dtype (fp32, as `apply_rope` computes) and returned in x's."""
    dtype = x.dtype
    if dtype != rot.dtype:
        x = x.to(rot.dtype)
    y = x.reshape(-1, x.shape[-1]).mm(rot[0]).view(x.shape) if len(rot) == 1 else torch.bmm(x, rot)
    return y if dtype == rot.dtype else y.to(dtype)


def _bound(mod, **how) -> Product | None:
    """A quantized layer's packed product without the module around it (its class's ``bound``:
    `_QuantWeights.bound`, given ``how``), None for any other layer or where the packed kernel
    is not used."""
    bound = getattr(mod, "bound", None)
    return bound(**how) if bound is not None else None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None) -> torch.Tensor:
    """An RMSNorm of the last dimension without the module call around it (61 a token)."""
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def _one_row_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None) -> torch.Tensor:
    """`_rms_norm` of one row, its mean square read on the host: three operations where
    ``F.rms_norm`` runs eight on CPU (1.7 against 2.6 ms a token for SmolLM2's 61 norms, measured
    in the W8A8 step). Equal up to float rounding."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    scale = (torch.linalg.vector_norm(x, dtype=torch.float32).item() ** 2 / x.shape[-1] + eps) ** -0.5
    return (x * scale) if weight is None else torch.mul(x, weight).mul_(scale)


class OneRowMoE:
    """A MoE layer's output for the one row of `DecodeStep.run` on the CPU: the router decides on
    the host (`Router.route_one`) and the chosen experts run without the module's dispatch.
    fp32 experts' weights are read in place, as embedding bags (`kernels.dispatch.bag_experts`):
    some fifteen operations a layer where the module with its general dispatch runs about forty.
    With it SmolLM2's MoE form (16 experts of 96 neurons, k = 5) decodes 1.17x as fast as the
    dense model it was cut from at batch 1 in fp32, where through the module it was the slower
    of the two (bench/moefy_speed.py). Quantized experts (a layer with ``row_experts``, the
    quantization layer's QuantMoE) run as the few gathered packed products it gives
    (`quant.modules.RowExperts`), taken when the step is built (the step rebuilds when their
    codes or kernel change). The same output as the module up to float rounding
    (`Router.route_one`). Falls back to the module whenever the router does not decide on the
    host (training, autograd, an adapter on the gate, several routing states), an adapter is on
    the experts, or fp32 experts are no longer fp32 on the CPU."""

    def __init__(self, moe: MoE):
        self.moe = moe
        self.row_experts = moe.row_experts() if hasattr(moe, "row_experts") else None

    @staticmethod
    def covers(moe: nn.Module) -> bool:
        """Whether ``moe``'s experts are stacked fp32 weights on the CPU, or quantized experts
        with a one-row path."""
        if isinstance(moe, MoE) and hasattr(moe, "row_experts"):
            return moe.row_experts() is not None
        return (type(moe) is MoE and moe.w1_EDH.device.type == "cpu"
                and all(w.dtype == torch.float32 for w in (moe.w1_EDH, moe.w3_EDH, moe.w2_EHD)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:                    # x (1, D)
        moe, row_experts = self.moe, self.row_experts
        if (moe.lora is not None or not moe.router.host_routes(x, 1)
                or row_experts is None and not self.covers(moe)):  # fp32 experts: as they are now
            return moe(x[None])[0]
        ids, weights = moe.router.route_one(x)
        if row_experts is not None:
            y = row_experts(x.to(row_experts.dtype), ids, weights).to(x.dtype)
        else:
            # the module's weights read at each call: a replaced parameter is seen
            y = bag_experts(x.expand(len(weights), x.shape[1]), ids, moe.w1_EDH, moe.w3_EDH, moe.w2_EHD)
            if all(w == 1.0 for w in weights):  # experts cut from one FFN: their plain sum
                y = y.sum(0, keepdim=True)
            else:
                y = torch.tensor(weights, dtype=y.dtype)[None] @ y
        return y if moe.shared is None else y + moe.shared_output(x)


def _ffn_projections(ffn: nn.Module) -> tuple[nn.Module, ...]:
    """An FFN's weight modules whose changes the step notices: a SwiGLU's projections, or a
    quantized MoE's expert stacks (``qexperts``, their codes and kernel choice)."""
    if isinstance(ffn, SwiGLU):
        return (ffn.w1, ffn.w3, ffn.w2)
    return tuple(getattr(ffn, "qexperts", {}).values())
