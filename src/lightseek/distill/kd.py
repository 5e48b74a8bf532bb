"""Knowledge-distillation losses and the teachers that supply their targets.

``kd_loss`` compares the student's next-token distribution with a teacher's at every learned
position: forward KL (KL(teacher || student): the student covers everything the teacher
deems likely), reverse KL (KL(student || teacher): the student commits to the teacher's main
modes) or a mix. Both distributions are softened by a temperature, and the loss is scaled by
T² so its gradients keep their size as T changes (Hinton et al., 2015).

``TeacherSet`` holds one teacher per domain: each row of a batch is taught by its own domain's
teacher (rows of a domain without a teacher learn from the data alone). The same mechanism
runs distillation in the other direction: a domain expert trained from the base keeps a KL tie
to the base on general text by naming the base as the teacher of the ``general`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lightseek.config import field
from lightseek.errors import ConfigError
from lightseek.eval.kl import kl_per_token
from lightseek.model.transformer import Transformer

Divergence = Literal["forward", "reverse", "mix"]


@dataclass
class KdConfig:
    divergence: Divergence = field("forward", help=(
        "forward = KL(teacher || student), reverse = KL(student || teacher), mix = a blend of both."))
    forward_weight: float = field(0.5, help="With divergence=mix: the forward KL's weight (the reverse gets the rest).")
    temperature: float = field(1.0, help="Softmax temperature of both distributions (the loss is scaled by T^2).")
    ce_weight: float = field(0.5, help=(
        "Weight of the ordinary next-token loss; the KD term gets 1 - ce_weight (rows without a teacher: "
        "next-token loss only)."))

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"kd.temperature must be positive, got {self.temperature}")
        for name in ("forward_weight", "ce_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"kd.{name} must be in [0, 1], got {getattr(self, name)}")


def token_kl(student_logits_NV: torch.Tensor, teacher_logits_NV: torch.Tensor, cfg: KdConfig) -> torch.Tensor:
    """Per-position divergence (N,) between softened distributions, times T²."""
    t = cfg.temperature
    scale = (lambda x: x.float()) if t == 1.0 else (lambda x: x.float() / t)
    log_s = F.log_softmax(scale(student_logits_NV), dim=-1)
    log_t = F.log_softmax(scale(teacher_logits_NV), dim=-1)
    forward = kl_per_token(log_t, log_s) if cfg.divergence != "reverse" else None
    reverse = kl_per_token(log_s, log_t) if cfg.divergence != "forward" else None
    if cfg.divergence == "forward":
        kl = forward
    elif cfg.divergence == "reverse":
        kl = reverse
    else:
        kl = cfg.forward_weight * forward + (1.0 - cfg.forward_weight) * reverse
    return kl * (t * t)


class _ChunkedDivergence(torch.autograd.Function):
    """``token_kl`` over (N, V) logits, ``chunk`` rows at a time, recomputed chunk by chunk in
    backward: the softmaxes of a whole batch over a 49k vocabulary are gigabytes, which cost more
    time in memory traffic than the model's own arithmetic; a chunk stays in the CPU's cache."""

    @staticmethod
    def forward(ctx, student_NV, teacher_NV, cfg, chunk):
        ctx.save_for_backward(student_NV, teacher_NV)
        ctx.cfg, ctx.chunk = cfg, chunk
        return torch.cat([token_kl(student_NV[i:i + chunk], teacher_NV[i:i + chunk], cfg)
                          for i in range(0, student_NV.shape[0], chunk)])

    @staticmethod
    def backward(ctx, grad_N):
        student_NV, teacher_NV = ctx.saved_tensors
        grad_NV = torch.empty_like(student_NV)
        for i in range(0, student_NV.shape[0], ctx.chunk):
            with torch.enable_grad():
                s = student_NV[i:i + ctx.chunk].detach().requires_grad_()
                kl = token_kl(s, teacher_NV[i:i + ctx.chunk], ctx.cfg)
                grad_NV[i:i + ctx.chunk] = torch.autograd.grad(kl, s, grad_N[i:i + ctx.chunk])[0]
        return grad_NV, None, None, None


def chunked_token_kl(student_logits_NV: torch.Tensor, teacher_logits_NV: torch.Tensor, cfg: KdConfig,
                     chunk: int = 32) -> torch.Tensor:
    """``token_kl`` with the same values and gradients, computed ``chunk`` positions at a time."""
    return _ChunkedDivergence.apply(student_logits_NV.float(), teacher_logits_NV.float().detach(), cfg, chunk)


def kd_loss(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, targets_BT: torch.Tensor,
            cfg: KdConfig, taught_B: torch.Tensor | None = None) -> torch.Tensor:
    """The distillation objective averaged over learned tokens (targets != -100):
    ce_weight * next-token loss + (1 - ce_weight) * divergence on rows with a teacher
    (``taught_B``, default all); rows without one count their next-token loss in full."""
    B, T, V = student_logits_BTV.shape
    if teacher_logits_BTV.shape != student_logits_BTV.shape:
        raise ConfigError(f"teacher logits {tuple(teacher_logits_BTV.shape)} do not match the student's "
                          f"{tuple(student_logits_BTV.shape)}: teacher and student must share one tokenizer")
    learned_BT = targets_BT != -100
    n = learned_BT.sum()
    if n == 0:
        return student_logits_BTV.sum() * 0.0
    taught_BT = learned_BT if taught_B is None else learned_BT & taught_B.view(B, 1)
    w = cfg.ce_weight
    if w == 0.0 and bool((taught_BT == learned_BT).all()):  # pure distillation: no next-token term at all
        ce_BT = None
    else:
        ce_BT = F.cross_entropy(student_logits_BTV.float().reshape(-1, V), targets_BT.reshape(-1),
                                ignore_index=-100, reduction="none").view(B, T)
    if taught_BT.any():  # positions without a teacher get a divergence too, masked out below
        kl_BT = chunked_token_kl(student_logits_BTV.reshape(-1, V), teacher_logits_BTV.reshape(-1, V), cfg).view(B, T)
    else:
        kl_BT = torch.zeros(B, T, device=student_logits_BTV.device)
    if ce_BT is None:
        return kl_BT[learned_BT].sum() / n
    per_token = torch.where(taught_BT, w * ce_BT + (1.0 - w) * kl_BT, ce_BT)
    return per_token[learned_BT].sum() / n


class TeacherSet:
    """One frozen teacher per domain; ``logits`` runs each teacher on its own rows only (one
    forward per distinct model when several domains share a teacher)."""

    def __init__(self, teachers: dict[str, Transformer]):
        self.teachers = teachers
        for t in teachers.values():
            t.eval()
            t.requires_grad_(False)

    def __contains__(self, domain: str) -> bool:
        return domain in self.teachers

    @torch.no_grad()
    def logits(self, idx_BT: torch.Tensor, domains: list[str]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(teacher logits (B, T, V) with zeros on untaught rows, or None when no row has a
        teacher; taught_B: which rows have one)."""
        if len(domains) != idx_BT.shape[0]:
            raise ConfigError(f"{len(domains)} row domains for a batch of {idx_BT.shape[0]} rows")
        taught_B = torch.tensor([d in self.teachers for d in domains], device=idx_BT.device)
        if not taught_B.any():
            return None, taught_B
        out_BTV = None
        by_teacher: dict[int, list[int]] = {}  # one forward per model, however many domains it teaches
        for i, d in enumerate(domains):
            if d in self.teachers:
                by_teacher.setdefault(id(self.teachers[d]), []).append(i)
        models = {id(t): t for t in self.teachers.values()}
        for key, rows in by_teacher.items():
            logits = models[key](idx_BT[rows]).logits  # (b, T, V)
            if out_BTV is None:
                out_BTV = logits.new_zeros(idx_BT.shape[0], idx_BT.shape[1], logits.shape[-1])
            out_BTV[rows] = logits
        return out_BTV, taught_B
