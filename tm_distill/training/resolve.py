"""Check a recipe against its teacher and resolve the plan (stages, steps, tokens, TransPoints), no training.

``validate`` runs this; ``distill`` runs it before any work, so a missing teacher, a sequence longer than
the teacher supports, a TransPoint spec that does not fit the model, or a tracker that is not installed fails
first, naming the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from ..convert.calibrate import default_windows
from ..convert.teacher import CustomCodeRefused, TeacherNotFound, check_no_custom_code, resolve_source
from ..convert.transpoints import TransPointSpecError, describe_transpoints
from ..plan import resolve_transpoints
from ..recipe import Recipe, RecipeError
from .tracking import check_trackers

log = logging.getLogger(__name__)


def teacher_config(source: str, *, allow_download: bool = False) -> PretrainedConfig | None:
    """The teacher's config without loading its weights where possible; None for an uncached hub id.

    Raises RecipeError("teacher", ...) when the teacher does not exist.
    """
    try:
        resolved = resolve_source(source)
    except TeacherNotFound as err:
        raise RecipeError("teacher", str(err)) from None
    path = Path(resolved)
    if path.suffix == ".gguf":
        from ..convert.seed import UnsupportedTeacher  # noqa: PLC0415
        from ..convert.teacher import UnreadableModel, gguf_cache_path, load_teacher  # noqa: PLC0415

        cached = gguf_cache_path(path)
        if (cached / "config.json").exists():
            return AutoConfig.from_pretrained(str(cached), trust_remote_code=False)
        try:
            return load_teacher(source).model.config  # de-quantizes once and caches
        except (TeacherNotFound, UnreadableModel, UnsupportedTeacher) as err:
            raise RecipeError("teacher", str(err)) from None
    if path.is_dir():
        if not (path / "config.json").exists():
            raise RecipeError("teacher", f"{path} has no config.json: is it a Hugging Face model folder?")
        try:
            check_no_custom_code(path)
            return AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        except CustomCodeRefused as err:
            raise RecipeError("teacher", str(err)) from None
        except Exception as err:  # noqa: BLE001  (JSON, unknown model_type, ...: name the file whatever it is)
            raise RecipeError("teacher", f"{path / 'config.json'} is not a readable model config: {err}") from None
    if path.exists():
        raise RecipeError("teacher", f"{path} is a file but not a .gguf: give a model folder or a GGUF file")
    try:
        return AutoConfig.from_pretrained(resolved, local_files_only=not allow_download, trust_remote_code=False)
    except ValueError as err:  # a hub model that needs its own code, an unknown model_type
        raise RecipeError("teacher", f"{resolved}: {str(err).splitlines()[0]} (tm-distill never runs code from a "
                                     "model repository)") from None
    except OSError:
        log.info("teacher %s is a hub id that is not cached; checking the recipe schema only", resolved)
        return None


@dataclass
class StagePlan:
    index: int
    name: str
    steps: int
    seq_len: int
    tokens: int
    trainable: str
    lr: float
    precision: str
    transpoint_schedule: str
    generated: int = 0  # onpolicy: tokens the student samples (per process); not part of ``tokens``


@dataclass
class Plan:
    recipe: Recipe
    num_layers: int | None
    max_positions: int | None
    transpoints: list[int] | None  # None when auto (resolved at run time) or the teacher is not known
    stages: list[StagePlan]

    def lines(self) -> list[str]:
        r = self.recipe
        out = [f"recipe {r.name!r}: teacher {r.teacher}"
               + (f" ({self.num_layers} layers, max {self.max_positions} positions)" if self.num_layers else
                  " (not cached: schema checked only)"),
               f"student: {r.student or 'converted on the fly'}; output: {r.output_dir}; seed {r.seed}; "
               f"device {r.device}",
               f"data: {r.data.source} (seq_len {r.data.seq_len}, held-out {r.data.heldout_fraction:g})"]
        if self.transpoints is not None:
            out.append(f"transpoints: {r.transpoints} -> {describe_transpoints(self.transpoints)} "
                       f"(min P {min(self.transpoints)})")
        else:
            out.append(f"transpoints: {r.transpoints} (resolved when the run starts)")
        if r.calibrate is not None:
            c = r.calibrate
            seq_len = c.seq_len or r.data.seq_len
            windows = c.windows or default_windows(seq_len)
            out.append(f"calibrate: {windows} window(s) x {seq_len} tokens of "
                       f"{c.data or r.data.source} (training split), {c.heldout_windows} held-out")
        total = 0
        for s in self.stages:
            total += s.tokens
            out.append(f"  [{s.index}] {s.name:<7} {s.steps:>7} steps x {s.tokens // s.steps:>8} tokens = "
                       f"{s.tokens:>13,} tokens  seq_len {s.seq_len}  trainable {s.trainable}  lr {s.lr:g}  "
                       f"{s.precision}  transpoints {s.transpoint_schedule}")
            if s.name == "onpolicy":
                op = r.stages[s.index].on_policy
                out.append(f"      on-policy: {s.generated:,} tokens sampled by the student ({op.lmbda:g} of the "
                           f"micro-batches: {op.prompt_tokens} prompt + {op.new_tokens} new tokens each, temperature "
                           f"{op.temperature:g}), generalized JSD beta {op.beta:g}; the budget counts data windows")
        out.append(f"total: {total:,} tokens over {len(self.stages)} stage(s)")
        return out


def _check_output_dir(output_dir: str, teacher: str) -> None:
    from ..checkpoint import OutputExists  # noqa: PLC0415
    from ..conversion import check_apart  # noqa: PLC0415
    from .lock import busy_message, lock_holder  # noqa: PLC0415

    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise RecipeError("output_dir", f"{out} is a file, not a folder: give a new folder path for the run")
    try:
        check_apart(teacher, out)  # a run inside the teacher's folder would write among its files
    except OutputExists as err:
        raise RecipeError("output_dir", str(err).replace("give the student its own path, e.g. runs/student",
                                                         "give the run its own folder, e.g. runs/NAME")) from None
    if (holder := lock_holder(out)) is not None:
        raise RecipeError("", busy_message(out, holder))


def _check_ssm(options: dict) -> None:
    from ..conversion import SSMOptionError, check_ssm_options  # noqa: PLC0415

    try:
        check_ssm_options(options)
    except SSMOptionError as err:
        raise RecipeError(f"ssm.{err.key}", err.message) from None


def _check_lora(recipe: Recipe) -> None:
    """``trainable: lora`` needs peft, an extra: refused before any work when it is not installed."""
    from ..extras import available, install_hint  # noqa: PLC0415

    for i, stage in enumerate(recipe.stages):
        if stage.trainable == "lora" and not available("peft"):
            raise RecipeError(f"stages[{i}].trainable", f"lora needs peft, which is not installed: "
                                                        f"{install_hint('peft')}")


def _check_teacher_family(config: PretrainedConfig | None) -> None:
    from ..convert.seed import UnsupportedTeacher, teacher_adapter  # noqa: PLC0415

    if config is not None:
        try:
            teacher_adapter(config)
        except UnsupportedTeacher as err:
            raise RecipeError("teacher", str(err)) from None


def _check_student(student: str | None, teacher: PretrainedConfig | None) -> None:
    """``student:`` must be a TransMamba student folder with weights, converted from this teacher."""
    from ..checkpoint import (NotAStudent, StudentMismatch, StudentNotFound, check_student_of,  # noqa: PLC0415
                              check_student_weights, student_config_from)
    from ..convert.teacher import SHIPPED_TEACHER, UnreadableModel  # noqa: PLC0415

    if not student:
        return
    if student == SHIPPED_TEACHER or student.endswith(".gguf"):
        raise RecipeError("student", f"{student!r} is a teacher, not a student folder: give a folder made by "
                                     "`tm-distill convert` or a run's final/, or drop student: to convert the teacher")
    try:
        config = student_config_from(student)
        check_student_weights(student, config)
        if teacher is not None:
            check_student_of(config, teacher, student)
    except (StudentNotFound, NotAStudent, StudentMismatch, UnreadableModel) as err:
        raise RecipeError("student", str(err)) from None


def resolve_plan(recipe: Recipe, config: PretrainedConfig | None, processes: int = 1) -> Plan:
    """Check the recipe against the teacher's config (when known) and compute each stage's budget on
    ``processes`` processes (a stage's ``tokens`` is the run's budget: more processes, fewer steps)."""
    _check_output_dir(recipe.output_dir, recipe.teacher)
    _check_ssm(recipe.ssm)
    check_trackers(recipe.report_to)
    _check_lora(recipe)
    _check_teacher_family(config)
    _check_student(recipe.student, config)
    n_layers = getattr(config, "num_hidden_layers", None) if config is not None else None
    max_pos = getattr(config, "max_position_embeddings", None) if config is not None else None
    if max_pos is not None and recipe.data.seq_len > max_pos:
        raise RecipeError("data.seq_len", f"{recipe.data.seq_len} is longer than the teacher supports "
                                          f"(max_position_embeddings={max_pos})")
    calibrate_len = recipe.calibrate and recipe.calibrate.seq_len
    if max_pos is not None and calibrate_len and calibrate_len > max_pos:
        raise RecipeError("calibrate.seq_len", f"{calibrate_len} is longer than the teacher supports "
                                               f"(max_position_embeddings={max_pos})")
    stages = []
    for i, s in enumerate(recipe.stages):
        seq_len = recipe.stage_seq_len(s)
        if max_pos is not None and seq_len > max_pos:
            raise RecipeError(f"stages[{i}].seq_len", f"{seq_len} is longer than the teacher supports "
                                                      f"(max_position_embeddings={max_pos})")
        steps = s.total_steps(seq_len, processes)
        generated = 0
        if s.name == "onpolicy":
            from ..stages.onpolicy import generated_tokens  # noqa: PLC0415  (imports torch)

            generated = generated_tokens(s, steps)
        stages.append(StagePlan(i, s.name, steps, seq_len, steps * s.tokens_per_step(seq_len, processes), s.trainable,
                                s.optimizer.lr, s.precision, s.transpoint_schedule, generated))
        if s.loss.layers is not None and n_layers is not None and any(j >= n_layers for j in s.loss.layers):
            raise RecipeError(f"stages[{i}].loss.layers", f"layer indices must be < {n_layers}")
    try:  # checked only, not planned: an auto spec is planned when the run has the teacher and its data
        tps, _ = resolve_transpoints(recipe.transpoints, n_layers, seq_len=recipe.data.seq_len)
    except TransPointSpecError as err:
        raise RecipeError("transpoints", str(err)) from None
    return Plan(recipe, n_layers, max_pos, tps, stages)


def check_data(recipe: Recipe) -> list[str]:
    """Open ``data.source`` (and ``data.heldout_source``) and describe them; RecipeError naming the key when one
    does not exist, is empty or unreadable, or cannot spare held-out documents. Hub datasets are not
    downloaded here (they are opened when the run starts)."""
    from ..data.loading import DataSourceError, load_texts, looks_like_hub_dataset  # noqa: PLC0415

    lines = []
    d = recipe.data
    for key, source in (("data.source", d.source), ("data.heldout_source", d.heldout_source)):
        if not source:
            continue
        if looks_like_hub_dataset(source):
            lines.append(f"{key}: {source} (a hub dataset: opened when the run starts)")
            continue
        try:
            texts = load_texts(source, text_field=d.text_field)
        except DataSourceError as err:
            raise RecipeError(key, str(err)) from None
        chars = sum(len(t) for t in texts)
        lines.append(f"{key}: {source}: {len(texts):,} document(s), {chars:,} characters")
        if key == "data.source" and d.heldout_fraction > 0 and len(texts) < 2:
            raise RecipeError("data.heldout_fraction", f"{source} gives one document, too short to split: nothing "
                              "is left to train on after holding some out; give more text, or set "
                              "heldout_fraction: 0 with data.heldout_source")
    return lines


__all__ = ["Plan", "StagePlan", "check_data", "resolve_plan", "teacher_config"]
