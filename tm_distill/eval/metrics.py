"""Student-vs-teacher metrics on held-out windows: perplexity, forward KL, top-1 agreement, overall and by
position bucket relative to the student's TransPoints, plus per-layer hidden-state error.

Position t is the logit row computed from tokens [0, t]; perplexity at t scores token t + 1. Buckets:
"before" (t < min P: computed exactly as by the teacher), "between" (min P <= t < max finite P: some layers
attend, some scan) and "after" (t >= max finite P: every switching layer runs its SSM). A student with no
finite TransPoint (all attention, or a plain Llama model) has every position in "before".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.configuration import ATTENTION_ONLY
from .hidden import LayerErrorStats, capture_attention_io, mixer_errors

BUCKETS = ("before", "between", "after")


def _exp(x: float) -> float | None:
    """Perplexity from a mean NLL; None where it overflows a float (a broken model)."""
    return math.exp(x) if x < 700 else None


def model_transpoints(model) -> list[int] | None:
    """The model's per-layer TransPoints, or None for a plain (teacher-architecture) model."""
    return list(getattr(model.config, "transpoints", None) or []) or None


def bucket_bounds(transpoints: list[int] | None, seq_len: int) -> dict[str, tuple[int, int]]:
    """Position ranges [start, end) of the three buckets for a window of ``seq_len`` logits."""
    finite = [p for p in (transpoints or []) if p < ATTENTION_ONLY]
    if not finite:
        return {"before": (0, seq_len), "between": (seq_len, seq_len), "after": (seq_len, seq_len)}
    lo, hi = min(min(finite), seq_len), min(max(finite), seq_len)
    return {"before": (0, lo), "between": (lo, hi), "after": (hi, seq_len)}


def token_metrics(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, input_ids: torch.Tensor, chunk: int = 512
) -> dict[str, torch.Tensor]:
    """Per-position metrics of one batch of windows, summed over the batch.

    teacher_logits, student_logits: (batch, seqlen, vocab); input_ids: (batch, seqlen).
    Returns float64 tensors: kl (seqlen,), agree (seqlen,), nll_student / nll_teacher (seqlen - 1,).
    Computed in fp32 in chunks of positions, so (batch, chunk, vocab) is the largest temporary.
    """
    b, t, _ = teacher_logits.shape
    kl = torch.zeros(t, dtype=torch.float64)
    agree = torch.zeros(t, dtype=torch.float64)
    nll_s = torch.zeros(t, dtype=torch.float64)
    nll_t = torch.zeros(t, dtype=torch.float64)
    targets = torch.cat([input_ids[:, 1:], input_ids.new_zeros(b, 1)], dim=1).to(teacher_logits.device)
    for s in range(0, t, chunk):
        e = min(s + chunk, t)
        lt = F.log_softmax(teacher_logits[:, s:e].float(), dim=-1)
        ls = F.log_softmax(student_logits[:, s:e].float(), dim=-1)
        kl[s:e] = (lt.exp() * (lt - ls)).sum(-1).clamp_min(0).sum(0).double().cpu()
        agree[s:e] = (lt.argmax(-1) == ls.argmax(-1)).sum(0).double().cpu()
        tgt = targets[:, s:e, None]
        nll_s[s:e] = -ls.gather(-1, tgt)[..., 0].sum(0).double().cpu()
        nll_t[s:e] = -lt.gather(-1, tgt)[..., 0].sum(0).double().cpu()
    return {"kl": kl, "agree": agree, "nll_student": nll_s[: t - 1], "nll_teacher": nll_t[: t - 1]}


class PositionStats:
    """Sums of per-position metrics over windows for one student; ``summary`` turns them into the report."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.windows = 0
        self.sums = {
            "kl": torch.zeros(seq_len, dtype=torch.float64),
            "agree": torch.zeros(seq_len, dtype=torch.float64),
            "nll_student": torch.zeros(seq_len - 1, dtype=torch.float64),
            "nll_teacher": torch.zeros(seq_len - 1, dtype=torch.float64),
        }

    def add(self, teacher_logits, student_logits, input_ids) -> None:
        """Add a batch: logits (batch, seqlen, vocab), input_ids (batch, seqlen)."""
        for k, v in token_metrics(teacher_logits, student_logits, input_ids).items():
            self.sums[k] += v
        self.windows += input_ids.shape[0]

    def _range(self, start: int, end: int) -> dict:
        n_pos = max(end - start, 0)
        n_ppl = max(min(end, self.seq_len - 1) - start, 0)  # the last position has no next token
        if n_pos == 0 or self.windows == 0:
            return {"positions": [start, end], "tokens": 0, "perplexity": None, "teacher_perplexity": None,
                    "kl_to_teacher": None, "top1_agreement": None}
        w = self.windows
        out = {
            "positions": [start, end],
            "tokens": n_pos * w,
            "kl_to_teacher": float(self.sums["kl"][start:end].sum() / (n_pos * w)),
            "top1_agreement": float(self.sums["agree"][start:end].sum() / (n_pos * w)),
            "perplexity": None,
            "teacher_perplexity": None,
        }
        if n_ppl > 0:
            end_ppl = start + n_ppl
            out["perplexity"] = _exp(float(self.sums["nll_student"][start:end_ppl].sum() / (n_ppl * w)))
            out["teacher_perplexity"] = _exp(float(self.sums["nll_teacher"][start:end_ppl].sum() / (n_ppl * w)))
        return out

    def summary(self, transpoints: list[int] | None) -> dict:
        """Overall and per-bucket metrics, plus the per-position curves (means over windows) for plots."""
        overall = self._range(0, self.seq_len)
        bounds = bucket_bounds(transpoints, self.seq_len)
        w = max(self.windows, 1)
        return {
            "perplexity": overall["perplexity"],
            "teacher_perplexity": overall["teacher_perplexity"],
            "kl_to_teacher": overall["kl_to_teacher"],
            "top1_agreement": overall["top1_agreement"],
            "tokens": overall["tokens"],
            "by_position": {name: self._range(*bounds[name]) for name in BUCKETS},
            "by_token": {
                "kl_to_teacher": [round(float(x), 6) for x in self.sums["kl"] / w],
                "top1_agreement": [round(float(x), 6) for x in self.sums["agree"] / w],
            },
        }


@torch.no_grad()
def compare_models(
    teacher: torch.nn.Module,
    students: dict[str, torch.nn.Module],
    windows: torch.Tensor,
    batch_size: int = 1,
    layer_error: bool = True,
    progress: bool = True,
) -> dict[str, dict]:
    """Evaluate each student against the teacher on held-out windows.

    teacher: a causal LM (eval mode); students: name -> causal LM on the same device and vocabulary (a
    TransMamba student, or any HF causal LM, e.g. the teacher itself); windows: (n, seqlen) token ids.
    Returns name -> ``PositionStats.summary`` (+ ``layer_error`` for TransMamba students) and the key
    "teacher" with the teacher's own perplexity (kl 0, agreement 1 by definition).
    """
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n, seqlen >= 2) token ids, got shape {tuple(windows.shape)}")
    device = next(teacher.parameters()).device
    seq_len = windows.shape[1]
    stats = {name: PositionStats(seq_len) for name in students}
    self_stats = PositionStats(seq_len)
    errors = {name: LayerErrorStats(teacher.config.num_hidden_layers) for name in students}
    batches = list(windows.split(batch_size))
    bar = tqdm(total=len(batches) * (1 + len(students)), desc="held-out metrics", disable=not progress, leave=False)
    for ids in batches:
        ids = ids.to(device)
        with capture_attention_io(teacher, enabled=layer_error) as io:
            t_logits = teacher(input_ids=ids).logits
        self_stats.add(t_logits, t_logits, ids)
        bar.update(1)
        for name, student in students.items():
            s_logits = student(input_ids=ids).logits
            stats[name].add(t_logits, s_logits, ids)
            if layer_error and hasattr(student, "model") and hasattr(student.model.layers[0], "mixer"):
                errors[name].add(mixer_errors(student, io))
            bar.update(1)
    bar.close()
    out = {"teacher": self_stats.summary(None)}
    for name, student in students.items():
        summary = stats[name].summary(model_transpoints(student))
        summary["layer_error"] = errors[name].summary() if errors[name].count else None
        out[name] = summary
    return out


__all__ = ["BUCKETS", "PositionStats", "bucket_bounds", "compare_models", "model_transpoints", "token_metrics"]
