"""`evaluate`: one call from loaded models to the report dict; `run_eval`: from paths to a report on disk.

Sections: held-out metrics (always), per-layer hidden-state error, retrieval, lm-evaluation-harness, speed.
Each optional section is switched by ``EvalOptions``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..convert.transpoints import parse_transpoints
from ..errors import UserError
from .metrics import compare_models
from .report import SCHEMA_VERSION, write_report
from .retrieval import TASKS, build_samples_with_fallback, check_lengths, filler_from_windows, run_retrieval

log = logging.getLogger(__name__)


class EvalInputError(UserError, ValueError):
    """An input the report cannot be made from (missing model, data without text, a length too long)."""


@dataclass
class EvalOptions:
    """What `evaluate` measures.

    seq_len, windows: held-out windows (windows x seq_len tokens); batch_size: windows per forward.
    heldout_fraction, data_seed: the document split of ``build_token_dataset`` (use the distillation's values
    so the windows are text the student never trained on). text_field: column of JSON/parquet data.
    transpoints: a spec that overrides every student's TransPoints (robustness studies), or None.
    layer_error: per-layer hidden-state error. retrieval_tasks, retrieval_lengths, depths, trials, seed:
    the retrieval probes (empty lengths = skip). tasks, task_dir, lm_eval_limit, num_fewshot: lm-eval
    (None = skip). speed, speed_lengths, decode_tokens: the speed/memory section.
    """

    seq_len: int = 256
    windows: int = 8
    batch_size: int = 1
    heldout_fraction: float = 0.05
    data_seed: int = 0
    text_field: str = "text"
    transpoints: str | None = None
    layer_error: bool = True
    retrieval_tasks: list[str] = field(default_factory=lambda: list(TASKS))
    retrieval_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    trials: int = 2
    seed: int = 0
    tasks: list[str] | None = None
    task_dir: str | None = None
    lm_eval_limit: float | None = None
    num_fewshot: int | None = None
    speed: bool = True
    speed_lengths: list[int] = field(default_factory=lambda: [256, 1024])
    decode_tokens: int = 16

    def __post_init__(self):
        if self.seq_len < 2:
            raise EvalInputError(f"seq_len={self.seq_len} must be >= 2")
        if self.windows < 1:
            raise EvalInputError(f"windows={self.windows} must be >= 1")
        if self.batch_size < 1:
            raise EvalInputError(f"batch_size={self.batch_size} must be >= 1")


# EvalOptions' defaults are sized for a GPU; on a CPU they take ~13 minutes for one student on 2 cores (2048-token
# retrieval prompts dominate). `tm-distill eval --device cpu` uses these unless an option is given.
CPU_DEFAULTS = {"retrieval_lengths": [512], "trials": 1, "speed_lengths": [256]}


def cost_line(options: EvalOptions, students: int, device: str) -> str:
    """What an eval will run, said before it starts: held-out tokens, retrieval prompts, speed lengths."""
    parts = [f"eval on {device}: teacher + {students} student(s); held-out {options.windows} x {options.seq_len} tokens"]
    if options.retrieval_lengths:
        prompts = len(options.retrieval_tasks) * len(options.retrieval_lengths) * len(options.depths) * options.trials
        parts.append(f"retrieval {prompts} prompts per model at {','.join(map(str, options.retrieval_lengths))} tokens")
    if options.speed:
        parts.append(f"speed at {','.join(map(str, options.speed_lengths))} tokens (+{options.decode_tokens} decoded)")
    if options.tasks:
        parts.append(f"lm-eval {','.join(options.tasks)}")
    return "; ".join(parts)


def check_context(options: EvalOptions, max_positions: int | None) -> None:
    """Every length the report uses must fit the teacher's context (max_position_embeddings)."""
    if max_positions is None:
        return
    wanted = [("--seq-len", options.seq_len)]
    wanted += [("--passkey-lengths", n) for n in options.retrieval_lengths]
    if options.speed:
        wanted += [("--speed-lengths (+ decode tokens)", n + options.decode_tokens) for n in options.speed_lengths]
    for what, n in wanted:
        if n > max_positions:
            raise EvalInputError(
                f"{what}: length {n} is beyond the teacher's context (max_position_embeddings={max_positions}); "
                f"use lengths <= {max_positions}"
            )
    try:
        check_lengths(options.retrieval_lengths, max_positions)
    except ValueError as err:
        raise EvalInputError(str(err)) from err


def apply_transpoints(students: dict[str, torch.nn.Module], spec: str | None) -> dict[str, list[int]]:
    """Override every student's ``config.transpoints`` with ``spec``; returns the students' own schedules."""
    own = {}
    for name, model in students.items():
        tps = getattr(model.config, "transpoints", None)
        if tps is None:
            raise EvalInputError(f"model {name!r} is not a TransMamba student: it has no TransPoints to override")
        own[name] = list(tps)
        if spec:
            model.config.transpoints = parse_transpoints(spec, model.config.num_hidden_layers)
    return own


def _model_metrics(teacher, students: dict, windows: torch.Tensor, options: EvalOptions, teacher_source: str,
                   own: dict[str, list[int]], progress: bool) -> dict:
    """The report's "models": held-out metrics of the teacher and of each student, with their TransPoints.
    windows: (n, seq_len) held-out tokens; own: each student's schedule before any override."""
    metrics = compare_models(teacher, students, windows, options.batch_size, options.layer_error, progress)
    t = metrics.pop("teacher")
    t.pop("by_token")
    models = {"teacher": {"kind": "teacher", "path": teacher_source, "transpoints": None, "transpoint_spec": None,
                          **t, "layer_error": None}}
    for name, m in metrics.items():
        cfg = students[name].config
        models[name] = {
            "kind": "student", "path": getattr(students[name], "name_or_path", ""),
            "transpoints": list(cfg.transpoints),
            "transpoint_spec": options.transpoints or getattr(cfg, "transpoint_spec", None),
            "trained_transpoints": own[name], **m,
        }
    return models


def _retrieval(everyone: dict, tokenizer, heldout: torch.Tensor, options: EvalOptions, progress: bool) -> dict:
    """The report's "retrieval": passkey/phonebook prompts built on the held-out text as filler, run by every model."""
    filler = filler_from_windows(heldout, tokenizer.eos_token_id)
    samples, info = build_samples_with_fallback(tokenizer, filler, options.retrieval_tasks, options.retrieval_lengths,
                                                options.depths, options.trials, options.seed)
    return {"lengths": info["lengths"], "depths": options.depths, "trials": options.trials, "seed": options.seed,
            "filler": info["filler"], "skipped": info["skipped"],
            "tasks": run_retrieval(everyone, tokenizer, samples, progress)}


def evaluate(
    teacher: torch.nn.Module, tokenizer, students: dict[str, torch.nn.Module], heldout: torch.Tensor,
    options: EvalOptions, teacher_source: str = "", data_source: str = "", data_split: str = "held-out",
    progress: bool = True,
) -> dict:
    """The report dict for already-loaded models (all on one device, one vocabulary).

    heldout: (n, seq_len) token windows of held-out text; the first ``options.windows`` are scored, all of
    them serve as real filler text for the passkey probe.
    """
    max_positions = getattr(teacher.config, "max_position_embeddings", None)
    check_context(options, max_positions)
    for name, model in students.items():
        if model.config.vocab_size != teacher.config.vocab_size:
            raise EvalInputError(f"student {name!r} has vocab {model.config.vocab_size}, the teacher "
                                 f"{teacher.config.vocab_size}: a student must be converted from this teacher")
    own = apply_transpoints(students, options.transpoints)
    device = next(teacher.parameters()).device
    windows = heldout[: options.windows]
    steps = ["metrics"] + (["retrieval"] if options.retrieval_lengths else []) + (["lm_eval"] if options.tasks else [])
    steps += ["speed"] if options.speed else []
    bar = tqdm(steps, desc="tm-distill eval", disable=not progress)
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "teacher": {"source": teacher_source, "max_position_embeddings": max_positions},
        "data": {"source": data_source, "split": data_split, "seq_len": int(windows.shape[1]),
                 "windows": int(windows.shape[0]), "tokens": int(windows.numel())},
        "device": str(device),
        "dtype": str(next(teacher.parameters()).dtype).replace("torch.", ""),
        "transpoints_override": options.transpoints,
        "options": asdict(options),
        "models": {},
        "retrieval": None,
        "lm_eval": None,
        "speed": None,
        "plots": [],
    }
    everyone = {"teacher": teacher, **students}
    for step in bar:
        bar.set_postfix_str(step)
        if step == "metrics":
            report["models"] = _model_metrics(teacher, students, windows, options, teacher_source, own, progress)
        elif step == "retrieval":
            report["retrieval"] = _retrieval(everyone, tokenizer, heldout, options, progress)
        elif step == "lm_eval":
            from .lmeval import run_lm_eval  # noqa: PLC0415  (optional extra)

            report["lm_eval"] = run_lm_eval(everyone, tokenizer, options.tasks, options.task_dir,
                                            options.lm_eval_limit, options.num_fewshot, seed=options.seed)
        elif step == "speed":
            from .speed import measure_speed  # noqa: PLC0415

            report["speed"] = measure_speed(everyone, options.speed_lengths, options.decode_tokens,
                                            seed=options.seed, progress=progress)
    for name, tps in own.items():  # leave the models as they came
        students[name].config.transpoints = tps
    return report


def student_name(path: str | Path, taken: set[str]) -> str:
    """A short unique name for a student folder: its name, or parent/name, then a numeric suffix."""
    p = Path(path).expanduser().absolute()  # keep a symlink's own name
    for candidate in (p.name, f"{p.parent.name}/{p.name}"):
        if candidate not in taken and candidate != "teacher":
            return candidate
    k = 2
    while f"{p.name}-{k}" in taken:
        k += 1
    return f"{p.name}-{k}"


def load_heldout(data: str, tokenizer, options: EvalOptions) -> tuple[torch.Tensor, str]:
    """Held-out windows (n, seq_len) of ``data`` and the split name; uses the distillation's data pipeline."""
    from ..data.loading import DataSourceError  # noqa: PLC0415
    from ..data.windows import load_documents  # noqa: PLC0415

    try:
        docs = load_documents(data, tokenizer, heldout_fraction=options.heldout_fraction, seed=options.data_seed,
                              text_field=options.text_field, whole_if_one=True)
    except DataSourceError as err:
        raise EvalInputError(str(err)) from err
    split, fraction = "held-out", docs.heldout_fraction
    if len(docs.texts) < 2:
        log.warning("%s has one document: scoring windows from all of it (nothing held out)", data)
        split = "all (single document, not held out)"
    try:
        tokens = docs.windows(options.seq_len)
    except ValueError as err:
        raise EvalInputError(f"data {data!r}: {err}") from err
    windows = tokens.heldout if fraction > 0 else tokens.train
    if windows.shape[0] < options.windows:
        log.warning("%s gives %d window(s) of %d tokens, fewer than the %d asked for", data, windows.shape[0],
                    options.seq_len, options.windows)
    return windows, split


def run_eval(
    students: list[str | Path], teacher: str, data: str, out_dir: str | Path, options: EvalOptions,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, plots: bool = True,
    progress: bool = True,
) -> dict:
    """Load the teacher and student folders, evaluate, write report.json / report.md / plots to out_dir, and put
    each student's headline numbers on its model card (``card.record_evaluation``)."""
    from ..card import record_evaluation  # noqa: PLC0415
    from ..checkpoint import NotAStudent, StudentMismatch, StudentNotFound, check_student_of, load_student  # noqa: PLC0415
    from ..convert import load_teacher  # noqa: PLC0415
    from ..convert.seed import UnsupportedTeacher  # noqa: PLC0415
    from ..convert.teacher import TeacherNotFound, UnreadableModel  # noqa: PLC0415
    from ..runtime import DeviceError, parse_device  # noqa: PLC0415

    if not students:
        raise EvalInputError("give at least one student folder (made by `tm-distill convert` or `distill`)")
    try:
        device = parse_device(device)
    except DeviceError as err:
        raise EvalInputError(str(err)) from None
    loaded: dict[str, torch.nn.Module] = {}
    folders: dict[str, Path] = {}
    for path in students:
        try:
            model, _ = load_student(path, dtype=dtype, device=device)
        except (StudentNotFound, NotAStudent, StudentMismatch, UnreadableModel) as err:
            raise EvalInputError(str(err)) from err
        model.name_or_path = str(Path(path).expanduser().resolve())
        name = student_name(path, set(loaded))
        loaded[name], folders[name] = model, Path(path).expanduser()
    try:
        t = load_teacher(teacher, dtype=dtype, device=device)
    except (TeacherNotFound, UnreadableModel, UnsupportedTeacher) as err:
        raise EvalInputError(str(err)) from err
    for path, model in zip(students, loaded.values()):
        try:
            check_student_of(model.config, t.model.config, path)
        except StudentMismatch as err:
            raise EvalInputError(str(err)) from None
    check_context(options, getattr(t.model.config, "max_position_embeddings", None))
    heldout, split = load_heldout(data, t.tokenizer, options)
    log.info("evaluating %s against %s on %d windows", ", ".join(loaded), teacher, min(len(heldout), options.windows))
    report = evaluate(t.model, t.tokenizer, loaded, heldout, options, teacher_source=teacher, data_source=str(data),
                      data_split=split, progress=progress)
    write_report(report, out_dir, plots=plots)
    for name, folder in folders.items():  # each student's card gets the numbers measured on it
        record_evaluation(folder, report, name, out_dir)
    return report


__all__ = ["CPU_DEFAULTS", "EvalInputError", "EvalOptions", "apply_transpoints", "check_context", "cost_line", "evaluate", "load_heldout", "run_eval",
           "student_name"]
