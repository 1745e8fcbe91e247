"""Run a whole recipe: teacher -> (seeded or given) student -> stages in order -> OUTPUT/final + summary.json.

``run_recipe(recipe, resume=True)`` continues from the newest complete checkpoint: finished stages are
skipped and a mid-stage checkpoint continues with its optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_folder, atomic_write_file, link_or_copy
from ..card import write_card
from ..checkpoint import read_metadata
from ..recipe import Recipe, RecipeError, dump_recipe, parse_duration, recipe_key
from .checkpoint import ResumePoint, clean_temp, find_resume_point, read_seeded_kl, stage_dir, stage_folders
from .data import check_batches, heldout_windows
from .distributed import shard_teacher
from .loop import StageRun, TrainingDiverged, TrainingStopped, train_stage
from .metrics import METRICS_FILE, MetricsWriter
from .resolve import resolve_plan
from .resume_check import CHANGES_FILE, RECIPE_FILE, check_resume
from .tracking import Trackers, accelerator_options

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
SEED_DIR = "seed"  # the calibrated seed the stages start from
_SEEDED_FILE = "seeded_kl.json"
_CALIBRATION_FILE = "calibration.json"


@torch.no_grad()
def heldout_kl(student, teacher, windows: torch.Tensor, transpoints: list[int], *, batch_size: int = 4,
               chunk_size: int = 256) -> float:
    """Mean forward KL(teacher || student) per token over ``windows`` (n, t), on positions >= min P.

    Under bf16 autocast when either model holds bf16 weights (a bf16 run), in full precision otherwise.
    """
    from ..losses import chunked_distill_loss  # noqa: PLC0415
    from ..models.modeling import use_transpoints  # noqa: PLC0415

    device = next(student.parameters()).device
    total, count = 0.0, 0
    was_training = student.training
    student.eval()
    bf16 = any(p.dtype == torch.bfloat16 for p in (*student.parameters(), *teacher.parameters()))
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    with use_transpoints(student, transpoints), autocast:
        for rows in windows.split(batch_size):
            rows = rows.to(device)
            mask = torch.zeros(rows.shape, dtype=torch.bool, device=device)
            mask[:, min(min(transpoints), rows.shape[1]):] = True
            if not mask.any():
                continue
            s = student.model(input_ids=rows).last_hidden_state
            t = teacher.model(input_ids=rows).last_hidden_state
            kl = chunked_distill_loss(s, t, student.lm_head, teacher.lm_head, mask=mask, chunk_size=chunk_size)
            total += float(kl) * int(mask.sum())
            count += int(mask.sum())
    student.train(was_training)
    return total / max(count, 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(recipe: Recipe) -> str:
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device", "cuda was asked for but no CUDA device is available; use device=auto or cpu")
    return "cuda" if recipe.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def _resolve_transpoints(recipe: Recipe, teacher, documents, recorded: list[int] | None, device
                         ) -> tuple[list[int], str]:
    """The run's TransPoints; ``auto:`` is planned on ``documents``' (``run_documents``) training split at
    data.seq_len, the split the run's held-out windows come from."""
    from ..plan import resolve_transpoints  # noqa: PLC0415

    def training():  # planning never reads the held-out documents
        with recipe_key("data"):
            return documents.training(recipe.data.seq_len)

    with recipe_key("transpoints"):
        return resolve_transpoints(recipe.transpoints, teacher.model.config.num_hidden_layers, teacher=teacher,
                                   texts=training, seq_len=recipe.data.seq_len, seed=recipe.seed,
                                   device=device, recorded=recorded)


def _load_teacher(recipe: Recipe, dtype: torch.dtype, device: str):
    from ..convert import load_teacher  # noqa: PLC0415

    with recipe_key("teacher"):  # a teacher that is missing or unreadable names the recipe key
        return load_teacher(recipe.teacher, dtype=dtype, device=device)


def _copy_atomic(src: Path, dest: Path) -> None:
    with atomic_folder(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, copy_function=link_or_copy)  # no second copy of the bytes


def _teacher_samples(recipe: Recipe, teacher, device) -> list[str]:
    """Self-distillation text: ``data.teacher_samples`` chat completions sampled from the teacher (seeded)."""
    if not recipe.data.teacher_samples:
        return []
    from ..data.selfgen import sample_from_teacher  # noqa: PLC0415

    log.info("sampling %d texts of %d tokens from the teacher", recipe.data.teacher_samples,
             recipe.data.teacher_sample_tokens)
    return sample_from_teacher(teacher.model, teacher.tokenizer, recipe.data.teacher_samples,
                               recipe.data.teacher_sample_tokens, seed=recipe.seed, device=device,
                               batch_size=256 if device == "cuda" else 8)


def _calibrate(recipe: Recipe, student, teacher, out: Path, write: bool, documents=None) -> dict:
    """Calibrated seeding (``recipe.calibrate``) on the recipe's training split; returns the record.

    documents: the run's ``Documents`` of data.source; calibration on data.source takes its windows from them
    (tokenized once for the run) instead of loading and tokenizing the source again.
    """
    from ..convert.calibrate import CalibrationError, calibrate_student, calibration_table, calibration_windows  # noqa: PLC0415

    cal = recipe.calibrate
    source = cal.data or recipe.data.source
    own = documents is not None and source == recipe.data.source
    try:
        windows, held = calibration_windows(
            documents if own else source, teacher.tokenizer, cal.seq_len or recipe.data.seq_len, cal.windows,
            cal.heldout_windows, heldout_fraction=recipe.data.heldout_fraction, seed=recipe.seed,
            text_field=recipe.data.text_field)
    except CalibrationError as err:
        raise RecipeError("calibrate", str(err)) from None
    record = calibrate_student(student, teacher.model, windows, heldout=held, data=source, progress=write).to_dict()
    log.info("calibrated seeding:\n%s", calibration_table(record))
    if write:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / _CALIBRATION_FILE, record)
    return record


def run_recipe(recipe: Recipe, *, resume: bool = False, on_step: Callable[[int, int, float], None] | None = None,
               teacher=None, max_time: float | None = None, force: bool = False) -> dict:
    """Distill per ``recipe``; returns the summary (also written to OUTPUT/summary.json).

    resume: continue from the newest complete checkpoint under ``recipe.output_dir``.
    on_step: callback(stage_idx, step, loss) after each step; teacher: an already-loaded ``Teacher`` to
    use instead of loading ``recipe.teacher`` (tests). max_time: seconds (overrides ``recipe.max_time``).
    force: delete a run already in ``output_dir`` and start afresh (without it such a folder is refused).
    The run holds ``output_dir``'s lock throughout (``training.lock``: one run per folder).
    A stop from outside (SIGTERM/SIGINT, max_time) raises ``TrainingStopped`` after a checkpoint; in the last
    stage it first writes OUTPUT/final and a summary marked ``stopped``, so the run leaves a usable student.
    """
    from .lock import RunLock, write_failure  # noqa: PLC0415
    from .stopping import StopFlag  # noqa: PLC0415

    if resume and force:
        raise RecipeError("", "--resume continues the run in output_dir and --force deletes it: give one of them")
    main = os.environ.get("RANK", "0") == "0"  # under `accelerate launch` the first process holds the lock for all
    with RunLock(recipe.output_dir, enabled=main), \
            StopFlag(max_time if max_time is not None else parse_duration(recipe.max_time)) as stop:
        try:
            return _run(recipe, resume=resume, force=force, on_step=on_step, teacher=teacher, stop=stop)
        except (OSError, RuntimeError) as err:
            if not isinstance(err, (TrainingStopped, TrainingDiverged)) and \
                    (failed := write_failure(err, Path(recipe.output_dir))) is not None:
                raise failed from None
            raise


def _write_json(path: Path, data: dict) -> None:
    atomic_write_file(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))


def run_contents(out: Path) -> list[Path]:
    """What in ``out`` belongs to a run, whatever its recipe: stage folders, final/, metrics, summary, ..."""
    names = ("final", SEED_DIR, METRICS_FILE, SUMMARY_FILE, RECIPE_FILE, CHANGES_FILE, _SEEDED_FILE,
             _CALIBRATION_FILE, "tensorboard")
    return [p for _, p in stage_folders(out)] + [out / n for n in names if (out / n).exists()]


def _check_output_dir(recipe: Recipe, out: Path, resume: bool, force: bool, main_process: bool) -> None:
    """A fresh run never replaces another run's files unless ``force``; ``resume`` continues the same recipe."""
    found = run_contents(out)
    if resume and not found:
        log.warning("--resume: %s holds no run (no recipe.yaml, checkpoint or metrics): starting a new run there; "
                    "check the path if you meant to continue another one", out)
    elif resume:
        check_resume(recipe, out)  # a changed recipe is refused naming the keys; safe changes are recorded
    elif found and not force:
        listed = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise RecipeError("output_dir", f"{out} already holds a run ({listed}): pass --resume to continue it, "
                                        "--force to delete it and start afresh, or give a new output_dir")
    elif found and main_process:
        log.warning("--force: deleting the run in %s (%s) to start afresh", out, ", ".join(p.name for p in found))
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_documents(recipe: Recipe, tokenizer, texts: list[str] | None = None):
    """data.source's documents (``texts``, or loaded) under the run's split (data.heldout_fraction, seed): a
    ``data.windows.Documents`` every window of the run comes from."""
    from ..data.loading import load_texts  # noqa: PLC0415
    from ..data.windows import Documents  # noqa: PLC0415

    if texts is None:
        texts = load_texts(recipe.data.source, text_field=recipe.data.text_field)
    return Documents(texts, tokenizer, recipe.data.heldout_fraction, recipe.seed, recipe.data.source,
                     recipe.data.max_tokens)


def build_data(recipe: Recipe, teacher, texts, device: str, world: int) -> tuple[dict, torch.Tensor]:
    """Token windows per sequence length (source + teacher samples) and the held-out windows.

    texts: data.source's documents, or their ``run_documents`` (then shared with calibration).
    """
    from ..data.windows import Documents  # noqa: PLC0415

    docs = texts if isinstance(texts, Documents) else run_documents(recipe, teacher.tokenizer, texts)
    sampled = _teacher_samples(recipe, teacher, device)
    sampled = Documents(sampled, teacher.tokenizer, 0.0, recipe.seed) if sampled else None
    data = {}
    for seq_len in sorted({recipe.data.seq_len, *(recipe.stage_seq_len(s) for s in recipe.stages)}):
        data[seq_len] = docs.dataset(seq_len)  # capped by data.max_tokens; a new TokenData: changed below
        if recipe.data.mixture:
            _mix(recipe, teacher, data[seq_len], device)
        if sampled:  # training only: the held-out windows stay the source's own text
            extra = sampled.windows(seq_len)
            base = data[seq_len]
            base.train = torch.cat([base.train, extra.train])
            if base.train_doc_ids is not None and extra.train_doc_ids is not None:
                base.train_doc_ids = torch.cat([base.train_doc_ids, extra.train_doc_ids])
            base.meta["teacher_sample_windows"] = int(extra.train.shape[0])
    check_batches(recipe, data, world)
    return data, heldout_windows(recipe, teacher.tokenizer, data)


def _mix(recipe: Recipe, teacher, base, device: str) -> None:
    """Replace ``base``'s training windows by the recipe's data.mixture (its held-out windows stay)."""
    from ..data.mixture import MixtureContext, mixture_windows  # noqa: PLC0415

    ctx = MixtureContext(teacher, base.seq_len, recipe.seed, recipe.data.heldout_fraction, recipe.data.source,
                         base, recipe.data.text_field, device)
    try:
        base.train, base.train_doc_ids, base.meta["mixture"] = mixture_windows(recipe.data.mixture, ctx)
    except ValueError as err:
        raise RecipeError("data.mixture", str(err)) from None


def _load_checkpoint(path: Path):
    """The student saved in the run's checkpoint ``path``; CheckpointError when its files are unreadable."""
    from ..checkpoint import CheckpointError  # noqa: PLC0415
    from ..convert.teacher import UnreadableModel, load_weights  # noqa: PLC0415
    from ..models import TransMambaForCausalLM  # noqa: PLC0415

    try:
        return load_weights(TransMambaForCausalLM, path)
    except (UnreadableModel, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({str(err).splitlines()[0][:200]}): remove that "
                              "folder to resume from an earlier checkpoint, or start a new run in another "
                              "output_dir") from None


def _load_given_student(path: str):
    """The recipe's ``student:`` (checked against the teacher by ``resolve_plan``); its unreadable weights name
    the key."""
    from ..convert.teacher import UnreadableModel, load_weights  # noqa: PLC0415
    from ..models import TransMambaForCausalLM  # noqa: PLC0415

    try:
        return load_weights(TransMambaForCausalLM, path)
    except (UnreadableModel, OSError) as err:
        raise RecipeError("student", str(err).splitlines()[0]) from None


def save_dtype(recipe: Recipe, teacher) -> torch.dtype:
    """The dtype of the students the run leaves (``recipe.save_dtype``; "teacher": the teacher's own)."""
    from ..convert.dtype import teacher_dtype  # noqa: PLC0415

    if recipe.save_dtype == "teacher":
        return teacher_dtype(recipe.teacher, teacher.model.config)
    return getattr(torch, recipe.save_dtype)


def _save_seed(recipe: Recipe, student, teacher, out: Path, converted_kl: float | None) -> None:
    """OUTPUT/seed: the calibrated seed the stages start from, so an eval compares like with like."""
    from ..checkpoint import save_checkpoint  # noqa: PLC0415

    meta = {"recipe": recipe.name, "teacher": recipe.teacher, "stage": "seeded", "transpoints": student.config.transpoints,
            "transpoint_spec": recipe.transpoints, "calibration": student.config.calibration,
            "heldout_kl_converted": converted_kl}
    save_checkpoint(out / SEED_DIR, student, teacher.tokenizer, metadata=meta, dtype=save_dtype(recipe, teacher))


def build_student(recipe: Recipe, teacher, point: ResumePoint, transpoints: list[int], out: Path, device: str,
                  main_process: bool, heldout: torch.Tensor | None = None, documents=None):
    """The student to train: from the resume checkpoint, from ``recipe.student``, or seeded (and calibrated).

    A calibrated seed is saved as OUTPUT/seed (main process), with the held-out KL of the plain seed before
    calibration (``heldout``: the windows; kept in seeded_kl.json too) when ``heldout`` is given.
    documents: the run's ``run_documents``, which calibration on data.source reuses.
    """
    from ..convert import seed_student  # noqa: PLC0415

    if point.path is not None:
        log.info("resuming from %s (stage %d, step %d)", point.path, point.stage_idx, point.step)
        student = _load_checkpoint(point.path)
        student.config.transpoints = list(transpoints)
    elif recipe.student:
        student = _load_given_student(recipe.student)
        student.config.transpoints = list(transpoints)
    else:
        student = seed_student(teacher.model, transpoints, recipe.transpoints, recipe.teacher, seed=recipe.seed,
                               dtype=torch.float32, **recipe.ssm)
        if recipe.calibrate is not None:
            converted = None if heldout is None else heldout_kl(student, teacher.model, heldout, transpoints)
            _calibrate(recipe, student, teacher, out, main_process, documents)
            if main_process:
                _save_seed(recipe, student, teacher, out, converted)
    return student.to(device)


def _starting_kl(recipe: Recipe, student, teacher, heldout, transpoints, out: Path, resume: bool,
                 main_process: bool) -> dict:
    """The held-out KL of the student before training, and of the plain seed before calibration when the run
    calibrated it (None otherwise): {"heldout_kl", "heldout_kl_converted"}, kept from the first call on resume."""
    seeded_file = out / _SEEDED_FILE
    if seeded_file.exists() and resume:
        return {"heldout_kl_converted": None, **read_seeded_kl(seeded_file)}
    seed_meta = read_metadata(out / SEED_DIR) if recipe.calibrate is not None and not recipe.student else {}
    kls = {"heldout_kl": heldout_kl(student, teacher.model, heldout, transpoints),
           "heldout_kl_converted": seed_meta.get("heldout_kl_converted")}
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(seeded_file, kls)
        atomic_write_file(out / "recipe.yaml", lambda tmp: Path(tmp).write_text(dump_recipe(recipe)))
    return kls


def run_stages(recipe: Recipe, student, teacher, data: dict, heldout, transpoints: list[int], point: ResumePoint,
               accelerator, metrics, meta: dict, on_step, stop, dtype):
    """Train the stages from ``point`` on; returns (student, TrainingStopped of the last stage or None)."""
    from ..stages import get_stage_class  # noqa: PLC0415

    out = Path(recipe.output_dir)
    for idx in range(point.stage_idx, len(recipe.stages)):
        cfg = recipe.stages[idx]
        stage = get_stage_class(cfg.name)(cfg, student, teacher.model)
        tokens = data[recipe.stage_seq_len(cfg)]
        run = StageRun(idx, cfg, tokens.train, transpoints, recipe.seed, str(out), teacher.tokenizer, meta, on_step,
                       doc_ids=tokens.train_doc_ids, stop=stop, param_dtype=dtype,
                       evaluate=lambda s=stage: {"heldout_kl": heldout_kl(s.student, teacher.model, heldout,
                                                                           transpoints)},
                       save_dtype=save_dtype(recipe, teacher) if idx == len(recipe.stages) - 1 else None)
        state = point.state if idx == point.stage_idx else None
        try:
            train_stage(stage, run, accelerator, metrics, resume_state=state, distributed=recipe.distributed)
        except TrainingStopped as err:
            if idx < len(recipe.stages) - 1:
                raise
            return stage.student, err  # the last stage: leave its checkpoint as OUTPUT/final and a summary
        student = stage.student
    return student, None


def _run(recipe: Recipe, *, resume: bool, force: bool, on_step, teacher, stop) -> dict:
    from accelerate import Accelerator  # noqa: PLC0415

    device = _device(recipe)
    out = Path(recipe.output_dir)
    names = [s.name for s in recipe.stages]
    dtype = getattr(torch, recipe.run_dtype(device))
    accelerator = Accelerator(cpu=device == "cpu", **accelerator_options(recipe))
    _check_output_dir(recipe, out, resume, force, accelerator.is_main_process)
    if device == "cuda":  # this process's GPU (cuda:<local rank> under accelerate launch): "cuda" means it below
        torch.cuda.set_device(accelerator.local_process_index)
    teacher = teacher if teacher is not None else _load_teacher(recipe, dtype, device)
    teacher.model.eval().requires_grad_(False)
    plan = resolve_plan(recipe, teacher.model.config, accelerator.num_processes)
    _seed_everything(recipe.seed)
    with recipe_key("data.source"):
        documents = run_documents(recipe, teacher.tokenizer)
    with recipe_key("data"):
        data, heldout = build_data(recipe, teacher, documents, device, accelerator.num_processes)
    if accelerator.is_main_process:
        clean_temp(out)
    point = find_resume_point(out, names) if resume else ResumePoint(0, None, 0, None)
    recorded = read_metadata(point.path).get("transpoints") if point.path is not None else None  # what it chose
    transpoints, why = _resolve_transpoints(recipe, teacher, documents, recorded, device)
    if why:
        log.info("auto TransPoints: %s", why)
    student = build_student(recipe, teacher, point, transpoints, out, device, accelerator.is_main_process, heldout,
                            documents)
    del documents  # the source's uncapped windows: training reads ``data`` from here on
    if recipe.distributed.teacher == "shard" and accelerator.num_processes > 1:  # after seeding copied its weights
        shard_teacher(teacher.model, accelerator)
    seeded_kl = _starting_kl(recipe, student, teacher, heldout, transpoints, out, resume, accelerator.is_main_process)
    log.info("held-out KL of the starting student: %.5f", seeded_kl["heldout_kl"])

    def keep(row: dict) -> bool:
        return row["stage_idx"] < point.stage_idx or (row["stage_idx"] == point.stage_idx and row["step"] <= point.step)

    trackers = (Trackers(accelerator, [s.steps for s in plan.stages]).start(recipe)
                if recipe.report_to and accelerator.is_main_process else None)
    metrics = MetricsWriter(out, keep=keep if resume else None, enabled=accelerator.is_main_process, trackers=trackers)
    meta = {"recipe": recipe.name, "teacher": recipe.teacher, "transpoints": transpoints,
            "transpoint_spec": recipe.transpoints, "transpoint_explanation": why,
            "mixture": {str(n): d.meta["mixture"] for n, d in data.items() if "mixture" in d.meta} or None}
    try:
        student, stopped = run_stages(recipe, student, teacher, data, heldout, transpoints, point, accelerator,
                                      metrics, meta, on_step, stop, dtype)
    finally:
        metrics.close()
    summary = _summary(recipe, plan, student, teacher, heldout, transpoints, seeded_kl, stopped)
    if accelerator.is_main_process:
        last = stopped.checkpoint if stopped is not None else stage_dir(out, len(names) - 1, names[-1]) / "final"
        _copy_atomic(last, out / "final")
        _write_json(out / SUMMARY_FILE, summary)
        write_card(out / "final", training=_training_record(recipe, plan, summary, stopped))
    if stopped is not None:
        raise stopped
    return summary


def _change(before: float | None, after: float) -> float | None:
    return None if before is None else 100.0 * (after - before) / before if before > 0 else 0.0


def _summary(recipe: Recipe, plan, student, teacher, heldout, transpoints, kls: dict, stopped) -> dict:
    out = Path(recipe.output_dir)
    final_kl = heldout_kl(student, teacher.model, heldout, transpoints)
    seeded_kl, converted_kl = kls["heldout_kl"], kls["heldout_kl_converted"]
    seed = str(out / SEED_DIR) if (out / SEED_DIR).exists() else recipe.student
    summary = {"recipe": recipe.name, "teacher": recipe.teacher, "transpoints": transpoints,
               "heldout_windows": int(heldout.shape[0]), "heldout_seq_len": recipe.data.seq_len,
               "heldout_kl_converted": converted_kl, "heldout_kl_seeded": seeded_kl, "heldout_kl_distilled": final_kl,
               "heldout_kl_calibration_pct": _change(converted_kl, seeded_kl),
               "heldout_kl_change_pct": _change(seeded_kl, final_kl), "seed": seed,
               "stages": [{"name": p.name, "steps": p.steps, "tokens": p.tokens} for p in plan.stages],
               "calibration": getattr(student.config, "calibration", None) and {
                   k: student.config.calibration[k] for k in ("data", "windows", "seq_len", "seconds", "means")},
               "final": str(out / "final")}
    if stopped is not None:
        summary["stopped"] = {"reason": stopped.reason, "stage": stopped.stage, "step": stopped.step,
                              "checkpoint": str(stopped.checkpoint)}
    return summary


def _training_record(recipe: Recipe, plan, summary: dict, stopped) -> dict:
    """What the run trained, for OUTPUT/final's model card: stages with the steps and tokens done, the recipe."""
    stages = [{"name": p.name, "steps": p.steps, "tokens": p.tokens} for p in plan.stages]
    if stopped is not None:  # the last stage stopped early (max_time, a signal): count the steps it did
        last = stages[-1]
        last["tokens"], last["steps"] = last["tokens"] // max(last["steps"], 1) * stopped.step, stopped.step
    return {"recipe": recipe.to_dict(), "student": recipe.student, "stages": stages,
            "tokens_trained": sum(s["tokens"] for s in stages),
            "stopped": f"{stopped.reason} at step {stopped.step}" if stopped is not None else None,
            "heldout_kl": {"seeded": summary["heldout_kl_seeded"], "distilled": summary["heldout_kl_distilled"],
                           "windows": summary["heldout_windows"], "seq_len": summary["heldout_seq_len"],
                           "data": recipe.data.heldout_source or recipe.data.source}}


def kl_line(summary: dict) -> str:
    """'held-out KL: seeded X -> distilled Y (-Z%)'; a calibrated run says what calibration and training each gave:
    'held-out KL: converted W -> calibrated seed X (calibration -V%) -> distilled Y (training -Z%)'."""
    trained = f"distilled {summary['heldout_kl_distilled']:.4f}"
    if summary.get("heldout_kl_converted") is None:
        return f"held-out KL: seeded {summary['heldout_kl_seeded']:.4f} -> {trained} ({summary['heldout_kl_change_pct']:+.1f}%)"
    return (f"held-out KL: converted {summary['heldout_kl_converted']:.4f} -> calibrated seed "
            f"{summary['heldout_kl_seeded']:.4f} (calibration {summary['heldout_kl_calibration_pct']:+.1f}%) -> "
            f"{trained} (training {summary['heldout_kl_change_pct']:+.1f}%)")


__all__ = ["SEED_DIR", "SUMMARY_FILE", "heldout_kl", "save_dtype", "kl_line", "run_recipe"]
