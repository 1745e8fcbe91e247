"""The user-facing conversion API: check the options, convert a teacher into a seeded student checkpoint.

The checkpoint is written by ``tm_distill.checkpoint`` (atomically: an error leaves nothing at the output
path), which also reads it back; prompting and text generation live in ``tm_distill.generation``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig

from .atomic import remove_stale_temps
from .checkpoint import OutputExists, check_output, save_student
from .convert.calibrate import DEFAULT_CALIBRATION_DATA, CalibrationError, calibrate_student, calibration_windows
from .convert.dtype import teacher_dtype
from .convert.seed import seed_student
from .convert.teacher import SHIPPED_TEACHER, TeacherNotFound, load_teacher, resolve_source
from .convert.transpoints import is_auto_spec
from .data.windows import load_documents
from .errors import UserError
from .models.configuration import TransMambaConfig
from .ops import BACKENDS, FEATURE_MAPS
from .plan import resolve_transpoints
from .runtime import parse_device, parse_dtype
from .version import __version__

log = logging.getLogger(__name__)

# The config fields a user may set at conversion (everything TransMambaConfig adds but the bookkeeping).
SSM_OPTIONS = tuple(
    f.name for f in dataclasses.fields(TransMambaConfig)
    if f.name not in {g.name for g in dataclasses.fields(LlamaConfig)}
    and f.name not in ("transpoints", "transpoint_spec", "teacher", "teacher_model_type", "qkv_bias", "o_bias",
                       "calibration")
)


# Ranges of the numeric SSM options: (check, what it must be).
_SSM_RANGES = {
    "ssm_chunk_size": (lambda v: v >= 1, ">= 1"), "conv_kernel": (lambda v: v >= 1, ">= 1"),
    "dt_min": (lambda v: v > 0, "> 0"), "dt_max": (lambda v: v > 0, "> 0"), "dt_init_floor": (lambda v: v > 0, "> 0"),
    "a_init_min": (lambda v: v > 0, "> 0"), "a_init_max": (lambda v: v > 0, "> 0"),
}
_SSM_CHOICES = {"bc_feature_map": tuple(FEATURE_MAPS), "ssm_backend": BACKENDS}


class SSMOptionError(UserError, ValueError):
    """A conversion option that is unknown or has a bad value; ``key`` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(message, what=key)
        self.key = key


def check_ssm_options(options: dict) -> None:
    """Raise SSMOptionError for an option TransMambaConfig does not have, a wrong type or a bad value."""
    import difflib  # noqa: PLC0415

    hints = {f.name: f.type for f in dataclasses.fields(TransMambaConfig)}
    for key, value in options.items():
        if key not in SSM_OPTIONS:
            close = difflib.get_close_matches(str(key), SSM_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SSMOptionError(str(key), f"unknown SSM option{hint}; valid options: {', '.join(SSM_OPTIONS)}")
        kind = hints[key] if isinstance(hints[key], str) else hints[key].__name__
        ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
              "str": isinstance(value, str)}[kind]
        if not ok:
            what = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a string"}[kind]
            raise SSMOptionError(key, f"expected {what}, got {value!r}")
        if key in _SSM_RANGES and not _SSM_RANGES[key][0](value):
            raise SSMOptionError(key, f"must be {_SSM_RANGES[key][1]}, got {value}")
        if key in _SSM_CHOICES and value not in _SSM_CHOICES[key]:
            raise SSMOptionError(key, f"{value!r} is not one of {', '.join(_SSM_CHOICES[key])}")
    merged = {f.name: f.default for f in dataclasses.fields(TransMambaConfig) if f.name in SSM_OPTIONS} | options
    for lo, hi in (("dt_min", "dt_max"), ("a_init_min", "a_init_max")):
        if merged[lo] > merged[hi]:
            raise SSMOptionError(lo if lo in options else hi, f"{lo}={merged[lo]} is above {hi}={merged[hi]}")


def check_calibration_length(seq_len: int, config) -> None:
    """A calibration window must fit the teacher's context (a longer one is positions it never saw)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise CalibrationError(f"--calibrate-seq-len {seq_len} is beyond the teacher's context "
                               f"(max_position_embeddings={limit}): use at most {limit}")


def check_apart(teacher_source: str, out: Path) -> None:
    """Refuse an output that is the teacher, lies inside the teacher's folder, or holds the teacher (symlinks
    resolved): writing or replacing it would destroy the teacher."""
    try:
        resolved = Path(resolve_source(teacher_source))
    except TeacherNotFound:
        return  # reported when the teacher is loaded
    if not resolved.exists():
        return  # a hub id
    teacher, target = resolved.resolve(), out.expanduser().resolve()
    folder = teacher if teacher.is_dir() else teacher.parent
    if target == teacher or (teacher.is_dir() and folder in target.parents):
        raise OutputExists(f"output {out} is the teacher {teacher_source} ({teacher}) or inside its folder: "
                           "give the student its own path, e.g. runs/student")
    if target in teacher.parents:
        raise OutputExists(f"output {out} holds the teacher {teacher_source} ({teacher}): replacing it would delete "
                           "the teacher; give the student its own path, e.g. runs/student")


def _schedule(spec: str, teacher, calibrate: str | None, seed: int, device) -> tuple[list[int], str]:
    """Per-layer TransPoints of ``spec`` and, for ``auto:...``, the plan's explanation (planned on the training
    split of the calibration data, or the shipped corpus, with `tm-distill plan`'s defaults: the same schedule
    `plan` prints)."""
    return resolve_transpoints(
        spec, teacher.model.config.num_hidden_layers, teacher=teacher, seed=seed, device=device,
        texts=lambda: load_documents(calibrate or DEFAULT_CALIBRATION_DATA, teacher.tokenizer, whole_if_one=True))


def _calibrate(student, teacher, data: str, windows: int | None, seq_len: int | None, heldout: int, progress: bool):
    seq_len = seq_len or min(2048, teacher.model.config.max_position_embeddings)
    check_calibration_length(seq_len, teacher.model.config)
    calib, held = calibration_windows(data, teacher.tokenizer, seq_len, windows, heldout)
    return calibrate_student(student, teacher.model, calib, heldout=held, data=data, progress=progress)


# Over 60 lines with its 13-line docstring of the options; the body is 37 lines.
def convert(
    teacher_source: str,
    out_dir: str | Path,
    transpoints_spec: str,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    calibrate: str | None = None,
    calibrate_windows: int | None = None,
    calibrate_seq_len: int | None = None,
    calibrate_heldout: int = 1,
    **ssm_options,
) -> Path:
    """Convert a Llama-family teacher into a seeded TransMamba student checkpoint at ``out_dir``.

    teacher_source: HF folder, hub id, .gguf file or 'smollm2-135m'. transpoints_spec: see
    ``parse_transpoints``, or ``auto:kv_budget=25%`` (planned first, as `tm-distill plan` does).
    dtype: of the saved student; None: the teacher's (``teacher_dtype``). The teacher is loaded in it too (never
    a second fp32 copy), except a GGUF, computed in fp32 as de-quantized. ssm_options: TransMambaConfig
    switches (``SSM_OPTIONS``), e.g. use_z_gate=True. calibrate: a data source (``load_texts``: corpus name,
    file, folder, dataset) to fit the SSM additions to the teacher's attention on (``convert.calibrate``), or
    None to keep the plain init. calibrate_windows (default: 4096 tokens' worth) windows of calibrate_seq_len
    tokens (default min(2048, the teacher's context)) from its training split; calibrate_heldout held-out
    windows for the before/after errors. Nothing is written unless the whole conversion succeeds.
    """
    check_apart(teacher_source, Path(out_dir))  # before any work
    out = check_output(out_dir, force)
    gguf = teacher_source == SHIPPED_TEACHER or str(teacher_source).endswith(".gguf")
    save_dtype = teacher_dtype(teacher_source) if dtype is None else parse_dtype(dtype)
    load_dtype = torch.float32 if gguf else save_dtype
    parse_device(device)
    remove_stale_temps(out)  # what a killed conversion to this path left behind
    check_ssm_options(ssm_options)
    if calibrate is not None and ssm_options.get("use_z_gate"):
        raise CalibrationError("calibration fits the SSM's output gain, which the z gate's RMSNorm removes: "
                               "drop --z-gate or --calibrate")
    desc = "load teacher" + (" (a GGUF is de-quantized once, ~15 s)" if gguf else "")
    steps = tqdm(total=3 if calibrate is None else 4, desc=desc, disable=not progress,
                 bar_format="{desc} [{n}/{total}] {elapsed}")
    with steps:
        teacher = load_teacher(teacher_source, dtype=load_dtype, device=device)
        steps.update()
        steps.set_description("plan TransPoints" if is_auto_spec(transpoints_spec) else "seed student")
        transpoints, why = _schedule(transpoints_spec, teacher, calibrate, seed, device)
        recorded = SHIPPED_TEACHER if teacher_source == SHIPPED_TEACHER else teacher.source
        student = seed_student(
            teacher.model, transpoints, transpoints_spec, recorded, seed=seed, dtype=load_dtype, **ssm_options
        )
        steps.update()
        record = None
        if calibrate is not None:
            steps.set_description(f"calibrate on {calibrate}")
            record = _calibrate(student, teacher, calibrate, calibrate_windows, calibrate_seq_len,
                                calibrate_heldout, progress)
            steps.update()
        steps.set_description(f"write {out}")
        metadata = _metadata(teacher_source, teacher, transpoints_spec, transpoints, save_dtype, seed, ssm_options,
                             record, why)
        path = save_student(student.to(save_dtype), teacher.tokenizer, out, metadata, force=force)
        steps.update()
    return path


def _metadata(teacher_source: str, teacher, transpoints_spec: str, transpoints: list[int], dtype: torch.dtype,
              seed: int, ssm_options: dict, record, explanation: str = "") -> dict:
    """What ``tm_distill.json`` records about a converted student: its teacher, schedule and calibration."""
    return {
        "tool": "tm-distill",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stage": "seeded",
        "teacher": {"source": teacher_source, "resolved": teacher.source,
                    "model_type": teacher.model.config.model_type},
        "transpoint_spec": transpoints_spec,
        "transpoints": transpoints,
        "transpoint_explanation": explanation,
        "dtype": str(dtype).removeprefix("torch."),
        "seed": seed,
        "ssm_options": ssm_options,
        "calibration": None if record is None else record.to_dict(),
    }


__all__ = ["SSMOptionError", "SSM_OPTIONS", "check_apart", "check_calibration_length", "check_ssm_options", "convert"]
