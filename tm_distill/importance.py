"""``auto:...,method=importance`` TransPoints: layers chosen by measured importance after a brief distillation.

After KL-guided layer selection (restore one layer to softmax attention in a briefly distilled all-SSM student and
rank layers by the KL drop) and HALO (rank by the drop in recall), extended to TransPoints:

1. Seed every layer as a pure SSM (P = 0), calibrate it in closed form (``convert.calibrate``) and distill it
   briefly: forward KL to the teacher on training windows, SSM parameters only (the shared q/k/v/o stay the
   teacher's, so a layer given back its attention computes the teacher's), ``train_steps`` steps or
   ``train_seconds``, whichever ends first.
2. Measure, for every layer l and candidate TransPoint P (fractions of the window, and attention only) with every
   other layer at P = 0: the KL(teacher || student) per token on held-back training windows, and the student's
   negative log-likelihood of the answers of synthetic recall sequences (``data.recall``, retrieval across the
   window). A layer's value at P is its drop of each from the all-SSM base, relative to the base: gain = KL drop
   / base KL + ``recall_weight`` x recall drop / base recall NLL.
3. Choose under the KV budget at ``context`` (a layer at P keeps min(P, context) tokens of KV) the P of every
   layer that maximizes the summed gain (an exact knapsack over the layers). Gains are assumed to add up (the
   first-order model both papers use). Every layer at one TransPoint is never chosen.

Everything is seeded (SSM init, windows, recall sequences, data order), so the plan is reproducible from the seed
on a given device.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .convert.seed import seed_student
from .convert.transpoints import AutoSpecError, describe_transpoints
from .data.tokens import TokenDataError
from .models.configuration import ATTENTION_ONLY
from .models.modeling import use_transpoints

log = logging.getLogger(__name__)

FRACTIONS: tuple[float, ...] = (0.03125, 0.0625, 0.125, 0.25, 0.5)  # candidate P / context; plus attention only


@dataclass
class Probe:
    """What the layers are measured on: (n, t) KL windows and recall sequences with their answer spans."""

    train: Tensor  # (n_train, t) token windows the all-SSM student is distilled on
    kl: Tensor  # (n_kl, t) windows the KL is measured on (not trained on)
    recall: Tensor  # (n_recall, t) recall sequences
    answers: Tensor  # (n_recall, t) bool: the answer tokens (the positions whose NLL is measured)


def build_probe(tokenizer, windows: Tensor, *, recall: int = 8, kl_windows: int = 4, seed: int = 0) -> Probe:
    """Split training ``windows`` (n, t) into distillation and KL windows; recall sequences in their text."""
    from .data.recall import recall_windows  # noqa: PLC0415

    n, t = windows.shape
    if n < 2:
        raise TokenDataError(f"importance planning needs at least 2 training windows of {t} tokens, got {n}")
    kl_windows = min(kl_windows, n // 2)
    filler = windows[:kl_windows].reshape(-1)  # recall filler: text the student is not distilled on
    if tokenizer.eos_token_id is not None:
        filler = filler[filler != tokenizer.eos_token_id]
    rows = recall_windows(tokenizer, filler.tolist() * (1 + t // max(1, filler.numel())), t, recall, seed=seed)
    answers = torch.zeros(recall, t, dtype=torch.bool)
    for i, r in enumerate(rows):
        for a, b in r.answer_spans:
            answers[i, a - 1 : b - 1] = True  # position p predicts token p + 1
    return Probe(windows[kl_windows:], windows[:kl_windows], torch.tensor([r.input_ids for r in rows]), answers)


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def distill_briefly(student, teacher, windows: Tensor, *, steps: int, seconds: float | None, lr: float = 1e-3,
                    batch_size: int = 4, seed: int = 0, progress: bool = True) -> dict:
    """Forward-KL distillation of ``student``'s SSM parameters on ``windows``; returns {"steps", "seconds", "loss"}."""
    from .losses import chunked_distill_loss  # noqa: PLC0415
    from .stages.base import freeze_except, select_parameters  # noqa: PLC0415

    device = next(student.parameters()).device
    params = [p for _, p in freeze_except(student, select_parameters(student, "ssm"))]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    student.train()
    start, done, loss = time.perf_counter(), 0, float("nan")
    bar = tqdm(total=steps, desc="importance: brief distillation", disable=not progress, leave=False)
    while done < steps and (seconds is None or time.perf_counter() - start < seconds):
        rows = windows[torch.randint(len(windows), (min(batch_size, len(windows)),), generator=g)].to(device)
        with _autocast(device):
            with torch.no_grad():
                t_hidden = teacher.model.model(input_ids=rows).last_hidden_state
            s_hidden = student.model(input_ids=rows).last_hidden_state
            value = chunked_distill_loss(s_hidden, t_hidden, student.lm_head, teacher.model.lm_head)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done, loss = done + 1, value.item()
        bar.update(1)
        bar.set_postfix(kl=f"{loss:.3f}")
    bar.close()
    student.eval().requires_grad_(False)
    return {"steps": done, "seconds": round(time.perf_counter() - start, 2), "loss": loss}


def _answer_nll(model, probe: Probe, batch_size: int = 4) -> float:
    """NLL per answer token of probe.recall under ``model`` (a causal LM with .model and .lm_head): the
    vocabulary projection only at the positions that predict an answer token."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for rows, mask in zip(probe.recall.split(batch_size), probe.answers.split(batch_size)):
        rows, mask = rows.to(device), mask.to(device)[:, :-1]
        hidden = model.model(input_ids=rows).last_hidden_state[:, :-1][mask]
        logp = F.log_softmax(model.lm_head(hidden).float(), -1)
        total += float(-logp.gather(-1, rows[:, 1:][mask][:, None]).sum())
        count += int(mask.sum())
    return total / max(count, 1)


@torch.no_grad()
def measure(student, teacher, probe: Probe, transpoints: list[int], teacher_logp: list[Tensor],
            batch_size: int = 4) -> tuple[float, float]:
    """(KL(teacher || student) per token on probe.kl, student NLL per answer token on probe.recall)."""
    device = next(student.parameters()).device
    kl_sum, kl_n = 0.0, 0
    with use_transpoints(student, transpoints), _autocast(device):
        for rows, t_logp in zip(probe.kl.split(batch_size), teacher_logp):
            logp = F.log_softmax(student(input_ids=rows.to(device)).logits.float(), -1)
            kl_sum += float(F.kl_div(logp, t_logp, reduction="sum", log_target=True))
            kl_n += rows.numel()
        nll = _answer_nll(student, probe, batch_size)
    return kl_sum / max(kl_n, 1), nll


@dataclass
class ImportancePlan:
    transpoints: list[int]
    context: int
    kv_budget: float
    window: int  # tokens per measurement window
    candidates: list[int]  # P at the window (ATTENTION_ONLY last)
    base: tuple[float, float]  # (KL, recall NLL) of the all-SSM student
    teacher_recall_nll: float
    kl: Tensor  # (L, C) KL with layer l at candidate c
    recall: Tensor  # (L, C) recall NLL
    recall_weight: float
    training: dict = field(default_factory=dict)
    seed: int = 0

    def gains(self) -> Tensor:
        base_kl, base_nll = self.base
        return (base_kl - self.kl) / max(base_kl, 1e-9) + self.recall_weight * (base_nll - self.recall) / max(
            base_nll, 1e-9)

    def at_context(self, c: int) -> int:
        p = self.candidates[c]
        return ATTENTION_ONLY if p >= ATTENTION_ONLY else round(p * self.context / self.window)

    @property
    def spec(self) -> str:
        return describe_transpoints(self.transpoints)

    def explain(self) -> str:
        """The rankings, each layer's measured drops and choice with its reason, and the spec to paste."""
        names = ["attn" if p >= ATTENTION_ONLY else str(self.at_context(c)) for c, p in enumerate(self.candidates)]
        attn = len(self.candidates) - 1
        kl_drop, rc_drop = self.base[0] - self.kl[:, attn], self.base[1] - self.recall[:, attn]
        by_kl, by_recall = _ranks(kl_drop), _ranks(rc_drop)
        gains = self.gains()
        head = (f"importance plan: kv_budget={self.kv_budget:.1%} of the teacher's KV at context {self.context} "
                f"(measured on {self.window}-token windows, seed {self.seed})")
        lines = [head, f"brief distillation of the all-SSM student (SSM parameters only): {self.training}",
                 f"all-SSM student: KL {self.base[0]:.4f} nats/token, recall NLL {self.base[1]:.3f} per answer "
                 f"token (teacher {self.teacher_recall_nll:.3f})",
                 "gain of a layer at P = KL drop / base KL + "
                 f"{self.recall_weight:g} x recall drop / base recall NLL (every other layer at P = 0)", "",
                 f"{'layer':>5} {'KL drop':>9} {'rank':>4} {'recall drop':>11} {'rank':>4} "
                 + "".join(f"{'gain@' + n:>12}" for n in names) + f"{'chosen':>8}  why"]
        for layer, point in enumerate(self.transpoints):
            cells = "".join(f"{float(gains[layer, c]):>12.3f}" for c in range(len(names)))
            lines.append(f"{layer:>5} {float(kl_drop[layer]):>9.4f} {by_kl[layer]:>4} {float(rc_drop[layer]):>11.3f} "
                         f"{by_recall[layer]:>4} {cells}{_name(point):>8}  {self._why(layer, point, by_kl, by_recall)}")
        kept = sum(min(p, self.context) for p in self.transpoints)
        lines += ["", f"KV at {self.context} tokens: {kept / (len(self.transpoints) * self.context):.1%} of the "
                      f"teacher's (budget {self.kv_budget:.1%}); each switching layer adds one SSM state",
                  "spec (paste into a recipe's transpoints or --transpoints):", self.spec]
        return "\n".join(lines)

    def _why(self, layer: int, point: int, by_kl: list[int], by_recall: list[int]) -> str:
        ranks = f"#{by_kl[layer]} by KL drop, #{by_recall[layer]} by recall drop"
        if point >= ATTENTION_ONLY:
            return f"keeps attention: {ranks}"
        if point == 0:
            return f"pure SSM: the budget buys more gain elsewhere ({ranks})"
        return f"attention for its first {point} tokens: its best gain within the budget ({ranks})"


def _name(point: int) -> str:
    return "attn" if point >= ATTENTION_ONLY else str(point)


def _ranks(values: Tensor) -> list[int]:
    """1-based rank of each entry, largest first."""
    order = torch.argsort(values, descending=True, stable=True).tolist()
    ranks = [0] * len(order)
    for r, i in enumerate(order):
        ranks[i] = r + 1
    return ranks


def choose(gains: Tensor, points: Sequence[int], context: int, kv_budget: float) -> list[int]:
    """Per-layer TransPoints (each layer at points[c] or 0) maximizing the summed gain under the KV budget.

    gains: (L, C) for layer l at points[c] (ATTENTION_ONLY allowed); P = 0 has gain 0 and no KV. An exact
    multiple-choice knapsack (dynamic programming over the layers; a state is the KV used, in units of the
    candidates' common divisor, layer 0's choice and whether every layer so far made it), so the design rule
    holds in the optimum itself: never every layer at one TransPoint (all attention aside). Of equal gains the
    schedule with less KV wins.
    """
    num_layers = gains.shape[0]
    costs = [0] + [min(p, context) for p in points]  # option 0 is P = 0
    values = torch.cat([torch.zeros(num_layers, 1), gains.float().cpu()], 1).tolist()
    unit = math.gcd(*costs) or 1
    capacity = int(kv_budget * num_layers * context + 1e-9) // unit
    units = [c // unit for c in costs]
    # (units used, layer 0's option, all layers so far at it) -> (gain, -kv, options picked)
    states = {(units[o], o, True): (values[0][o], -costs[o], (o,)) for o in range(len(costs)) if units[o] <= capacity}
    for layer in range(1, num_layers):
        nxt: dict = {}
        for (u, first, same), (g, neg_kv, picks) in states.items():
            for o, k in enumerate(units):
                if u + k > capacity or (o and values[layer][o] <= 0):
                    continue
                key = (u + k, first, same and o == first)
                cand = (g + values[layer][o], neg_kv - costs[o], picks + (o,))
                if key not in nxt or (round(cand[0], 12), cand[1]) > (round(nxt[key][0], 12), nxt[key][1]):
                    nxt[key] = cand
        states = nxt
    attn = len(costs) - 1 if points[-1] >= ATTENTION_ONLY else None
    allowed = [v for (u, first, same), v in states.items() if not same or first == attn or num_layers == 1]
    if not allowed:
        raise AutoSpecError(f"kv_budget={kv_budget:.2%} at context {context} allows no schedule but one TransPoint "
                            "for every layer, which is never chosen: raise the budget")
    best = max(allowed, key=lambda v: (round(v[0], 12), v[1]))
    return [0 if o == 0 else points[o - 1] for o in best[2]]


# 58 lines: the four steps of the method in order.
def plan_by_importance(
    teacher, windows: Tensor, context: int, kv_budget: float, *, seed: int = 0, train_steps: int = 200,
    train_seconds: float | None = 45.0, recall_weight: float = 1.0, fractions: Sequence[float] = FRACTIONS,
    recall_sequences: int = 8, kl_windows: int = 4, progress: bool = True, **ssm_options,
) -> ImportancePlan:
    """Distill briefly, measure every layer at every candidate, choose (the module docstring's three steps).

    teacher: a ``convert.teacher.Teacher`` (on its device); windows: (n, t) training windows (never held-out
    ones); recall_sequences, kl_windows: the probe's size. Returns the plan; ``plan.transpoints`` holds P at
    ``context``.
    """
    from .convert.calibrate import calibrate_student  # noqa: PLC0415

    torch.manual_seed(seed)
    model = teacher.model
    num_layers, (_, t) = model.config.num_hidden_layers, windows.shape
    probe = build_probe(teacher.tokenizer, windows, recall=recall_sequences, kl_windows=kl_windows, seed=seed)
    student = seed_student(model, [0] * num_layers, "importance", seed=seed, dtype=torch.float32, **ssm_options)
    student = student.to(next(model.parameters()).device).eval()
    calibrate_student(student, model, probe.train[: max(1, math.ceil(4096 / t))])
    training = distill_briefly(student, teacher, probe.train, steps=train_steps, seconds=train_seconds, seed=seed,
                               progress=progress)
    device = next(student.parameters()).device
    with torch.no_grad(), _autocast(device):
        t_logp = [F.log_softmax(model(input_ids=r.to(device)).logits.float(), -1) for r in probe.kl.split(4)]
    teacher_nll = _teacher_recall_nll(model, probe)
    candidates = sorted({max(1, round(f * t)) for f in fractions if round(f * t) < t}) + [ATTENTION_ONLY]
    base = measure(student, teacher, probe, [0] * num_layers, t_logp)
    kl = torch.zeros(num_layers, len(candidates))
    recall = torch.zeros_like(kl)
    bar = tqdm(total=num_layers * len(candidates), desc="importance: layers x TransPoints", disable=not progress)
    for layer in range(num_layers):
        for c, p in enumerate(candidates):
            schedule = [0] * num_layers
            schedule[layer] = p
            kl[layer, c], recall[layer, c] = measure(student, teacher, probe, schedule, t_logp)
            bar.update(1)
    bar.close()
    plan = ImportancePlan([], context, kv_budget, t, candidates, base, teacher_nll, kl, recall, recall_weight,
                          training, seed)
    points = [plan.at_context(c) for c in range(len(candidates))]
    plan.transpoints = choose(plan.gains(), points, context, kv_budget)
    return plan


@torch.no_grad()
def _teacher_recall_nll(model, probe: Probe) -> float:
    with _autocast(next(model.parameters()).device):
        return _answer_nll(model, probe)


__all__ = ["FRACTIONS", "ImportancePlan", "Probe", "build_probe", "choose", "distill_briefly", "measure",
           "plan_by_importance"]
