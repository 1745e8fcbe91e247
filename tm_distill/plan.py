"""`auto` TransPoints: per-layer schedules chosen from calibration data to meet a KV-cache budget.

1. Sensitivity: on a few windows of real text, for each layer l and candidate P (a fraction of the window:
   0, t/8, t/4, t/2), the KL(teacher || student) per token when ONLY layer l switches to its (seeded) SSM at P
   and every other layer stays attention. Layers before l are exact, so each measurement starts from the
   teacher's residual stream at layer l and runs layers l.. only.
2. Choice: every layer starts as attention (keeps ``context`` tokens of KV); a greedy loop moves the layer
   with the smallest sensitivity increase per KV token saved to a lower TransPoint until the student's KV
   cache at ``context`` tokens (a layer at P keeps min(P, context) tokens) is within the budget, then moves
   layers back up where the budget still holds. Sensitivities are assumed to add up (a first-order model).
   A candidate fraction f measured on t-token windows becomes P = f * context.
   All layers at one TransPoint is never chosen (design rule: the paper's single-P schedules trained worst).

Spec grammar: ``auto:kv_budget=25%[,context=8192][,method=importance[,recall=1]]`` (budget as a percentage, or
a fraction in (0, 1]). ``method=importance`` plans from a briefly distilled student instead (``importance.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .convert.seed import seed_student
from .convert.transpoints import AutoSpecError, describe_transpoints, is_auto_spec, parse_transpoints
from .data.tokens import TokenDataError
from .data.windows import Documents, spread
from .models.capture import record_activations
from .models.configuration import ATTENTION_ONLY
from .models.modeling import use_transpoints

log = logging.getLogger(__name__)

CANDIDATE_FRACTIONS: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5)
AUTO_KEYS = ("kv_budget", "context", "method", "recall")
METHODS = ("sensitivity", "importance")
# `tm-distill plan`'s calibration defaults, which `convert --transpoints auto:...` uses too (one schedule for both).
PLAN_SEQ_LEN = 128
PLAN_WINDOWS = 2


@dataclass(frozen=True)
class AutoSpec:
    kv_budget: float  # fraction of the teacher's KV cache, in (0, 1]
    context: int | None = None  # tokens at which the budget holds (None: the caller's seq_len)
    method: str = "sensitivity"  # sensitivity: seeded layers, one at a time; importance: see importance.py
    recall: float = 1.0  # importance: weight of the recall drop beside the KL drop


def parse_auto_spec(spec: str) -> AutoSpec:
    """``auto:kv_budget=25%,context=8192`` -> AutoSpec; raises AutoSpecError naming the bad part."""
    text = spec.strip()
    head, sep, body = text.partition(":")
    if head.strip() != "auto":
        raise AutoSpecError(f"spec {spec!r} is not an auto spec; write auto:kv_budget=25%")
    if not sep or not body.strip():
        raise AutoSpecError(f"spec {spec!r} needs a budget, e.g. auto:kv_budget=25% (or auto:kv_budget=25%,context=8192)")
    values: dict[str, str] = {}
    for part in body.split(","):
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not key or not value:
            raise AutoSpecError(f"part {part.strip()!r} of spec {spec!r} is not key=value (e.g. kv_budget=25%)")
        if key not in AUTO_KEYS:
            raise AutoSpecError(f"unknown key {key!r} in spec {spec!r}: valid keys are {', '.join(AUTO_KEYS)}")
        if key in values:
            raise AutoSpecError(f"key {key!r} is given twice in spec {spec!r}")
        values[key] = value
    if "kv_budget" not in values:
        raise AutoSpecError(f"spec {spec!r} has no kv_budget: add e.g. kv_budget=25%")
    raw = values["kv_budget"]
    try:
        budget = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise AutoSpecError(f"kv_budget={raw!r} in spec {spec!r} is not a number: write e.g. 25% or 0.25") from None
    if not 0.0 < budget <= 1.0 or math.isnan(budget):
        raise AutoSpecError(f"kv_budget={raw} in spec {spec!r} is outside (0, 100%]: it is the share of the "
                            "teacher's KV cache the student may keep, e.g. 25%")
    method = values.get("method", "sensitivity")
    if method not in METHODS:
        raise AutoSpecError(f"method={method!r} in spec {spec!r} is unknown: choose {' or '.join(METHODS)}")
    try:
        recall = float(values.get("recall", 1.0))
    except ValueError:
        raise AutoSpecError(f"recall={values['recall']!r} in spec {spec!r} is not a number (the recall weight, "
                            "e.g. 1)") from None
    if not recall >= 0 or math.isinf(recall):
        raise AutoSpecError(f"recall={values['recall']} in spec {spec!r} must be a finite number >= 0")
    if "recall" in values and method != "importance":
        raise AutoSpecError(f"recall= in spec {spec!r} weighs the importance method's recall drop: add "
                            "method=importance or drop it")
    context = None
    if "context" in values:
        try:
            context = int(values["context"])
        except ValueError:
            raise AutoSpecError(f"context={values['context']!r} in spec {spec!r} is not an integer") from None
        if context < 1:
            raise AutoSpecError(f"context={context} in spec {spec!r} must be >= 1 token")
    return AutoSpec(kv_budget=budget, context=context, method=method, recall=recall)


def _documents(texts, tokenizer, seed: int = 0) -> Documents:
    """``texts`` as ``Documents``: those given (their training split), or plain documents, all of them training."""
    return texts if isinstance(texts, Documents) else Documents(list(texts), tokenizer, 0.0, seed)


def calibration_windows(texts: Sequence[str] | Documents, tokenizer, seq_len: int, windows: int) -> Tensor:
    """(k, seq_len) token windows, k <= windows, spread evenly over the packed training windows of ``texts``.

    texts: documents (all of them may be used) or ``Documents`` (their training split only). The windows are
    ``Documents.windows``' training windows, first to last, as calibration picks them.
    Raises TokenDataError when the text holds not even one window.
    """
    if seq_len < 2 or windows < 1:
        raise TokenDataError(f"calibration needs seq_len >= 2 and windows >= 1, got seq_len={seq_len}, windows={windows}")
    docs = _documents(texts, tokenizer)
    if not any(t.strip() for t in docs.texts):
        raise TokenDataError("calibration texts are empty: give real text (e.g. the shakespeare corpus)")
    try:
        train = docs.windows(seq_len).train
    except TokenDataError:
        raise TokenDataError(f"calibration texts hold no window of {seq_len} tokens: give longer texts or a "
                             "smaller --seq-len") from None
    if len(train) < windows:
        log.warning("calibration: only %d of %d windows of %d tokens", len(train), windows, seq_len)
    return spread(train, windows)


def candidate_points(seq_len: int, fractions: Sequence[float] = CANDIDATE_FRACTIONS) -> list[int]:
    return [int(f * seq_len) for f in fractions]


@torch.no_grad()
def measure_sensitivity(
    teacher_model, windows: Tensor, fractions: Sequence[float] = CANDIDATE_FRACTIONS, *, seed: int = 0,
    max_batch_tokens: int = 2048, kl_stride: int = 2, progress: bool = True, **ssm_options,
) -> Tensor:
    """KL(teacher || student) in nats per token, (num_layers, len(fractions)).

    windows: (k, t) token ids. Entry [l, c] switches only layer l to the seeded SSM at P = fractions[c] * t.
    The KL is averaged over positions 0, kl_stride, 2 kl_stride, ... of every window (positions before P count
    as 0: they are exact); a stride > 1 cuts the vocabulary-sized work, the largest cost after the layers.
    Runs where the teacher is; windows are processed in micro-batches of at most ``max_batch_tokens`` tokens.
    """
    if kl_stride < 1:
        raise ValueError(f"kl_stride={kl_stride} must be >= 1 (1 = every position)")
    device = next(teacher_model.parameters()).device
    num_layers = teacher_model.config.num_hidden_layers
    k, t = windows.shape
    points = candidate_points(t, fractions)
    student = seed_student(teacher_model, [ATTENTION_ONLY] * num_layers, seed=seed, **ssm_options).eval()
    totals = torch.zeros(num_layers, len(points), dtype=torch.float64)
    mb = max(1, max_batch_tokens // t)
    grid = torch.arange(0, t, kl_stride, device=device)  # the positions the KL averages over
    bar = tqdm(total=num_layers * len(points) * math.ceil(k / mb), desc="layer sensitivity", disable=not progress)
    for lo in range(0, k, mb):
        ids = windows[lo:lo + mb].to(device)
        with record_activations(teacher_model, range(num_layers), attention=False, residual=True) as acts:
            hidden = teacher_model.model(input_ids=ids, use_cache=False).last_hidden_state[:, grid]
            teacher_logp = F.log_softmax(teacher_model.lm_head(hidden).float(), dim=-1)
        positions = torch.arange(t, device=device).unsqueeze(0)
        pe = student.model.rotary_emb(acts.residuals[0], position_ids=positions)
        for layer in range(num_layers):
            for c, point in enumerate(points):
                schedule = [ATTENTION_ONLY] * num_layers
                schedule[layer] = point
                with use_transpoints(student, schedule):
                    hidden = acts.residuals[layer].to(next(student.parameters()).dtype)
                    for block in student.model.layers[layer:]:
                        hidden = block(hidden, pe)
                counted = grid >= point  # earlier positions are exact: KL 0
                hidden = student.model.norm(hidden[:, grid[counted]])
                logp = F.log_softmax(student.lm_head(hidden).float(), dim=-1)
                kl = F.kl_div(logp, teacher_logp[:, counted], reduction="sum", log_target=True)
                totals[layer, c] += float(kl)
                bar.update(1)
    bar.close()
    return (totals / (k * len(grid))).float()


def _kv(point: int, context: int) -> int:
    return min(point, context)


def _percent(fraction: float, digits: int = 1) -> str:
    """0.25 -> '25.0%', 1e-5 -> '0.001%': a small non-zero budget keeps its significant digits, never '0.0%'."""
    value = fraction * 100
    if 0 < abs(value) < 10 ** -digits:
        return f"{value:.2g}%"
    return f"{value:.{digits}f}%"


def _smallest_kv(num_layers: int, context: int, fractions: Sequence[float]) -> int:
    """KV tokens of the cheapest schedule the design allows: every layer at P = 0 but one at the smallest
    positive candidate (all layers at one TransPoint is never chosen)."""
    if num_layers == 1:
        return 0
    positive = [int(f * context) for f in fractions if 0 < int(f * context) < context]
    return _kv(min(positive), context) if positive else context


def check_budget(kv_budget: float, num_layers: int, context: int,
                 fractions: Sequence[float] = CANDIDATE_FRACTIONS) -> None:
    """Raise AutoSpecError when no allowed schedule keeps ``kv_budget`` of the KV cache (no calibration needed)."""
    floor = _smallest_kv(num_layers, context, fractions)
    if kv_budget * num_layers * context + 1e-9 < floor:
        raise AutoSpecError(
            f"kv_budget={_percent(kv_budget)} cannot be met at context {context} with {num_layers} layers without "
            f"switching every layer at one TransPoint (the design forbids it); the smallest reachable budget is "
            f"{_percent(floor / (num_layers * context), 2)}"
        )


# 62 lines: one greedy pass over the layers that reads best whole; the body is 54 lines.
def choose_transpoints(
    sensitivity: Tensor, fractions: Sequence[float], context: int, kv_budget: float,
) -> list[int]:
    """Greedy per-layer TransPoints meeting ``sum_l min(P_l, context) <= kv_budget * L * context``.

    sensitivity: (L, len(fractions)), the cost of layer l at P = fractions[c] * context (attention costs 0).
    Never returns every layer at one TransPoint (other than all attention, which needs kv_budget = 100%).
    """
    num_layers = sensitivity.shape[0]
    options: list[list[tuple[int, float]]] = []  # per layer: (P, cost), attention first
    for layer in range(num_layers):
        opts = {ATTENTION_ONLY: 0.0}
        for c, f in enumerate(fractions):
            point = int(f * context)
            if point < context and point not in opts:
                opts[point] = float(sensitivity[layer, c])
        options.append(sorted(opts.items(), key=lambda o: -o[0]))
    budget = kv_budget * num_layers * context
    current = [0] * num_layers  # option index per layer

    def points_with(layer: int, option: int) -> list[int]:
        pts = [options[i][current[i]][0] for i in range(num_layers)]
        pts[layer] = options[layer][option][0]
        return pts

    def allowed(pts: list[int]) -> bool:
        return num_layers == 1 or len(set(pts)) > 1 or pts[0] == ATTENTION_ONLY

    def kv_total(pts: list[int]) -> int:
        return sum(_kv(p, context) for p in pts)

    while kv_total(points_with(0, current[0])) > budget + 1e-9:
        best = None
        for layer in range(num_layers):
            p_cur, s_cur = options[layer][current[layer]]
            for o in range(current[layer] + 1, len(options[layer])):
                p_new, s_new = options[layer][o]
                saved = _kv(p_cur, context) - _kv(p_new, context)
                if saved <= 0 or not allowed(points_with(layer, o)):
                    continue
                key = ((s_new - s_cur) / saved, -saved, layer)
                if best is None or key < best[0]:
                    best = (key, layer, o)
        if best is None:
            check_budget(kv_budget, num_layers, context, fractions)  # raises: the greedy reaches the floor
            raise AutoSpecError(f"kv_budget={_percent(kv_budget)} at context {context}: no schedule found")
        current[best[1]] = best[2]
    improved = True
    while improved:  # give back KV where the budget still holds and the cost drops
        improved = False
        best = None
        for layer in range(num_layers):
            s_cur = options[layer][current[layer]][1]
            for o in range(current[layer]):
                pts = points_with(layer, o)
                gain = s_cur - options[layer][o][1]
                if gain > 0 and kv_total(pts) <= budget + 1e-9 and allowed(pts) and (best is None or gain > best[0]):
                    best = (gain, layer, o)
        if best is not None:
            current[best[1]] = best[2]
            improved = True
    return [options[i][current[i]][0] for i in range(num_layers)]


@dataclass
class AutoPlan:
    """The chosen schedule and what it was chosen from."""

    transpoints: list[int]
    sensitivity: Tensor  # (L, len(fractions)) nats per token
    fractions: tuple[float, ...]
    context: int
    kv_budget: float
    calib_windows: int
    calib_len: int
    kv_bytes_per_token_layer: int

    @property
    def kv_fraction(self) -> float:
        return sum(_kv(p, self.context) for p in self.transpoints) / (len(self.transpoints) * self.context)

    @property
    def predicted_kl(self) -> float:
        cost = 0.0
        for layer, point in enumerate(self.transpoints):
            for c, f in enumerate(self.fractions):
                if point != ATTENTION_ONLY and int(f * self.context) == point:
                    cost += float(self.sensitivity[layer, c])
                    break
        return cost

    @property
    def spec(self) -> str:
        return describe_transpoints(self.transpoints)

    def explain(self) -> str:
        """A readable table (layer, sensitivity per candidate, chosen P, KV kept) and the spec to paste."""
        ctx, num_layers = self.context, len(self.transpoints)
        points = [int(f * ctx) for f in self.fractions]
        heads = [f"P={p}" for p in points]
        lines = [
            f"auto TransPoints: kv_budget={_percent(self.kv_budget)} at context {ctx} tokens",
            f"sensitivity = KL(teacher || student), nats/token, when ONLY that layer switches to its seeded SSM at P "
            f"(measured on {self.calib_windows} windows x {self.calib_len} tokens at the same fraction of the "
            "window; all other layers attention); * marks the choice",
            "",
            "layer " + "".join(f"{h:>12}" for h in heads) + f"{'chosen P':>12}{'KV kept':>16}",
        ]
        for layer, point in enumerate(self.transpoints):
            cells = []
            for c, p in enumerate(points):
                mark = "*" if p == point else " "
                cells.append(f"{float(self.sensitivity[layer, c]):>11.4f}{mark}")
            kept = _kv(point, ctx)
            chosen = "attn" if point >= ATTENTION_ONLY else str(point)
            lines.append(f"{layer:>5} " + "".join(cells) + f"{chosen:>12}{kept:>9} ({kept / ctx:>4.0%})")
        mib = self.kv_bytes_per_token_layer / 2**20
        kept_tokens = sum(_kv(p, ctx) for p in self.transpoints)
        lines += [
            "",
            f"KV cache at {ctx} tokens: {kept_tokens * mib:.1f} MiB of the teacher's {num_layers * ctx * mib:.1f} MiB "
            f"= {_percent(self.kv_fraction)} (budget {_percent(self.kv_budget)}); each switching layer adds one SSM "
            "state",
            f"predicted KL before training (sum of chosen sensitivities): {self.predicted_kl:.4f} nats/token",
            "spec (paste into a recipe's transpoints or --transpoints):",
            self.spec,
        ]
        return "\n".join(lines)


def plan_transpoints(
    spec: str, teacher_model, tokenizer, texts: Sequence[str] | Documents, seq_len: int, *, windows: int = 2,
    fractions: Sequence[float] = CANDIDATE_FRACTIONS, seed: int = 0, device=None, progress: bool = True,
) -> AutoPlan:
    """Measure the layers' sensitivity on ``windows`` windows of ``seq_len`` tokens of ``texts``
    (``calibration_windows``) and choose the schedule."""
    auto = parse_auto_spec(spec)
    context = auto.context or seq_len
    limit = getattr(teacher_model.config, "max_position_embeddings", None)
    if limit and context > limit:
        log.warning("context %d is longer than the teacher's max_position_embeddings %d", context, limit)
    check_budget(auto.kv_budget, teacher_model.config.num_hidden_layers, context, fractions)  # before calibrating
    original = next(teacher_model.parameters()).device
    if device is not None and torch.device(device) != original:
        teacher_model.to(device)
    try:
        ids = calibration_windows(texts, tokenizer, seq_len, windows)
        sensitivity = measure_sensitivity(teacher_model, ids, fractions, seed=seed, progress=progress)
    finally:
        if next(teacher_model.parameters()).device != original:
            teacher_model.to(original)
    transpoints = choose_transpoints(sensitivity, fractions, context, auto.kv_budget)
    cfg = teacher_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = torch.finfo(next(teacher_model.parameters()).dtype).bits // 8
    return AutoPlan(
        transpoints=transpoints, sensitivity=sensitivity, fractions=tuple(fractions), context=context,
        kv_budget=auto.kv_budget, calib_windows=ids.shape[0], calib_len=seq_len,
        kv_bytes_per_token_layer=2 * cfg.num_key_value_heads * head_dim * elem,
    )


def resolve_auto(
    spec: str, teacher_model, tokenizer, texts: Sequence[str] | Documents, seq_len: int, *, device=None,
    windows: int = 2, seed: int = 0, max_calib_len: int = 1024, importance: dict | None = None,
) -> tuple[list[int], str]:
    """Resolve an ``auto:...`` spec to per-layer TransPoints and a human-readable explanation.

    texts: calibration documents (training documents only, all may be used), or ``Documents`` (their training
    split only); seq_len: the training sequence length, the default
    context (the spec's context= overrides it); importance: options of ``importance.plan_by_importance``
    (train_steps, train_seconds, window) for method=importance. Calibration windows are min(seq_len, max_calib_len) tokens long: the candidates
    are fractions of the window, so a long context is planned from shorter, cheaper windows.
    """
    if max_calib_len < 2:
        raise ValueError(f"max_calib_len={max_calib_len} must be >= 2 tokens")
    auto = parse_auto_spec(spec)
    if auto.method == "importance":
        return _resolve_by_importance(auto, teacher_model, tokenizer, texts, seq_len, device=device, seed=seed,
                                      **(importance or {}))
    if auto.context is None:
        spec = f"{spec.strip()},context={seq_len}"
    plan = plan_transpoints(spec, teacher_model, tokenizer, texts, min(seq_len, max_calib_len), windows=windows,
                            seed=seed, device=device)
    return plan.transpoints, plan.explain()


def resolve_transpoints(
    spec: str, num_layers: int | None, *, teacher=None,
    texts: Sequence[str] | Documents | Callable[[], Sequence[str] | Documents] = (),
    seq_len: int = PLAN_SEQ_LEN, windows: int = PLAN_WINDOWS, seed: int = 0, device=None,
    importance: dict | None = None, recorded: list[int] | None = None,
) -> tuple[list[int] | None, str]:
    """Per-layer TransPoints of any spec, and for ``auto:...`` the plan's explanation ("" for a fixed spec).

    A fixed spec is parsed for ``num_layers`` layers. An ``auto`` spec is checked first (its grammar, and its
    budget at its context, else ``seq_len``), then planned with ``teacher`` (``.model``, ``.tokenizer``) on
    ``texts``: training documents only, or ``Documents`` (their training split only), or a function returning
    either, called only here (a fixed spec never loads or tokenizes text). ``recorded``: the TransPoints a resumed run chose; an ``auto`` spec keeps them
    rather than planning again. With ``num_layers`` None (teacher not known yet) or no ``teacher``, nothing
    is planned and the TransPoints are None. Raises TransPointSpecError (AutoSpecError) naming the bad part.
    """
    if not is_auto_spec(spec):
        return (None if num_layers is None else parse_transpoints(spec, num_layers)), ""
    auto = parse_auto_spec(spec)
    if num_layers is not None:
        check_budget(auto.kv_budget, num_layers, auto.context or seq_len)
    if recorded is not None:
        return list(recorded), "resumed: the schedule the run chose"
    if teacher is None or num_layers is None:
        return None, ""
    docs = texts() if callable(texts) else texts
    return resolve_auto(spec, teacher.model, teacher.tokenizer, docs, seq_len, device=device, windows=windows,
                        seed=seed, importance=importance)


def _resolve_by_importance(auto: AutoSpec, teacher_model, tokenizer, texts, seq_len: int, *, device=None, seed=0,
                           window: int = 2048, windows: int = 64, **options) -> tuple[list[int], str]:
    """method=importance: ``windows`` of min(context, ``window``) tokens drawn (seeded) from the training windows
    of ``texts``, then ``plan_by_importance``."""
    from types import SimpleNamespace  # noqa: PLC0415

    from .importance import plan_by_importance  # noqa: PLC0415

    context = auto.context or seq_len
    check_budget(auto.kv_budget, teacher_model.config.num_hidden_layers, context)
    data = _documents(texts, tokenizer, seed).windows(min(context, window))
    pick = torch.randperm(data.train.shape[0], generator=torch.Generator().manual_seed(seed))[:windows]
    original = next(teacher_model.parameters()).device
    if device is not None and torch.device(device) != original:
        teacher_model.to(device)
    try:
        plan = plan_by_importance(SimpleNamespace(model=teacher_model, tokenizer=tokenizer), data.train[pick],
                                  context, auto.kv_budget, seed=seed, recall_weight=auto.recall, **options)
    finally:
        teacher_model.to(original)
    return plan.transpoints, plan.explain()


__all__ = ["AUTO_KEYS", "PLAN_SEQ_LEN", "PLAN_WINDOWS", "AutoPlan", "AutoSpec", "AutoSpecError", "CANDIDATE_FRACTIONS", "calibration_windows",
           "candidate_points", "check_budget", "choose_transpoints", "measure_sensitivity", "parse_auto_spec",
           "plan_transpoints", "resolve_auto", "resolve_transpoints", "METHODS"]
