"""Quantized layers: QuantLinear, QuantEmbedding and QuantMoE (routed experts, per-expert scales).

Each holds its codes, scales and offsets as buffers (what the checkpoint stores) and computes
in one of two ways:

    packed    PyTorch's CPU kernels on packed weights: ``torch._weight_int8pack_mm`` for int8
              per channel, ``torch._weight_int4pack_mm_for_cpu`` (weights converted once by
              ``torch._convert_weight_to_int4pack_for_cpu``) for int4 groups. Activations go
              in as bf16: the kernels' fp32 path is a slow fallback (10-50x slower measured),
              their bf16 path the vectorised one. Accumulation is fp32.
    dequant   the reference: dequantize the weight (fp32), then an ordinary fp32 matmul

``auto`` takes the faster (measured in docs/results/quant.md). The packed kernels run at
inference only (they have no backward) and on CPU; a layer they cannot take (int4 with an
output dim not a multiple of 16) and any forward that needs gradients use the reference.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lightseek.errors import ConfigError
from lightseek.kernels import dispatch
from lightseek.model.moe import MoE
from lightseek.quant.schemes import SCALE_DTYPE, QTensor, dequantize, group_codes

KERNELS = ("auto", "packed", "dequant")
PACKED_DTYPE = torch.bfloat16  # activations and scales of the packed kernels (their fast path)


def auto_kernel(bits: int, device: torch.device) -> str:
    """The faster path for ``bits`` on ``device`` (bench/quant.py measures both; see
    docs/results/quant.md): the packed kernels on CPU, the reference elsewhere."""
    return "packed" if device.type == "cpu" else "dequant"


def empty_qtensor(bits: int, group: int, n_out: int, n_in: int, lead: tuple[int, ...] = (),
                  device: torch.device | str = "meta") -> QTensor:
    """A QTensor of the right shapes and dtypes with uninitialised storage (to load into)."""
    if bits == 8:
        return QTensor(8, 0, torch.empty(*lead, n_out, n_in, dtype=torch.int8, device=device),
                       torch.empty(*lead, n_out, dtype=SCALE_DTYPE, device=device), None, n_in)
    n_groups = -(-n_in // group)
    return QTensor(4, group, torch.empty(*lead, n_out, -(-n_in // 2), dtype=torch.uint8, device=device),
                   torch.empty(*lead, n_out, n_groups, dtype=SCALE_DTYPE, device=device),
                   torch.empty(*lead, n_out, n_groups, dtype=SCALE_DTYPE, device=device), n_in)


class _QuantWeights(nn.Module):
    """Buffers of one quantized weight (or a stack of them, one per expert) and its packed form."""

    def __init__(self, qt: QTensor, kernel: str = "auto"):
        super().__init__()
        if kernel not in KERNELS:
            raise ConfigError(f"quant.kernel: unknown kernel '{kernel}' (known: {', '.join(KERNELS)})")
        self.bits, self.group, self.in_features = qt.bits, qt.group, qt.in_features
        self.out_features = qt.qweight.shape[-2]
        self.register_buffer("qweight", qt.qweight)
        self.register_buffer("scales", qt.scales)
        self.register_buffer("zeros", qt.zeros)
        self.kernel = kernel
        self._packed: tuple | None = None  # (key, kernel-format tensors), built on first use

    def qtensor(self) -> QTensor:
        return QTensor(self.bits, self.group, self.qweight, self.scales, self.zeros, self.in_features)

    def matrix(self, index: int) -> QTensor:
        """Matrix ``index`` of a stack (the whole weight of a plain layer)."""
        if self.qweight.dim() == 2:
            return self.qtensor()
        z = None if self.zeros is None else self.zeros[index]
        return QTensor(self.bits, self.group, self.qweight[index], self.scales[index], z, self.in_features)

    def dequantized(self) -> torch.Tensor:
        """The full-precision weight, (..., N, K) fp32."""
        return dequantize(self.qtensor())

    def use_packed(self, x: torch.Tensor) -> bool:
        kernel = self.kernel if self.kernel != "auto" else auto_kernel(self.bits, x.device)
        if kernel != "packed" or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and x.requires_grad:
            return False  # the packed kernels have no backward
        return self.bits == 8 or self.out_features % 16 == 0

    def packed(self) -> list[tuple[torch.Tensor, ...]]:
        """Per matrix (one, or one per expert): the kernel's weight and scale tensors. Built once
        and rebuilt when the codes or scales change (in place, by loading, or by moving): the
        check is three integer reads, as it runs at every matmul of every decode step."""
        key = self._codes_key()
        if self._packed is None or self._packed[0] != key:
            n = self.qweight.shape[0] if self.qweight.dim() == 3 else 1
            mats = []
            for i in range(n):
                qt = self.matrix(i)
                if self.bits == 8:
                    mats.append((qt.qweight.contiguous(), qt.scales.to(PACKED_DTYPE).contiguous()))
                    continue
                w = _int4_packed(group_codes(qt))                                 # from (N, Kp) codes
                sz = torch.stack([qt.scales, qt.zeros], -1).to(PACKED_DTYPE).transpose(0, 1).contiguous()  # (Kp/G, N, 2)
                mats.append((w, sz))
            self._packed = (key, mats)
        return self._packed[1]

    def share_packed(self, mats: list[tuple[torch.Tensor, ...]]) -> None:
        """Use ``mats`` as the packed form: the same tensors as `packed` gives, held in another
        layout's storage (views), so that the two layouts keep one copy of the codes."""
        key = self._codes_key()
        if self._packed is None or self._packed[0] != key or len(mats) != len(self._packed[1]) or not all(
                torch.equal(a, b) for new, old in zip(mats, self._packed[1]) for a, b in zip(new, old)):
            raise ValueError("share_packed: the tensors are not this layer's packed form")
        self._packed = (key, mats)

    def _codes_key(self) -> tuple:
        """What a packed form was made from: the codes', scales' and offsets' storage and versions
        (changed in place, by loading or by moving)."""
        qw, sc = self.qweight, self.scales
        return (qw.data_ptr(), qw._version, sc.data_ptr(), sc._version,
                None if self.zeros is None else self.zeros._version)

    def matmul(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        """``x @ W_index^T`` for x (..., K): matrix ``index`` of the stack (0 for a plain layer)."""
        if not self.use_packed(x):
            return F.linear(x, dequantize(self.matrix(index)).to(x.dtype))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(PACKED_DTYPE).contiguous()        # (M, K)
        return self.kernel_mm(x2, *self.packed()[index]).reshape(*lead, -1).to(x.dtype)

    def bound(self, one_row: bool = False, smoothed: bool = False):
        """This (plain) layer's packed product as a bare function of a contiguous fp32 input (M, K) ->
        (M, N) fp32, with the packed tensors and the kernel's arguments taken now; None where
        `matmul` would not use the packed kernel. For a caller that issues it many times and
        notices weight and kernel changes itself (the decode step: about 10 us a call saved,
        121 calls a token for SmolLM2). ``one_row`` and ``smoothed`` concern layers with 8-bit
        inputs (`QuantLinear.bound`); a weights-only product takes any input as it is."""
        if self.qweight.dim() != 2 or not self.use_packed(torch.empty(0, device=self.qweight.device)):
            return None
        (w, s), = self.packed()
        return lambda x: self.kernel_mm(x.to(PACKED_DTYPE), w, s).float()

    def kernel_mm(self, x2: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The packed kernel alone: x2 (M, K), contiguous, in PACKED_DTYPE, times one matrix of
        ``packed()``; (M, N) in PACKED_DTYPE. No checks: for loops that made them once."""
        if self.bits == 8:
            return torch._weight_int8pack_mm(x2, w, s)
        kp = s.shape[0] * self.group
        if kp != x2.shape[1]:
            x2 = F.pad(x2, (0, kp - x2.shape[1]))
        return torch._weight_int4pack_mm_for_cpu(x2, w, self.group, s)  # not torch.ops.aten's: 2.5 us less a call


class QuantLinear(_QuantWeights):
    """A bias-free nn.Linear with quantized weights.

    As the output head (``exact_top`` > 0): the packed kernels return bf16, which rounds logits
    of 16-32 to steps of 1/8. The ``exact_top`` largest logits of each row, the ones that carry
    the probability, are computed again in fp32 from the same codes (a gather of that many
    rows). Measured on int8 SmolLM2 (GPTQ): mean KL 0.00242 -> 0.00210 with the top 64, 0.00205
    with the top 512; the dequantized fp32 reference has 0.00183.

    With ``act_scale`` (int8 weights only; quant.activations = 8) the layer is W8A8: its codes
    are those of ``W * s`` (s: the smoothing of each input channel) and its input is multiplied
    by ``act_scale`` = 1 / s, then rounded to integers one row (token) at a time, so that the
    product runs on integers (`w8a8_linear`)."""

    exact_top = 0

    def __init__(self, qt: QTensor, kernel: str = "auto", act_scale: torch.Tensor | None = None):
        super().__init__(qt, kernel)
        if act_scale is not None and (qt.bits != 8 or act_scale.shape != (qt.in_features,)):
            raise ConfigError(f"8-bit inputs need 8-bit weights and one scale per input channel "
                              f"(got {qt.bits} bits, scales {tuple(act_scale.shape)} for {qt.in_features} inputs)")
        self.register_buffer("act_scale", act_scale)
        self._w8a8: tuple | None = None  # (key, fbgemm's packed weight), built on first use

    @property
    def weight(self) -> torch.Tensor:  # the dequantized (N, K) weight, for code that inspects a layer
        w = self.dequantized()
        return w if self.act_scale is None else w * self.act_scale.to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scale is not None:
            y = self.w8a8(x)
            # the head: exact logits from the codes, which are those of W * s, for inputs x / s
            return self._exact_top_logits(x * self.act_scale.to(x.dtype), y) if self.exact_top else y
        y = self.matmul(x)
        if self.exact_top and self.use_packed(x):
            y = self._exact_top_logits(x, y)
        return y

    # --- 8-bit inputs (W8A8) ---------------------------------------------------------------------
    def uses_fbgemm(self, x: torch.Tensor) -> bool:
        return (self.act_scale is not None and self.kernel != "dequant" and x.device.type == "cpu"
                and _W8A8_KERNEL is not None and not (torch.is_grad_enabled() and x.requires_grad))

    def fbgemm_weight(self):
        """fbgemm's packed form of the codes (made once, again when codes or scales change)."""
        qw, sc = self.qweight, self.scales
        key = self._codes_key()
        if self._w8a8 is None or self._w8a8[0] != key:
            with warnings.catch_warnings():  # PyTorch marks quantized tensors deprecated (the kernels are not)
                warnings.simplefilter("ignore", UserWarning)
                q = torch._make_per_channel_quantized_tensor(qw.contiguous(), sc.double(),
                                                            torch.zeros(qw.shape[0], dtype=torch.long), 0)
                self._w8a8 = (key, torch.ops.quantized.linear_prepack(q, None))
        return self._w8a8[1]

    def w8a8(self, x: torch.Tensor) -> torch.Tensor:
        """The W8A8 product: fbgemm's integer kernel on CPU, elsewhere (and with gradients) the
        same rounding simulated in floating point (`w8a8_reference`)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).float()
        if self.uses_fbgemm(x):
            y = w8a8_linear(x2, self.act_scale, self.fbgemm_weight())
        else:
            y = w8a8_reference(x2, self.act_scale, dequantize(self.qtensor()))
        return y.reshape(*lead, -1).to(x.dtype)

    def bound(self, one_row: bool = False, smoothed: bool = False):
        """The decode step's bare product (see `_QuantWeights.bound`). For W8A8 layers:
        ``smoothed``, the input comes multiplied by ``act_scale`` already (the step folds it into
        the norm before the layer); ``one_row``, every input is one row (`w8a8_row`). As the
        output head (``exact_top``) the product recomputes the largest logits as `forward` does."""
        scale = None
        if self.act_scale is None:
            product = super().bound()
        elif not self.uses_fbgemm(torch.empty(0, device=self.qweight.device)):
            return None
        else:
            if bool((self.act_scale == 1).all()):  # unsmoothed (the tied head's ones): nothing to scale
                smoothed = True
            scale, packed = (None if smoothed else self.act_scale), self.fbgemm_weight()
            if one_row:
                product = (lambda x: w8a8_row(x, packed)) if smoothed else (lambda x: w8a8_row(x * scale, packed))
            else:
                product = lambda x: w8a8_linear(x, scale, packed)  # noqa: E731
        if product is None or not self.exact_top:
            return product
        # the head (exact_top: see the class); W8A8 codes are those of W * s, for inputs x / s
        return lambda x: self._exact_top_logits(x if scale is None else x * scale, product(x))

    def _exact_top_logits(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        x2, y2 = x.reshape(-1, x.shape[-1]).float(), y.reshape(-1, y.shape[-1]).float()
        k = min(self.exact_top, y2.shape[-1])
        for i in range(0, x2.shape[0], chunk):  # (chunk, k, K) dequantized rows at a time
            xs, ys = x2[i:i + chunk], y2[i:i + chunk]
            idx = ys.topk(k, -1).indices                                          # (m, k)
            rows = dequantize(QTensor(self.bits, self.group, self.qweight[idx], self.scales[idx],
                                      None if self.zeros is None else self.zeros[idx], self.in_features))
            ys.scatter_(-1, idx, (rows @ xs[:, :, None])[..., 0])
        return y2.reshape(y.shape).to(x.dtype)

    @classmethod
    def fuse(cls, mods: list[QuantLinear]) -> QuantLinear | None:
        """One layer computing the outputs of ``mods`` side by side: their codes, scales and
        offsets stacked along the output rows; None unless they share input width, bits and
        groups. The decode step issues one packed product where there were several with it
        (model/decode.py)."""
        first = mods[0]
        if any((m.bits, m.group, m.in_features) != (first.bits, first.group, first.in_features) for m in mods):
            return None
        scale = first.act_scale  # W8A8 layers fuse when they smooth their (shared) input alike
        if any((m.act_scale is None) != (scale is None) or scale is not None and not torch.equal(m.act_scale, scale)
               for m in mods):
            return None
        zeros = None if first.zeros is None else torch.cat([m.zeros for m in mods])
        qt = QTensor(first.bits, first.group, torch.cat([m.qweight for m in mods]),
                     torch.cat([m.scales for m in mods]), zeros, first.in_features)
        return cls(qt, first.kernel, scale)

    def extra_repr(self) -> str:
        g = f", group={self.group}" if self.bits == 4 else ""
        g += ", inputs=8 bits" if self.act_scale is not None else ""
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}{g}, kernel={self.kernel}"


class QuantEmbedding(_QuantWeights):
    """An nn.Embedding with quantized rows (the output head may share its buffers)."""

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = QTensor(self.bits, self.group, self.qweight[idx], self.scales[idx],
                       None if self.zeros is None else self.zeros[idx], self.in_features)
        return dequantize(rows)                                               # (..., D)


@functools.cache
def fbgemm_available() -> bool:
    """Whether this PyTorch build has fbgemm's quantized CPU kernels (x86 builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


# Inputs are rounded per row on one fixed grid: each row scaled to a largest magnitude of 1 (by
# its own r), then to integers 1..127 (zero at 64). Seven bits, as fbgemm's dynamic kernels use on
# CPUs without VNNI, where pairs of 8-bit products summed in 16 bits could saturate. The grid does
# not depend on the other rows, so neither do a row's results (as with weights-only layers).
INPUT_SCALE, INPUT_ZERO = 1.0 / 63, 64
# fbgemm's kernel, called below its Python wrapper (OpOverload.__call__ adds about 5 us a call,
# 121 calls a token for SmolLM2); the wrapper itself where a build lacks the attribute
_W8A8_OP = (getattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32", None)
            if fbgemm_available() else None)
_W8A8_KERNEL = getattr(_W8A8_OP.default, "_op", _W8A8_OP) if _W8A8_OP is not None else None


def _row_ranges(x2: torch.Tensor, act_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x2 * act_scale / r, r), r: each row's largest magnitude after smoothing."""
    xs = x2 * act_scale
    r = xs.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    return xs / r, r


def w8a8_linear(x2: torch.Tensor, act_scale: torch.Tensor | None, packed) -> torch.Tensor:
    """fp32 (M, K) -> (M, N): inputs rounded per row (see INPUT_SCALE), times the int8 codes,
    by fbgemm's integer kernel. ``act_scale`` None: ``x2`` is smoothed already (the decode step
    folds the scale into the norm before the layer). Inference only: it works in place on its
    own temporaries (121 calls a token for SmolLM2, so each operation around the kernel counts)."""
    xs = x2 * act_scale if act_scale is not None else x2
    r = xs.abs().amax(-1, keepdim=True).clamp_min_(1e-12)  # not vector_norm(inf): 5-8x slower over rows
    xs = xs.div_(r) if act_scale is not None else xs / r
    return _W8A8_KERNEL(xs, INPUT_SCALE, INPUT_ZERO, packed).mul_(r)


def w8a8_row(x2: torch.Tensor, packed) -> torch.Tensor:
    """`w8a8_linear` of one smoothed row (1, K), for the one-sequence decode step: the row's range
    goes to the kernel as its input scale (r / 63) instead of the row being divided by r and the
    result multiplied by it. The same grid; two operations fewer around each product, for one
    read of r on the host."""
    r = max(x2.abs().max().item(), 1e-12)
    return _W8A8_KERNEL(x2, r * INPUT_SCALE, INPUT_ZERO, packed)


def w8a8_reference(x2: torch.Tensor, act_scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`w8a8_linear` simulated in floating point (any device; differentiable, the rounding
    straight-through): the input rounded on the same grid, times the dequantized codes ``w``."""
    xs, r = _row_ranges(x2, act_scale)
    q = torch.fake_quantize_per_tensor_affine(xs, INPUT_SCALE, INPUT_ZERO, 0, 127)
    return F.linear(q, w.to(q.dtype)) * r


EXACT_LOGITS = 64  # the output head's logits per row computed in fp32 (QuantLinear.exact_top)


def mark_head(model: nn.Module) -> None:
    """A quantized output head recomputes its largest logits in fp32 (see QuantLinear)."""
    if isinstance(getattr(model, "head", None), QuantLinear):
        model.head.exact_top = EXACT_LOGITS


def tied_head(embed: QuantEmbedding, kernel: str, activations: int | None) -> QuantLinear:
    """The output head of a model whose head is its (quantized) embedding. With 8-bit inputs
    (quant.activations 8) and an 8-bit embedding, the head takes them too, unsmoothed (its codes
    are the embedding's); its largest logits are computed again in fp32 as always (`mark_head`),
    so the rounding of its input mostly moves logits that carry little probability."""
    scale = torch.ones(embed.in_features) if activations == 8 and embed.bits == 8 else None
    return QuantLinear(embed.qtensor(), kernel, scale)


def tie_head(embed: QuantEmbedding, head: QuantLinear) -> None:
    """Make the head compute with the embedding's own buffers (one copy in memory and on disk)."""
    head.qweight, head.scales, head.zeros = embed.qweight, embed.scales, embed.zeros
    if head.act_scale is not None:  # unsmoothed (`tied_head`), and not stored: set here, after loading
        head.act_scale = torch.ones(embed.in_features, device=embed.qweight.device)


EXPERT_WEIGHTS = {"w1": "w1_EDH", "w3": "w3_EDH", "w2": "w2_EHD"}


class QuantMoE(MoE):
    """A MoE layer whose routed experts are quantized, each expert with its own scales.

    The stacked weights are held as ``qexperts.{w1,w3,w2}`` of shape (E, out, in). Without an
    adapter on the experts, each expert runs on its sorted token segment through the quantized
    matmul; with one, the adapter's update is added to the dequantized stacked weights (the
    ``w1_EDH`` ... properties, dequantized once and cached) and the model's dispatch runs."""

    def __init__(self, moe: MoE, stacks: dict[str, QTensor], kernel: str = "auto"):
        with torch.device("meta"):
            super().__init__(moe.cfg, moe.dispatch_name)
        for name in EXPERT_WEIGHTS.values():
            del self._parameters[name]
        self.router, self.shared = moe.router, moe.shared
        self.lora, self.lora_selection = moe.lora, moe.lora_selection
        self.qexperts = nn.ModuleDict({k: _QuantWeights(stacks[k], kernel) for k in EXPERT_WEIGHTS})
        self._dense_cache: dict[str, tuple] = {}
        self._row: tuple | None = None  # (what it was built from, RowExperts or None)

    def row_experts(self) -> RowExperts | None:
        """The one-row products of the routed experts (`RowExperts`), built on first use and again
        when the codes, scales or kernel choice change; None where the packed kernels do not run."""
        key = tuple((w._codes_key(), w.kernel) for w in self.qexperts.values())
        if self._row is None or self._row[0] != key:
            self._row = (key, RowExperts.build(self.qexperts))
        return self._row[1]

    def _stacked(self, k: str) -> torch.Tensor:
        qw = self.qexperts[k]
        key = (qw.qweight.data_ptr(), qw.qweight._version, qw.scales._version)
        cached = self._dense_cache.get(k)
        if cached is None or cached[0] != key:
            cached = (key, qw.dequantized().transpose(1, 2).contiguous())  # (E, in, out)
            self._dense_cache[k] = cached
        return cached[1]

    @property
    def w1_EDH(self) -> torch.Tensor:
        return self._stacked("w1")

    @property
    def w3_EDH(self) -> torch.Tensor:
        return self._stacked("w3")

    @property
    def w2_EHD(self) -> torch.Tensor:
        return self._stacked("w2")

    def _experts(self, x_TD, expert_ids_TK, weights_TK, adapter: str | None) -> torch.Tensor:
        if self.lora is not None and adapter is not None and self.lora.has(adapter):
            return super()._experts(x_TD, expert_ids_TK, weights_TK, adapter)
        few = (self.dispatch_name == "few_tokens" or self.dispatch_name == "auto" and x_TD.device.type == "cpu"
               and x_TD.shape[0] <= dispatch.FEW_TOKENS)  # as 'auto' decides for unquantized experts
        if few and not torch.is_grad_enabled():
            return quant_few_tokens(x_TD, expert_ids_TK, weights_TK, self.qexperts, self.row_experts())
        return quant_segments(x_TD, expert_ids_TK, weights_TK, self.qexperts)


def _expert_runner(qexperts: nn.ModuleDict, x: torch.Tensor):
    """``(xs, run)``: ``run(rows, e)`` is expert e's SwiGLU, in fp32, on rows of ``xs`` (``x`` as
    the experts take it). Where all three weights use the packed kernels, ``run`` calls them
    directly, with the checks, the packed matrices and x's bf16 cast taken once a layer instead of
    once a product: at batch 1 these 96-wide products cost less than `matmul`'s wrapper around
    them (int8 SmolLM2 MoE form, 30 layers x 8 experts x 3: 62 ms a token through `matmul`, 24
    ms direct). Numerics as `matmul`: bf16 in, fp32 out."""
    w1, w3, w2 = qexperts["w1"], qexperts["w3"], qexperts["w2"]
    if not all(w.use_packed(x) for w in (w1, w3, w2)):
        return x, lambda rows, e: w2.matmul(F.silu(w1.matmul(rows, e)) * w3.matmul(rows, e), e).float()
    p1, p3, p2 = w1.packed(), w3.packed(), w2.packed()

    def run(rows: torch.Tensor, e: int) -> torch.Tensor:
        h = F.silu(w1.kernel_mm(rows, *p1[e]).float()) * w3.kernel_mm(rows, *p3[e]).float()
        return w2.kernel_mm(h.to(PACKED_DTYPE), *p2[e]).float()

    return x.to(PACKED_DTYPE).contiguous(), run


class RowExperts:
    """One token's chosen experts as two packed products, not three per expert.

    At one row the 96-wide expert products cost less than the calls that issue them (SmolLM2's
    MoE form at k = 8: 24 calls a layer, 610 us). Here the chosen experts' packed weights are
    gathered into one matrix per side, so a layer issues one product for all their gate and up
    projections and, for 4-bit down projections, one for all of them (``w2``: the experts' input
    columns one after another, each expert's own groups and grids); 8-bit down projections, whose
    scales are per output channel and per expert, stay one product per expert (1 + k a layer).
    The gathers copy the chosen experts' codes (k = 5: 0.26 MB a layer in 4 bits), which costs
    less than the calls saved.

    Memory: 8-bit gate and up codes are gathered from the layer's own buffers (the chosen experts'
    w1 rows, then their w3 rows). 4-bit ones are held once, each expert's w1 and w3 packed rows
    side by side, and the per-expert products of batches read views of them (`share_packed`). The
    4-bit down projections' codes are held twice, here blocked by output rows with the experts
    side by side (for SmolLM2's MoE form 18 MB, a quarter of its int4 file), as the per-expert
    products need each expert's alone.

    The packed kernels' layouts are their own: the 4-bit layout blocks output rows (32 on AVX2,
    64 on AVX-512), and gathering is only right where blocks never straddle two experts. `build`
    checks each assumption on the layer's own codes against the kernel's packing of the
    concatenated codes, and returns None (the per-expert path stays) where one fails: experts of
    96 neurons in 4 bits, as SmolLM2's MoE form has, keep the per-expert path on AVX-512."""

    dtype = PACKED_DTYPE  # of the row a call takes

    def __init__(self, hidden: int, w13, s13, group13: int, w2, s2=None, group2: int = 0):
        self.hidden = hidden
        # gate and up: 8 bits: the (E, H, D) codes and (E, H) scales of w1 and of w3, in pairs;
        # 4 bits: (E, 2H, D/2) packed codes and (D/G, E, 2H, 2) grids
        self.w13, self.s13, self.group13 = w13, s13, group13
        # down: 4 bits (D/BN, E, Kp*BN/2) codes and (E, Kp/G, D, 2) grids, or per expert (8 bits)
        self.w2, self.s2, self.group2 = w2, s2, group2
        self.kp2 = 0 if s2 is None else s2.shape[1] * group2  # an expert's inputs, padded to whole groups
        self.dim = 0 if s2 is None else s2.shape[2]

    @classmethod
    def build(cls, qexperts: nn.ModuleDict) -> RowExperts | None:
        w1, w3, w2 = qexperts["w1"], qexperts["w3"], qexperts["w2"]
        probe = torch.empty(0, device=w1.qweight.device)
        if not all(w.use_packed(probe) for w in (w1, w3, w2)) or (w1.bits, w1.group) != (w3.bits, w3.group):
            return None
        p1, p3, p2 = w1.packed(), w3.packed(), w2.packed()
        E, H = len(p1), w1.out_features
        if w1.bits == 8:
            w13 = (w1.qweight.contiguous(), w3.qweight.contiguous())  # the buffers as they are, if contiguous
            s13 = tuple(torch.stack([s for _, s in p]) for p in (p1, p3))               # (E, H) each
        else:
            w13 = torch.stack([torch.cat([p1[e][0], p3[e][0]]) for e in range(E)])        # (E, 2H, D/2)
            if not _rows_gather(w1, w3, w13):
                return None
            # the per-expert products (batches) read their codes from here too: one copy in memory
            w1.share_packed([(w13[e, :H], *p1[e][1:]) for e in range(E)])
            w3.share_packed([(w13[e, H:], *p3[e][1:]) for e in range(E)])
            s13 = torch.stack([torch.cat([p1[e][1], p3[e][1]], 1) for e in range(E)], 1)  # (D/G, E, 2H, 2)
        if w2.bits == 8:
            return cls(H, w13, s13, w1.group, p2)
        block = _k_block(w2, p2)
        if block is None:
            return None
        D = w2.out_features
        kw2 = torch.stack([p[0].view(D // block, -1) for p in p2], 1)                 # (D/BN, E, Kp*BN/2)
        ks2 = torch.stack([p[1] for p in p2])                                        # (E, Kp/G, D, 2)
        return cls(H, w13, s13, w1.group, kw2, ks2, w2.group)

    def __call__(self, xb: torch.Tensor, ids: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """sum_j weights[j] * expert ids[j] (x) for one row ``xb`` (1, D) in `dtype`, contiguous;
        (1, D) in `dtype` (fp32 for 8-bit down projections, summed one by one)."""
        k, H = len(weights), self.hidden
        if isinstance(self.w13, tuple):                                        # 8 bits
            (q1, q3), (s1, s3) = self.w13, self.s13
            w = torch.empty(2, k, H, q1.shape[-1], dtype=q1.dtype)
            s = torch.empty(2, k, H, dtype=s1.dtype)
            for i, (q, sc) in enumerate(((q1, s1), (q3, s3))):
                _gather(q, 0, ids, out=w[i])
                torch.index_select(sc, 0, ids, out=s[i])
            u = torch._weight_int8pack_mm(xb, w.view(2 * k * H, -1), s.view(-1)).float().view(2, k, H)
            gate, up = F.silu(u[0]), u[1]                                      # (k, H) each
        else:
            w13 = _gather(self.w13, 0, ids).view(2 * k * H, -1)
            s13 = self.s13.index_select(1, ids).view(self.s13.shape[0], 2 * k * H, 2)
            kp = s13.shape[0] * self.group13
            xp = xb if kp == xb.shape[1] else F.pad(xb, (0, kp - xb.shape[1]))
            u = torch._weight_int4pack_mm_for_cpu(xp, w13, self.group13, s13).float().view(k, 2, H)
            gate, up = F.silu(u[:, 0]), u[:, 1]
        if any(w != 1.0 for w in weights):
            gate.mul_(torch.tensor(weights)[:, None])
        if self.s2 is None:                                                    # 8-bit w2: per expert
            hb = (gate * up).to(PACKED_DTYPE)
            y = None
            for j, e in enumerate(ids.tolist()):
                yj = torch._weight_int8pack_mm(hb[j:j + 1], *self.w2[e]).float()
                y = yj if y is None else y.add_(yj)
            return y
        # the product written straight into each expert's inputs, padded to whole groups
        hb = (torch.zeros if self.kp2 > H else torch.empty)(k, self.kp2, dtype=PACKED_DTYPE)
        torch.mul(gate, up, out=hb[:, :H])
        w2 = _gather(self.w2, 1, ids).view(self.dim, -1)
        s2 = self.s2.index_select(0, ids).view(-1, self.dim, 2)
        return torch._weight_int4pack_mm_for_cpu(hb.view(1, -1), w2, self.group2, s2)


def _gather(t: torch.Tensor, dim: int, ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``t.index_select(dim, ids)`` of a byte tensor (into ``out`` if given), moved as 8-byte words
    where its last dimension allows: index_select copies element by element (at one row of
    SmolLM2's MoE form, 8 experts' w1 and w3 in 4 bits: 27 -> 16 us)."""
    if t.shape[-1] % 8 or t.element_size() != 1:
        return torch.index_select(t, dim, ids, out=out) if out is not None else t.index_select(dim, ids)
    words = t.view(torch.int64)
    if out is not None:
        torch.index_select(words, dim, ids, out=out.view(torch.int64))
        return out
    return words.index_select(dim, ids).view(t.dtype)


def _int4_packed(codes: torch.Tensor) -> torch.Tensor:
    """The 4-bit kernel's packed form of codes (N, Kp), as `group_codes` gives them."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


def _rows_gather(w1: _QuantWeights, w3: _QuantWeights, w13: torch.Tensor) -> bool:
    """Whether the 4-bit kernel reads packed matrices of H rows stacked one after another (``w13``:
    each expert's w1 then its w3) as the packing of their stacked codes, i.e. its row blocks do
    not straddle two of them: checked for the first 2, 3 and 4 matrices, as the kernel's row
    block may depend on the number of rows."""
    E, H = w13.shape[0], w1.out_features
    mats = [w.matrix(e) for e in range(min(E, 2)) for w in (w1, w3)]
    for n in (2, 3, 4):
        if n > 2 * E:
            break
        whole = _int4_packed(torch.cat([group_codes(m) for m in mats[:n]]))
        if not torch.equal(whole, w13.view(2 * E, H, -1)[:n].reshape(whole.shape)):
            return False
    return True


def _k_block(w2: _QuantWeights, p2: list) -> int | None:
    """The row block of the 4-bit kernel's layout of the experts' down projections, where their
    packed matrices concatenate along the inputs block by block (rows blocked, each block's
    inputs in order): the block for which two experts' packed matrices so concatenated equal
    the packing of their concatenated codes. None if no block does."""
    if len(p2) < 2:
        return None
    D = w2.out_features
    whole = _int4_packed(torch.cat([group_codes(w2.matrix(e)) for e in (0, 1)], 1))
    for block in (8, 16, 32, 64, 128, 256):
        if D % block == 0:
            cat = torch.cat([p2[e][0].view(D // block, -1) for e in (0, 1)], 1).view(whole.shape)
            if torch.equal(cat, whole):
                return block
    return None


def quant_few_tokens(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
                     qexperts: nn.ModuleDict, row_experts: RowExperts | None = None) -> torch.Tensor:
    """Decode-sized batches (`kernels.dispatch.moe_few_tokens`): each token's chosen experts run
    on its row through their quantized weights, with nothing sorted, through ``row_experts``
    where given (`RowExperts`), else one expert at a time. Inference only."""
    n_experts = qexperts["w1"].qweight.shape[0]
    if not x_TD.shape[0]:
        return torch.zeros_like(x_TD)
    ids, scale = expert_ids_TK.tolist(), weights_TK.tolist()               # host syncs
    if row_experts is not None:
        xs, run = x_TD.to(row_experts.dtype).contiguous(), None
    else:
        xs, run = _expert_runner(qexperts, x_TD)
    rows = []
    for t, row in enumerate(ids):
        x, chosen = xs[t:t + 1], [j for j, e in enumerate(row) if e < n_experts]
        if row_experts is not None and chosen:
            y = row_experts(x, torch.tensor([row[j] for j in chosen]), [scale[t][j] for j in chosen]).float()
        else:
            y = torch.zeros(1, x_TD.shape[1], dtype=torch.float32, device=x_TD.device)
            for j in chosen:
                y.add_(run(x, row[j]), alpha=scale[t][j])
        rows.append(y)
    return (rows[0] if len(rows) == 1 else torch.cat(rows)).to(x_TD.dtype)


def quant_segments(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor,
                   qexperts: nn.ModuleDict) -> torch.Tensor:
    """The sorted-segment dispatch (`kernels.dispatch.moe_sorted_segments`) with each expert's
    three projections through its quantized weights."""
    from lightseek.kernels.dispatch import _combine, _sort_by_expert

    order, counts_E = _sort_by_expert(expert_ids_TK, qexperts["w1"].qweight.shape[0])
    counts = counts_E.tolist()                                            # the one host sync
    order = order[:sum(counts)]
    if not order.numel():
        return torch.zeros_like(x_TD)
    token_idx = order // expert_ids_TK.shape[1]                           # (N,) token of each pair
    x_ND = x_TD.index_select(0, token_idx)
    xs, run = _expert_runner(qexperts, x_ND)
    outputs, start = [], 0
    for e, n in enumerate(counts):
        if n:
            outputs.append(run(xs[start:start + n], e).to(x_TD.dtype))
            start += n
    return _combine(x_TD, token_idx, torch.cat(outputs), weights_TK.reshape(-1)[order])


def set_kernel(model: nn.Module, kernel: str) -> None:
    """Choose the matmul path of every quantized layer: auto, packed or dequant."""
    if kernel not in KERNELS:
        raise ConfigError(f"quant.kernel: unknown kernel '{kernel}' (known: {', '.join(KERNELS)})")
    for m in model.modules():
        if isinstance(m, _QuantWeights):
            m.kernel = kernel
