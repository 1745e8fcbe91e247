"""Distillation losses: pure functions, fp32 math inside whatever the input dtype.

Shapes: ``b`` batch, ``t`` positions, ``V`` vocabulary, ``H`` hidden size, ``h`` heads. A ``mask`` is
boolean and selects the positions that count; losses average over the selected positions only, and the
values at unselected positions (even NaN/inf) change neither the loss nor its gradient.

Divergences (per position, ``p_T = softmax(teacher / T)``, ``p_S = softmax(student / T)``):

- ``forward_kl``: KL(p_T || p_S), mass-covering; the default for the logits stage.
- ``reverse_kl``: KL(p_S || p_T), mode-seeking.
- ``jsd``: the generalized Jensen-Shannon divergence of trl's ``GKDTrainer.generalized_jsd_loss``:
  ``beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)`` with ``M = beta * p_T + (1 - beta) * p_S``; as in trl,
  ``beta == 0`` is forward KL and ``beta == 1`` is reverse KL exactly.

All three are multiplied by ``T**2`` (Hinton et al.) so gradient magnitudes stay comparable across
temperatures; trl does not do this, so ``jsd`` at ``T != 1`` is trl's value times ``T**2``.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _check_options(kind: str, beta: float, temperature: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown distillation loss kind={kind!r}: choose one of {', '.join(KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} is outside [0, 1]: 0 is forward KL, 1 reverse KL, 0.5 the symmetric JSD")
    if not temperature > 0 or math.isinf(temperature):
        raise ValueError(f"temperature={temperature} must be a finite number > 0 (1.0 leaves logits unchanged)")


def _select(x: Tensor, mask: Tensor | None, lead: tuple[int, ...], name: str) -> Tensor:
    """Flatten ``x: (*lead, D)`` to ``(n, D)`` keeping only rows where ``mask: lead`` is true."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    if tuple(mask.shape) != lead:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the inputs need {lead} (one flag per position)")
    return x[mask.to(device=x.device, dtype=torch.bool)]


def token_divergence(
    student_logits: Tensor, teacher_logits: Tensor, kind: str = "forward_kl", beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Per-position divergence (fp32), already multiplied by ``temperature**2``.

    student_logits, teacher_logits: (..., V), any float dtype. Returns (...) in fp32.
    """
    _check_options(kind, beta, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "the student must share the teacher's vocabulary"
        )
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        div = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    elif kind == "reverse_kl":
        div = F.kl_div(log_t, log_s, reduction="none", log_target=True).sum(-1)
    else:
        log_m = torch.logsumexp(torch.stack([log_s + math.log1p(-beta), log_t + math.log(beta)]), dim=0)
        kl_t = F.kl_div(log_m, log_t, reduction="none", log_target=True).sum(-1)
        kl_s = F.kl_div(log_m, log_s, reduction="none", log_target=True).sum(-1)
        div = beta * kl_t + (1.0 - beta) * kl_s
    return div * (temperature**2)


def distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, kind: str = "forward_kl",
    beta: float = 0.5, temperature: float = 1.0,
) -> Tensor:
    """Mean divergence between student and teacher next-token distributions over the masked positions.

    student_logits, teacher_logits: (b, t, V) or (n, V); mask: (b, t) / (n,) bool or None (all positions).
    kind: "forward_kl" | "reverse_kl" | "jsd" (see module docstring); beta: JSD interpolation in [0, 1];
    temperature: > 0, divides both logits, loss scaled by temperature**2.
    Returns a fp32 scalar; 0 (with a gradient path) when the mask selects nothing.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "the student must share the teacher's vocabulary and positions"
        )
    lead = tuple(student_logits.shape[:-1])
    s = _select(student_logits, mask, lead, "mask")
    t = _select(teacher_logits, mask, lead, "mask")
    div = token_divergence(s, t, kind, beta, temperature)
    return div.sum() / max(div.numel(), 1)


def _as_head(head: nn.Module | Tensor | Callable[[Tensor], Tensor], name: str) -> Callable[[Tensor], Tensor]:
    if isinstance(head, Tensor):
        if head.dim() != 2:
            raise ValueError(f"{name} as a tensor must be a (V, H) weight matrix, got shape {tuple(head.shape)}")
        return lambda h: F.linear(h, head)
    if callable(head):
        return head
    raise TypeError(f"{name} must be an nn.Module (e.g. model.lm_head) or a (V, H) weight tensor, got {type(head)}")


def chunked_distill_loss(
    student_hidden: Tensor, teacher_hidden: Tensor, student_head: nn.Module | Tensor,
    teacher_head: nn.Module | Tensor, mask: Tensor | None = None, chunk_size: int = 1024, **kind_kwargs,
) -> Tensor:
    """``distill_loss(student_head(student_hidden), teacher_head(teacher_hidden), mask, **kind_kwargs)``
    without ever holding logits for more than ``chunk_size`` positions.

    student_hidden, teacher_hidden: (b, t, H) or (n, H) final hidden states (after the final norm);
    student_head, teacher_head: lm_head modules or (V, H) weights; mask: (b, t) / (n,) bool or None;
    kind_kwargs: kind, beta, temperature as in ``distill_loss``.
    Each chunk's logits are recomputed in backward (activation checkpointing), so peak memory is
    O(chunk_size * V) instead of O(b * t * V). The teacher side is a target: it gets no gradient, even when
    the heads share weights (the seeded student shares the teacher's lm_head). Returns a fp32 scalar.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1 (positions per chunk; 1024 is a good default)")
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} and teacher hidden {tuple(teacher_hidden.shape)} "
            "cover different positions"
        )
    kind, beta, temperature = (kind_kwargs.pop(k, d) for k, d in (("kind", "forward_kl"), ("beta", 0.5),
                                                                   ("temperature", 1.0)))
    if kind_kwargs:
        raise TypeError(f"unknown loss option(s) {sorted(kind_kwargs)}: use kind, beta, temperature")
    _check_options(kind, beta, temperature)
    s_head, t_head = _as_head(student_head, "student_head"), _as_head(teacher_head, "teacher_head")
    lead = tuple(student_hidden.shape[:-1])
    s_rows = _select(student_hidden, mask, lead, "mask")
    t_rows = _select(teacher_hidden, mask, lead, "mask")

    def chunk_sum(s: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            t_logits = t_head(t)
        return token_divergence(s_head(s), t_logits, kind, beta, temperature).sum()

    total = student_hidden.new_zeros((), dtype=torch.float32)
    if s_rows.shape[0] == 0:
        return total + 0.0 * student_hidden.sum()
    for start in range(0, s_rows.shape[0], chunk_size):
        s, t = s_rows[start:start + chunk_size], t_rows[start:start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_sum, s, t, use_reentrant=False)
        else:
            total = total + chunk_sum(s, t)
    return total / s_rows.shape[0]


HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


def _liger_beta(kind: str, beta: float) -> float:
    """Liger's generalized JSD beta for our kinds (0 is forward KL, 1 reverse KL, as in trl)."""
    return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(kind, beta)


def fused_distill_loss(
    student_rows: Tensor, teacher_rows: Tensor, student_weight: Tensor, teacher_weight: Tensor,
    kind: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0, chunk_size: int = 1024,
    backend: str = "auto",
) -> Tensor:
    """Mean divergence of ``student_rows @ student_weight.T`` from ``teacher_rows @ teacher_weight.T``, fused.

    student_rows, teacher_rows: (n, H) final hidden states of the positions that count; weights: (V, H)
    lm_head matrices. backend "auto" uses Liger-Kernel's fused linear generalized JSD on CUDA when it is
    installed (logits never leave a chunk, the student's gradients are made in the forward pass), else
    ``chunked_distill_loss``; "liger" / "torch" force one. Same value as ``chunked_distill_loss`` (Liger's
    beta = 0 / 1 are our forward / reverse KL; its result is scaled by ``temperature**2`` here as ours is).
    Returns a fp32 scalar (0 with a gradient path when n == 0).
    """
    _check_options(kind, beta, temperature)
    if backend not in ("auto", "liger", "torch"):
        raise ValueError(f"unknown loss backend {backend!r}: choose auto, liger or torch")
    use_liger = backend == "liger" or (backend == "auto" and HAS_LIGER and student_rows.is_cuda)
    if not use_liger or student_rows.shape[0] == 0:
        return chunked_distill_loss(student_rows, teacher_rows, student_weight, teacher_weight, chunk_size=chunk_size,
                                    kind=kind, beta=beta, temperature=temperature)
    from liger_kernel.ops.fused_linear_jsd import LigerFusedLinearJSDFunction  # noqa: PLC0415  (CUDA only)

    device_type = student_rows.device.type
    if torch.is_autocast_enabled(device_type):  # the GEMMs run in autocast's dtype, as the rest of the model
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = student_rows.dtype if student_rows.dtype in (torch.bfloat16, torch.float16) else torch.float32
    with torch.autocast(device_type=device_type, enabled=False):
        loss = LigerFusedLinearJSDFunction.apply(
            student_rows.to(dtype).contiguous(), student_weight.to(dtype),
            teacher_rows.to(dtype).contiguous(), teacher_weight.detach().to(dtype),
            None, _liger_beta(kind, beta), -100, temperature,
        )
    return loss.float() * (temperature**2)


def _next_token_targets(labels: Tensor, mask: Tensor | None, device) -> tuple[Tensor, Tensor]:
    """Targets labels[:, 1:] (b, t-1) and which predicting positions count: not -100 and, if given, in mask."""
    target = labels[:, 1:].to(device=device, dtype=torch.long)
    keep = target != -100
    if mask is not None:
        if mask.shape != labels.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but labels have {tuple(labels.shape)}")
        keep = keep & mask[:, :-1].to(device=device, dtype=torch.bool)
    return target, keep


def ce_loss(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Next-token cross-entropy: position i's logits predict ``labels[:, i + 1]``.

    logits: (b, t, V); labels: (b, t) token ids (-100 ignored); mask: (b, t) bool over the *predicting*
    positions (the same positions ``distill_loss`` takes), or None. Returns a fp32 scalar, the mean over
    counted positions (0 when none count).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"ce_loss needs logits (b, t, V) and labels (b, t); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    pred = logits[:, :-1]
    target, keep = _next_token_targets(labels, mask, logits.device)
    rows = pred[keep].float()
    if rows.shape[0] == 0:
        return 0.0 * logits.float().sum()
    return F.cross_entropy(rows, target[keep])


def chunked_ce_loss(
    hidden: Tensor, head: nn.Module | Tensor, labels: Tensor, mask: Tensor | None = None, chunk_size: int = 1024,
) -> Tensor:
    """``ce_loss(head(hidden), labels, mask)`` computing logits for ``chunk_size`` positions at a time
    (recomputed in backward), so (b, t, V) logits are never held.

    hidden: (b, t, H) final hidden states; head: lm_head module or (V, H) weight; labels: (b, t) (-100
    ignored); mask: (b, t) bool over the predicting positions, or None. Returns a fp32 scalar.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1 (positions per chunk; 1024 is a good default)")
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"chunked_ce_loss needs hidden (b, t, H) and labels (b, t); got {tuple(hidden.shape)} "
                         f"and {tuple(labels.shape)}")
    head_fn = _as_head(head, "head")
    target, keep = _next_token_targets(labels, mask, hidden.device)
    rows, target = hidden[:, :-1][keep], target[keep]
    if rows.shape[0] == 0:
        return 0.0 * hidden.float().sum()

    def chunk_sum(h: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(head_fn(h).float(), y, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], chunk_size):
        h, y = rows[start:start + chunk_size], target[start:start + chunk_size]
        total = total + (checkpoint(chunk_sum, h, y, use_reentrant=False) if torch.is_grad_enabled()
                         else chunk_sum(h, y))
    return total / rows.shape[0]


def hidden_loss(student: Tensor, teacher: Tensor, normalize: bool = True, mask: Tensor | None = None) -> Tensor:
    """L2 distance between hidden states / layer outputs.

    student, teacher: (..., H); mask: (...) bool or None (all positions).
    normalize=True: ``sum ||S - T||^2 / sum ||T||^2`` over the counted positions — the relative squared
    error, scale-free (1.0 = as far as predicting zeros). normalize=False: mean squared error per element.
    Returns a fp32 scalar; the teacher gets no gradient.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    lead = tuple(student.shape[:-1])
    s = _select(student, mask, lead, "mask").float()
    t = _select(teacher.detach(), mask, lead, "mask").float()
    if s.shape[0] == 0:
        return 0.0 * student.float().sum()
    err = (s - t).pow(2).sum()
    if normalize:
        return err / t.pow(2).sum().clamp_min(torch.finfo(torch.float32).tiny)
    return err / s.numel()


def matrix_loss(student_matrix: Tensor, teacher_matrix: Tensor, row_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Frobenius distance between mixing matrices, per head, over the selected rows (query positions).

    student_matrix: (b, h, t, t) materialized SSM mixing matrix; teacher_matrix: (b, h, t, t) softmax
    attention; row_mask: (t,) bool, e.g. ``arange(t) >= P`` (None: all rows).
    Both are upcast to fp32 first (bf16 Frobenius sums overflow or lose precision, as
    reported for phi-mamba: github.com/goombalab/phi-mamba/issues/3).
    Returns ``(loss, relative)``: loss = mean over (b, h) of ``||S_bh - T_bh||_F`` on the selected rows
    (MOHAWK's convention, differentiable); relative = ``||S - T||_F / ||T||_F`` over everything selected,
    detached, the scale-free number to report (0 = exact, 1 = as far as zeros).
    """
    if student_matrix.shape != teacher_matrix.shape or student_matrix.dim() != 4:
        raise ValueError(f"matrix_loss needs two (b, h, t, t) tensors; got {tuple(student_matrix.shape)} and "
                         f"{tuple(teacher_matrix.shape)}")
    t_len = student_matrix.shape[-2]
    s, t = student_matrix.float(), teacher_matrix.detach().float()
    if row_mask is not None:
        if tuple(row_mask.shape) != (t_len,):
            raise ValueError(f"row_mask has shape {tuple(row_mask.shape)}, expected ({t_len},): one flag per row")
        rows = row_mask.to(device=s.device, dtype=torch.bool)
        s, t = s[:, :, rows], t[:, :, rows]
    if s.shape[2] == 0:
        zero = 0.0 * student_matrix.float().sum()
        return zero, zero.detach()
    return frobenius_loss((s - t).pow(2).sum(dim=(-2, -1)), t.pow(2).sum())


def frobenius_loss(diff_sq: Tensor, target_sq: Tensor) -> tuple[Tensor, Tensor]:
    """``matrix_loss`` from its sums, for matrices built in blocks of rows.

    diff_sq: (b, h) ``||S_bh - T_bh||_F^2`` over the selected rows (differentiable); target_sq: scalar
    ``||T||_F^2`` over the same rows. Returns ``(loss, relative)`` as ``matrix_loss`` does.
    """
    nonzero = diff_sq > 0  # sqrt has an infinite slope at 0: give exact matches a zero (sub)gradient instead
    loss = torch.where(nonzero, torch.where(nonzero, diff_sq, 1.0).sqrt(), 0.0).mean()
    with torch.no_grad():
        relative = (diff_sq.sum() / target_sq.clamp_min(torch.finfo(torch.float32).tiny)).sqrt()
    return loss, relative


__all__ = ["HAS_LIGER", "KINDS", "ce_loss", "chunked_ce_loss", "chunked_distill_loss", "distill_loss", "frobenius_loss",
           "fused_distill_loss",
           "hidden_loss", "matrix_loss", "token_divergence"]
