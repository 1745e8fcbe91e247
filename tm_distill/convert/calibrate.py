"""Calibrated seeding: fit each layer's SSM additions to the teacher's own attention, in closed form.

With W_Δ = 0 (``dt_proj.weight``), Δ = softplus(dt_bias) = g is a constant per head and the decay per token
is a = exp(A g). The SSM output of head h at token t is then

    y_t = g u_t(a) + D x_t,    u_t(a) = sum_{s <= t} a^(t-s) (C_t . B_s) x_s,

where u(a) is the unit-gain scan (Δ = 1, A = log a). Each head's (dt_bias, A_log) thus encode an output gain
g > 0 and a decay a in (0, 1) independently: dt_bias = softplus^-1(g), A = log(a) / g, A_log = log(-A).
No parameter is added; C, B, x are whatever the student's options make of q, k, v (feature map, RoPE, ...).

Per layer l with TransPoint P_l < T, on calibration windows, targets the teacher's per-head attention outputs
(the input of its o_proj) on the rows t >= P_l:

1. per head and per decay length L of a grid (a = exp(-1/L)): least squares y ~ g u(a) + D x with g >= 0 (a
   negative gain is clamped and D refit), the error judged through o_proj (|W_o,h e|, each head alone); the
   decay with the lowest error wins;
2. all heads' (g_h, D_h) are refit jointly in the layer's output space, features W_o,h u_h and W_o,h x_h
   against W_o y, with g_h >= 0 by an active set (a gain that comes out negative is fixed at a tiny floor).

Layers are fitted in order, each on the inputs the student, already calibrated below it, gives it
(``sequential``; the targets stay the teacher's): a layer learns the map from the inputs it will really see.
Zero is feasible in step 2, so on the data it is fitted on no layer ends worse than a zero output (relative
error <= 1). A scan of the whole window from token 0 gives the hybrid's SSM rows t >= P_l, because the
Memory Converter hands token P_l the scan state of the prefix. Everything reduces to sums over rows of small
Gram matrices: one teacher forward per window, one student forward (sequential), no gradient.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..data.windows import DEFAULT_HELDOUT_FRACTION, DEFAULT_SPLIT_SEED
from ..errors import UserError
from ..models.capture import TeacherActivations, capture_teacher
from ..models.configuration import ATTENTION_ONLY
from ..ops import ssd_scan

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_DATA = "shakespeare"  # the shipped corpus
DEFAULT_CALIBRATION_TOKENS = 4096  # 2 windows of 2048 fit as well as 4 on SmolLM2-135M (docs/design.md)
DEFAULT_DECAY_LENGTHS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 8192)
GAIN_FLOOR = 1e-6  # a "zero" gain that still encodes a decay
_RIDGE = 1e-9  # relative ridge on the normal equations (a head whose features vanish)


class CalibrationError(UserError, ValueError):
    """Calibration that cannot run: unusable data or a student the closed form does not cover."""


@dataclass
class LayerFit:
    """What calibration chose for one layer, and its relative mixer error ||S - T|| / ||T|| on rows >= P.

    decay_lengths, gains, skips: one per query head (L = -1 / log a, g, D). error_before/after: on the
    calibration windows; heldout_before/after: on windows calibration did not see (None if not measured).
    """

    layer: int
    transpoint: int
    decay_lengths: list[float]
    gains: list[float]
    skips: list[float]
    error_before: float
    error_after: float
    heldout_before: float | None = None
    heldout_after: float | None = None


@dataclass
class Calibration:
    """The record of one calibration (stored in the checkpoint's config and tm_distill.json)."""

    data: str
    windows: int
    seq_len: int
    heldout_windows: int
    decay_grid: list[float]
    seconds: float
    layers: list[LayerFit] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # layers with no SSM row in the windows (P >= seq_len)

    def mean(self, key: str) -> float | None:
        values = [getattr(f, key) for f in self.layers if getattr(f, key) is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        """Everything, for tm_distill.json; ``errors`` rows are [layer, P, before, after, heldout before/after]."""
        out = asdict(self)
        out["means"] = {k: self.mean(k) for k in ("error_before", "error_after", "heldout_before", "heldout_after")}
        out["errors"] = [[f.layer, f.transpoint, f.error_before, f.error_after, f.heldout_before, f.heldout_after]
                         for f in self.layers]
        return out

    def summary(self) -> dict:
        """The compact form kept in config.json: what was fitted on what and the errors, without the fit."""
        return {k: v for k, v in self.to_dict().items() if k != "layers"}


def calibration_table(record: dict) -> str:
    """A calibration record (``Calibration.to_dict`` or ``summary``) as a per-layer error table."""
    held = bool(record.get("heldout_windows")) and any(r[4] is not None for r in record["errors"])
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        (f"calibration: {record['windows']} window(s) x {record['seq_len']} tokens of {record['data']!r} "
         f"(training split), {record['seconds']:.0f} s; relative mixer error |S-T|/|T| on rows >= P"),
        f"  {'layer':>5} {'P':>5} {'before':>8} {'after':>8}" + (f" | held-out {'before':>8} {'after':>8}" if held else ""),
    ]
    for layer, p, before, after, hb, ha in record["errors"]:
        row = f"  {layer:>5} {p:>5} {fmt(before):>8} {fmt(after):>8}"
        lines.append(row + (f" |          {fmt(hb):>8} {fmt(ha):>8}" if held else ""))
    m = record["means"]
    row = f"  {'mean':>5} {'':>5} {fmt(m['error_before']):>8} {fmt(m['error_after']):>8}"
    lines.append(row + (f" |          {fmt(m['heldout_before']):>8} {fmt(m['heldout_after']):>8}" if held else ""))
    if record.get("skipped"):
        lines.append(f"  not calibrated (no SSM row in {record['seq_len']} tokens): layers "
                     f"{', '.join(map(str, record['skipped']))}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
def gain_decay_parameters(gains: Tensor, decay_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(dt_bias, A_log) that make Δ = gains and exp(A Δ) = exp(-1 / decay_lengths) when W_Δ = 0; fp64, (nq,)."""
    g = gains.double().clamp_min(GAIN_FLOOR)
    dt_bias = g + torch.log(-torch.expm1(-g))  # softplus^-1, stable for large g
    a_log = -torch.log(decay_lengths.double()) - torch.log(g)  # A = -1 / (L g)
    return dt_bias, a_log


def ssm_operands(mixer, hidden: Tensor, position_embeddings) -> tuple[Tensor, Tensor, Tensor]:
    """The student's SSM operands for ``hidden`` (b, t, H): x (b, t, nq, d), B (b, t, nkv, n), C (b, t, nq, n)."""
    x, _, _, B, C = mixer.ssm_inputs(hidden, *mixer.project(hidden), position_embeddings)
    return x, B, C


def unit_scans(x: Tensor, B: Tensor, C: Tensor, decay_lengths: Tensor, chunk_size: int, backend: str = "auto") -> Tensor:
    """u(a) for decay lengths L (Δ = 1, A = -1 / L): x (b, t, nq, d), B (b, t, g, n), C (b, t, nq, n).

    decay_lengths: (K,) one grid shared by every head, or (nq, K) per head. Returns (b, t, nq, K, d) in fp32.
    The grid is folded into the head axis (head h, decay k -> scan head h K + k), so B's and C's groups still
    cover their heads.
    """
    b, t, nq, d = x.shape
    lengths = decay_lengths.float().to(x.device).expand(nq, -1) if decay_lengths.dim() == 1 else decay_lengths
    k = lengths.shape[-1]
    xs = x.float().unsqueeze(3).expand(b, t, nq, k, d).reshape(b, t, nq * k, d)
    dt = xs.new_ones(b, t, nq * k)
    A = (-1.0 / lengths.float().to(x.device)).reshape(-1)
    u = ssd_scan(xs, dt, A, B.float(), C.float(), chunk_size, backend=backend)
    return u.view(b, t, nq, k, d)


def ssm_rows(mixer, hidden: Tensor, position_embeddings, start: int) -> Tensor:
    """The mixer's output (after o_proj) on rows t >= start when every row from ``start`` on runs the SSM.

    hidden: (b, t, H). Equals the hybrid mixer's rows >= P for start = P (Memory Converter). (b, t - start, H).
    """
    b, t, _ = hidden.shape
    y = mixer.ssm_full(hidden, *mixer.project(hidden), position_embeddings, start=start)
    return mixer.o_proj(y.reshape(b, t - start, -1))


# ------------------------------------------------------------------------------------------------------------
def head_statistics(u: Tensor, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Sums over rows and channels for the per-head fits y ~ g u_k + D x, fp64.

    u: (b, r, nq, K, d); x, y: (b, r, nq, d) on the fitted rows. Returns uu, ux, uy (nq, K); xx, xy, yy (nq,).
    """
    nq, k = u.shape[2], u.shape[3]
    U = u.permute(2, 3, 0, 1, 4).reshape(nq, k, -1)  # (nq, K, rows * d): the sums become batched matmuls
    X = x.float().permute(2, 0, 1, 3).reshape(nq, -1, 1)
    Y = y.float().permute(2, 0, 1, 3).reshape(nq, -1, 1)
    return {
        "uu": U.pow(2).sum(-1).double(),
        "ux": torch.bmm(U, X)[..., 0].double(),
        "uy": torch.bmm(U, Y)[..., 0].double(),
        "xx": X.pow(2).sum((1, 2)).double(),
        "xy": (X * Y).sum((1, 2)).double(),
        "yy": Y.pow(2).sum((1, 2)).double(),
    }


def select_decays(stats: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per head, the grid index whose 2-parameter fit (g >= 0, D) has the lowest squared error.

    stats: from ``head_statistics`` summed over windows. Returns (index (nq,) long, gains (nq,), skips (nq,)).
    """
    uu, ux, uy = stats["uu"], stats["ux"], stats["uy"]
    xx, xy, yy = (stats[k].unsqueeze(1) for k in ("xx", "xy", "yy"))
    uu_r, xx_r = uu * (1 + _RIDGE) + 1e-30, xx * (1 + _RIDGE) + 1e-30
    det = uu_r * xx_r - ux * ux
    g = (uy * xx_r - ux * xy) / det
    d = (uu_r * xy - ux * uy) / det
    clamp = g < 0
    g = torch.where(clamp, torch.zeros_like(g), g)
    d = torch.where(clamp, (xy / xx_r).expand_as(d), d)
    err = yy - 2 * g * uy - 2 * d * xy + g * g * uu + 2 * g * d * ux + d * d * xx
    best = err.argmin(dim=1)
    pick = lambda t: t.gather(1, best[:, None])[:, 0]  # noqa: E731
    return best, pick(g), pick(d)


def output_statistics(mixer, u: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Normal equations of the joint fit in the layer's output space (o_proj's bias cancels), fp64.

    u, x, y: (b, r, nq, d) on the fitted rows. The features are W_o,h u_h and W_o,h x_h (h = 0..nq-1), the
    target W_o y. Returns gram (2 nq, 2 nq) and cross (2 nq,).
    """
    w = mixer.o_proj.weight.float().view(-1, mixer.num_heads, mixer.head_dim)  # (H, nq, d)
    feats = torch.cat([torch.einsum("brhd,Hhd->hbrH", u.float(), w), torch.einsum("brhd,Hhd->hbrH", x.float(), w)])
    feats = feats.reshape(2 * mixer.num_heads, -1)  # (2 nq, rows * H)
    target = torch.einsum("brhd,Hhd->brH", y.float(), w).reshape(-1)
    return (feats @ feats.T).double(), (feats @ target).double()


def fit_gains(gram: Tensor, cross: Tensor, num_heads: int) -> tuple[Tensor, Tensor]:
    """Least squares theta = [g (nq), D (nq)] of ``gram`` theta = ``cross`` with g >= 0 (active set).

    gram: (2 nq, 2 nq), cross: (2 nq,), fp64. A gain that comes out negative is fixed at 0 and the rest refit,
    until every free gain is >= 0; the D terms are always free. Returns (gains (nq,), skips (nq,)).
    """
    n = 2 * num_heads
    free = torch.ones(n, dtype=torch.bool)
    theta = torch.zeros(n, dtype=torch.float64)
    ridge = _RIDGE * gram.diagonal().mean().clamp_min(1e-30)
    while True:
        idx = free.nonzero()[:, 0]
        sub = gram[idx][:, idx] + ridge * torch.eye(len(idx), dtype=gram.dtype)
        theta = torch.zeros(n, dtype=torch.float64)
        theta[idx] = torch.linalg.solve(sub, cross[idx])
        negative = free[:num_heads] & (theta[:num_heads] < 0)
        if not bool(negative.any()):
            return theta[:num_heads], theta[num_heads:]
        free[:num_heads] &= ~negative


@torch.no_grad()
def apply_fit(mixer, gains: Tensor, decay_lengths: Tensor, skips: Tensor) -> None:
    """Write gains/decays/D into the mixer's dt_bias, A_log, D, with W_Δ = 0 (Δ constant per head)."""
    dt_bias, a_log = gain_decay_parameters(gains, decay_lengths)
    mixer.dt_proj.weight.zero_()
    mixer.dt_bias.copy_(dt_bias.to(mixer.dt_bias))
    mixer.A_log.copy_(a_log.to(mixer.A_log))
    mixer.D.copy_(skips.to(mixer.D))


# ------------------------------------------------------------------------------------------------------------
def _positions(student, hidden: Tensor):
    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    return student.model.rotary_emb(hidden, position_ids=positions)


def _operands(student, acts: TeacherActivations, layer: int):
    """The teacher's input to ``layer`` and each head's attention output, on the student's device/dtype."""
    mixer = student.model.layers[layer].mixer
    ref = mixer.q_proj.weight
    hidden = acts.attn_inputs[layer].to(device=ref.device, dtype=ref.dtype)
    heads = acts.head_outputs[layer].to(device=ref.device)
    return mixer, hidden, heads.view(*heads.shape[:2], mixer.num_heads, mixer.head_dim)


def layer_error(student, captured: Sequence[TeacherActivations], layer: int) -> tuple[float, float]:
    """(sum of squared error, sum of squared teacher output) of ``layer``'s mixer on rows >= P, over windows."""
    p = student.config.transpoints[layer]
    err = ref = 0.0
    for acts in captured:
        mixer, hidden, heads = _operands(student, acts, layer)
        target = mixer.o_proj(heads[:, p:].flatten(2).to(hidden.dtype)).float()
        diff = ssm_rows(mixer, hidden, _positions(student, hidden), p).float() - target
        err, ref = err + float(diff.pow(2).sum()), ref + float(target.pow(2).sum())
    return err, ref


def _relative(err_ref: tuple[float, float]) -> float:
    err, ref = err_ref
    return math.sqrt(err / ref) if ref > 0 else 0.0


def head_metric(mixer) -> Tensor:
    """(nq, d, d) symmetric square roots S_h of W_o,h^T W_o,h, so that |S_h v| = |W_o,h v| for every v (d,)."""
    w = mixer.o_proj.weight.double().view(-1, mixer.num_heads, mixer.head_dim).permute(1, 2, 0)  # (nq, d, H)
    evals, evecs = torch.linalg.eigh(w @ w.transpose(1, 2))
    return ((evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(1, 2)).float()


def _decay_statistics(mixer, operands, p: int, grid: Tensor, metric: Tensor | None) -> dict[str, Tensor]:
    """``head_statistics`` of every grid decay summed over windows; operands: [(x, B, C, heads)] per window."""
    chunk, backend = mixer.config.ssm_chunk_size, mixer.config.ssm_backend
    stats: dict[str, Tensor] = {}
    for x, B, C, heads in operands:
        u, xr, yr = unit_scans(x, B, C, grid, chunk, backend)[:, p:], x[:, p:].float(), heads[:, p:].float()
        if metric is not None:  # |S_h e| = |W_o,h e|: each head's error as o_proj sees it
            u = torch.einsum("brhkd,hde->brhke", u, metric)
            xr, yr = (torch.einsum("brhd,hde->brhe", t, metric) for t in (xr, yr))
        for key, value in head_statistics(u, xr, yr).items():
            stats[key] = stats[key] + value if key in stats else value
    return stats


def _joint_statistics(mixer, operands, p: int, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """``output_statistics`` with each head's chosen decay, summed over windows."""
    nq = mixer.num_heads
    gram, cross = torch.zeros(2 * nq, 2 * nq, dtype=torch.float64), torch.zeros(2 * nq, dtype=torch.float64)
    for x, B, C, heads in operands:
        u = unit_scans(x, B, C, lengths[:, None], mixer.config.ssm_chunk_size, mixer.config.ssm_backend)[..., 0, :]
        g, c = output_statistics(mixer, u[:, p:], x[:, p:], heads[:, p:])
        gram, cross = gram + g.cpu(), cross + c.cpu()
    return gram, cross


@torch.no_grad()
def calibrate_layer(
    student, captured: Sequence[TeacherActivations], layer: int, grid: Tensor, *,
    inputs: Sequence[Tensor] | None = None, weighted: bool = True,
) -> LayerFit:
    """Fit one layer (decay per head, then joint gains and D in output space); writes the mixer's parameters.

    captured: the teacher's activations per window (targets; also the inputs the errors are measured on).
    inputs: per window (1, t, H), the inputs to fit on instead of the teacher's (the calibrated student's own,
    in sequential calibration). weighted: judge the per-head decay fits through o_proj (|W_o,h e|, each head
    alone) instead of |e|.
    """
    p = student.config.transpoints[layer]
    mixer = student.model.layers[layer].mixer
    before = _relative(layer_error(student, captured, layer))
    operands = []
    for w, acts in enumerate(captured):
        _, hidden, heads = _operands(student, acts, layer)
        hidden = hidden if inputs is None else inputs[w]
        operands.append((*ssm_operands(mixer, hidden, _positions(student, hidden)), heads))
    metric = head_metric(mixer).to(mixer.q_proj.weight.device) if weighted else None
    best, _, _ = select_decays(_decay_statistics(mixer, operands, p, grid, metric))
    lengths = grid.double()[best.cpu()]
    gains, skips = fit_gains(*_joint_statistics(mixer, operands, p, lengths), mixer.num_heads)
    apply_fit(mixer, gains, lengths, skips)
    after = _relative(layer_error(student, captured, layer))
    return LayerFit(layer, p, [float(v) for v in lengths], [float(v) for v in gains.clamp_min(GAIN_FLOOR)],
                    [float(v) for v in skips], before, after)


@torch.no_grad()
def capture_windows(teacher, windows: Tensor, layers: Sequence[int], progress: bool = False,
                    desc: str = "teacher activations") -> list[TeacherActivations]:
    """One teacher forward per window (n, t): attention inputs and per-head outputs of ``layers``."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    device = next(teacher.parameters()).device
    captured = []
    for row in tqdm(windows, desc=desc, unit="window", disable=not progress, leave=False):
        acts = capture_teacher(teacher, row[None].to(device), layers, heads=True)
        acts.attn_outputs.clear()  # rebuilt from head_outputs where needed; frees memory now
        captured.append(acts)
    return captured


def calibrated_layers(student, seq_len: int) -> list[int]:
    return [i for i, p in enumerate(student.config.transpoints) if p < seq_len]


@torch.no_grad()
def calibrate_student(
    student, teacher, windows: Tensor, *, heldout: Tensor | None = None, data: str = "",
    decay_lengths: Sequence[float] = DEFAULT_DECAY_LENGTHS, sequential: bool = True, weighted: bool = True,
    progress: bool = False,
) -> Calibration:
    """Calibrate every layer of ``student`` with an SSM row in ``windows`` (n, t) against ``teacher``.

    heldout: (m, t) windows calibration does not see, for before/after errors (optional). data: a description
    of the windows' source, recorded. sequential: fit layer l on the inputs the student, calibrated below l,
    gives it (targets stay the teacher's); False: on the teacher's inputs. Writes the fitted parameters into
    ``student`` and returns the record, also kept as ``student.config.calibration`` (summary). progress: bars
    for the teacher's forwards and one step per layer, with the time left.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    if student.config.use_z_gate:
        raise CalibrationError("calibration fits the SSM's output gain, which the z gate's RMSNorm removes: "
                               "convert without --z-gate (use_z_gate) to calibrate")
    start = time.perf_counter()
    n, t = windows.shape
    layers = calibrated_layers(student, t)
    record = Calibration(data, n, t, 0 if heldout is None else int(heldout.shape[0]),
                         [float(v) for v in decay_lengths], 0.0,
                         skipped=[i for i, p in enumerate(student.config.transpoints) if t <= p < ATTENTION_ONLY])
    if record.skipped:
        log.warning("layers %s have no SSM row in %d-token windows: left as seeded", record.skipped, t)
    if not layers:
        return record
    held = capture_windows(teacher, heldout, layers, progress, "held-out activations") \
        if heldout is not None and len(heldout) else []
    held_before = {i: _relative(layer_error(student, held, i)) for i in layers}
    captured = capture_windows(teacher, windows, layers, progress)
    grid = torch.tensor([float(v) for v in decay_lengths], dtype=torch.float64)
    stream = [student.model.embed_tokens(w[None].to(student.device)) for w in windows] if sequential else None
    # One bar step per layer (tqdm's rate gives the time left); a layer without an SSM row only passes the stream on.
    for i in tqdm(range(layers[-1] + 1), desc="calibrate layers", unit="layer", disable=not progress):
        block = student.model.layers[i]
        if i in layers:
            inputs = [block.input_layernorm(h) for h in stream] if sequential else None
            fit = calibrate_layer(student, captured, i, grid, inputs=inputs, weighted=weighted)
            if held:
                fit.heldout_before, fit.heldout_after = held_before[i], _relative(layer_error(student, held, i))
            record.layers.append(fit)
            log.info("layer %d (P=%d): relative error %.3f -> %.3f", i, fit.transpoint, fit.error_before,
                     fit.error_after)
        if sequential:
            stream = [block(h, _positions(student, h)) for h in stream]
    record.seconds = time.perf_counter() - start
    student.config.calibration = record.summary()
    return record


# ------------------------------------------------------------------------------------------------------------
def default_windows(seq_len: int) -> int:
    """Windows of ``seq_len`` tokens that hold DEFAULT_CALIBRATION_TOKENS (at least one)."""
    return max(1, math.ceil(DEFAULT_CALIBRATION_TOKENS / seq_len))


def calibration_windows(
    source, tokenizer, seq_len: int, windows: int | None = None, heldout_windows: int = 1, *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, seed: int = DEFAULT_SPLIT_SEED, text_field: str = "text",
) -> tuple[Tensor, Tensor | None]:
    """Calibration windows (n, seq_len) from the TRAINING split of ``source``, and held-out windows (m, seq_len).

    source: a data source (``load_texts``), or ``data.windows.Documents`` already loaded under their split (a
    run's: their windows are reused, and heldout_fraction, seed, text_field are theirs).
    windows: how many (None: ``default_windows(seq_len)``, 4096 tokens' worth).
    The split is ``build_token_dataset``'s document split with ``heldout_fraction`` and ``seed`` (use a recipe's
    values so its held-out windows stay unseen); the n windows are spread evenly over the training windows. A
    source of one document is split by windows instead: the held-out windows follow the calibration ones.
    Raises CalibrationError naming the source and the fix when it gives no text or not one whole window.
    """
    from ..data.loading import DataSourceError  # noqa: PLC0415
    from ..data.windows import Documents, load_documents, spread  # noqa: PLC0415

    windows = windows or default_windows(seq_len)
    name = source.source if isinstance(source, Documents) else source
    fix = f"give at least {seq_len} tokens of text (a file, folder, corpus name or dataset) or a shorter seq_len"
    try:
        docs = source if isinstance(source, Documents) else load_documents(
            source, tokenizer, heldout_fraction=heldout_fraction, seed=seed, text_field=text_field, whole_if_one=True)
    except DataSourceError as err:
        raise CalibrationError(f"calibration data {name!r}: {err}; {fix}") from err
    try:
        data = docs.windows(seq_len)
    except ValueError as err:  # e.g. no whole window of training text
        raise CalibrationError(f"calibration data {name!r} has no whole window of {seq_len} tokens of "
                               f"training text ({err}); {fix}") from err
    train, held = data.train, data.heldout
    if len(docs.texts) < 2:  # one document: held-out windows are the ones after the calibration windows
        train, held = data.train[:windows], data.train[windows:]
    if len(train) < windows:
        log.warning("calibration data %s gives %d window(s) of %d tokens, fewer than the %d asked for", name,
                    len(train), seq_len, windows)
    held = held[:heldout_windows] if heldout_windows > 0 and len(held) else None
    return spread(train, windows), held

__all__ = [
    "DEFAULT_CALIBRATION_DATA",
    "DEFAULT_CALIBRATION_TOKENS",
    "DEFAULT_DECAY_LENGTHS",
    "GAIN_FLOOR",
    "Calibration",
    "CalibrationError",
    "LayerFit",
    "apply_fit",
    "calibrate_layer",
    "calibrate_student",
    "calibrated_layers",
    "calibration_table",
    "calibration_windows",
    "capture_windows",
    "default_windows",
    "fit_gains",
    "gain_decay_parameters",
    "head_statistics",
    "layer_error",
    "output_statistics",
    "select_decays",
    "ssm_operands",
    "ssm_rows",
    "unit_scans",
]
