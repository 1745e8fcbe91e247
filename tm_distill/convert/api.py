"""The user-facing conversion API: convert a teacher, save and load students, generate text.

Checkpoints are written atomically: everything goes into a temporary sibling folder (``.tmp-<name>-*``) that
is renamed into place with ``os.replace``, so an error leaves nothing at the output path. A checkpoint is a
plain Hugging Face folder (safetensors, config.json with the TransPoints, tokenizer with its chat template,
generation_config.json) plus ``tm_distill.json``, a small record of where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from ..atomic import atomic_folder, remove_stale_temps
from ..models.configuration import TransMambaConfig
from .calibrate import CalibrationError, calibrate_student, calibration_windows
from .seed import seed_student
from .teacher import (SHIPPED_TEACHER, TeacherNotFound, load_teacher, load_weights, parse_device, read_config,
                      resolve_source)
from .transpoints import parse_transpoints

log = logging.getLogger(__name__)

META_FILE = "tm_distill.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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
_SSM_CHOICES = {"bc_feature_map": ("identity", "silu", "elu1", "relu"), "ssm_backend": ("auto", "torch", "mamba_ssm")}


class SSMOptionError(ValueError):
    """A conversion option that is unknown or has a bad value; ``key`` names it."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


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


class OutputExists(FileExistsError):
    pass


class StudentNotFound(FileNotFoundError):
    pass


class NotAStudent(ValueError):
    pass


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_output(out_dir: str | Path, force: bool) -> Path:
    """Refuse an existing ``out_dir`` unless ``force``; with force, refuse a folder that is not a checkpoint."""
    out = Path(out_dir).expanduser()
    if not out.exists():
        return out
    if not force:
        raise OutputExists(f"output {out} already exists: pass --force (force=True) to replace it")
    if out.is_dir() and any(out.iterdir()) and not ((out / "config.json").exists() or (out / META_FILE).exists()):
        raise OutputExists(f"output {out} is a non-empty folder that is not a checkpoint; refusing to replace it")
    if not out.is_dir():
        raise OutputExists(f"output {out} is a file, not a checkpoint folder; remove it or pick another path")
    return out


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


def save_student(model, tokenizer, out_dir: str | Path, metadata: dict | None = None, force: bool = False) -> Path:
    """Write model (+ generation config), tokenizer and ``tm_distill.json`` to ``out_dir`` atomically.

    An existing ``out_dir`` is an error unless ``force``; then it is replaced only once the new checkpoint
    is complete. Returns the output path.
    """
    out = check_output(out_dir, force)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(metadata or {}, indent=2, default=str) + "\n")
    log.info("saved student to %s", out)
    return out


def convert(
    teacher_source: str,
    out_dir: str | Path,
    transpoints_spec: str,
    dtype: str | torch.dtype = "float32",
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
    ``parse_transpoints``. ssm_options: TransMambaConfig switches (``SSM_OPTIONS``), e.g. use_z_gate=True.
    calibrate: a data source (``load_texts``: corpus name, file, folder, dataset) to fit the SSM additions to
    the teacher's attention on (``convert.calibrate``), or None to keep the plain init. calibrate_windows
    (default: 4096 tokens' worth) windows of calibrate_seq_len tokens (default min(2048, the teacher's
    context)) from its training split;
    calibrate_heldout held-out windows for the before/after errors. Nothing is written unless the whole
    conversion succeeds.
    """
    check_apart(teacher_source, Path(out_dir))  # before any work
    out = check_output(out_dir, force)
    torch_dtype = parse_dtype(dtype)
    parse_device(device)
    remove_stale_temps(out)  # what a killed conversion to this path left behind
    check_ssm_options(ssm_options)
    if calibrate is not None and ssm_options.get("use_z_gate"):
        raise CalibrationError("calibration fits the SSM's output gain, which the z gate's RMSNorm removes: "
                               "drop --z-gate or --calibrate")
    gguf = teacher_source == SHIPPED_TEACHER or str(teacher_source).endswith(".gguf")
    desc = "load teacher" + (" (a GGUF is de-quantized once, ~15 s)" if gguf else "")
    steps = tqdm(total=3 if calibrate is None else 4, desc=desc, disable=not progress,
                 bar_format="{desc} [{n}/{total}] {elapsed}")
    with steps:
        teacher = load_teacher(teacher_source, dtype=torch_dtype, device=device)  # never a second fp32 copy
        transpoints = parse_transpoints(transpoints_spec, teacher.model.config.num_hidden_layers)
        steps.update()
        steps.set_description("seed student")
        recorded = SHIPPED_TEACHER if teacher_source == SHIPPED_TEACHER else teacher.source
        student = seed_student(
            teacher.model, transpoints, transpoints_spec, recorded, seed=seed, dtype=torch_dtype, **ssm_options
        )
        steps.update()
        record = None
        if calibrate is not None:
            steps.set_description(f"calibrate on {calibrate}")
            seq_len = calibrate_seq_len or min(2048, teacher.model.config.max_position_embeddings)
            windows, held = calibration_windows(calibrate, teacher.tokenizer, seq_len, calibrate_windows,
                                                calibrate_heldout)
            record = calibrate_student(student, teacher.model, windows, heldout=held, data=calibrate)
            steps.update()
        steps.set_description(f"write {out}")
        metadata = {
            "tool": "tm-distill",
            "version": _version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stage": "seeded",
            "teacher": {"source": teacher_source, "resolved": teacher.source,
                        "model_type": teacher.model.config.model_type},
            "transpoint_spec": transpoints_spec,
            "transpoints": transpoints,
            "dtype": str(torch_dtype).removeprefix("torch."),
            "seed": seed,
            "ssm_options": ssm_options,
            "calibration": None if record is None else record.to_dict(),
        }
        path = save_student(student, teacher.tokenizer, out, metadata, force=force)
        steps.update()
    return path


def _version() -> str:
    from .. import __version__  # noqa: PLC0415

    return __version__


def read_metadata(path: str | Path) -> dict:
    meta = Path(path) / META_FILE
    return json.loads(meta.read_text()) if meta.exists() else {}


def student_config_from(path: str | Path) -> TransMambaConfig:
    """The config of the student checkpoint at ``path``; clear errors for a missing folder or a non-student."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StudentNotFound(
            f"student {path} does not exist: create one with `tm-distill convert TEACHER {path} --transpoints SPEC`"
        )
    if not (path / "config.json").exists():
        raise StudentNotFound(f"{path} has no config.json: it is not a model checkpoint folder")
    config = read_config(path)
    if not isinstance(config, TransMambaConfig):
        raise NotAStudent(
            f"{path} holds a {config.model_type!r} model, not a TransMamba student: "
            f"convert it first with `tm-distill convert {path} OUT --transpoints SPEC`"
        )
    return config


def load_student(path: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a student checkpoint: (model in eval mode, tokenizer). dtype None keeps the checkpoint's."""
    device = parse_device(device)
    student_config_from(path)
    model = load_weights(AutoModelForCausalLM, path, dtype=parse_dtype(dtype) if dtype is not None else "auto")
    model = model.to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise StudentNotFound(f"{path} has no usable tokenizer ({err}); re-create it with `tm-distill convert`") from err
    return model, tokenizer


def encode_prompt(tokenizer, prompt: str, chat: bool = False) -> torch.Tensor:
    """Token ids (1, t) of ``prompt``; with ``chat`` as a user turn in the tokenizer's chat template."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template: drop --chat")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return tokenizer(prompt, return_tensors="pt").input_ids


class PromptTooLong(ValueError):
    pass


class PromptTooShort(ValueError):
    pass


def decode_cache(model, batch_size: int, max_length: int):
    """The cache generation should decode with: for a student, a static KV cache (fixed-shape steps) whose
    one-token steps replay CUDA graphs on a GPU; None for any other model (it makes its own)."""
    from ..models import TransMambaCache, TransMambaForCausalLM  # noqa: PLC0415

    if not isinstance(model, TransMambaForCausalLM):
        return None
    graphs = model.device.type == "cuda" and not model.config.use_conv
    return TransMambaCache(model.config.num_hidden_layers, max_length=max_length, graphs=graphs)


@torch.no_grad()
def generate_texts(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
    seed: int = 0,
) -> list[tuple[str, torch.Tensor]]:
    """Continue several prompts in one left-padded batch: [(text, new token ids (n,))] in prompt order.

    Each row's TransPoints count from its own first token, so a row continues exactly as its prompt alone.
    """
    if not prompts or any(not p.strip() for p in prompts):
        raise PromptTooShort("the prompt is empty: give the text to continue, e.g. --prompt \"Once upon a time\"")
    encoded = [encode_prompt(tokenizer, p, chat)[0] for p in prompts]
    for p, ids in zip(prompts, encoded):
        if ids.numel() == 0:
            raise PromptTooShort(f"the prompt {p!r} encodes to no tokens: give some text to continue")
    width = max(ids.numel() for ids in encoded)
    limit = model.config.max_position_embeddings
    if width >= limit:
        raise PromptTooLong(
            f"the prompt is {width} tokens but the model handles at most {limit} "
            "(max_position_embeddings): shorten it"
        )
    if width + max_new_tokens > limit:
        log.warning("only %d new tokens fit in the model's %d positions", limit - width, limit)
        max_new_tokens = limit - width
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = torch.full((len(encoded), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for r, ids in enumerate(encoded):  # left padding: every row ends at the same column
        batch[r, width - ids.numel():] = ids
        mask[r, width - ids.numel():] = 1
    batch, mask = batch.to(model.device), mask.to(model.device)
    torch.manual_seed(seed)
    sample = temperature > 0
    extra = {}
    cache = decode_cache(model, len(encoded), width + max_new_tokens)
    if cache is not None:
        from ..models.cache import CACHE_KWARG  # noqa: PLC0415

        extra[CACHE_KWARG] = cache
    out = model.generate(
        batch, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=temperature if sample else None, top_p=None, top_k=None, pad_token_id=pad_id, **extra,
    )
    return [(tokenizer.decode(row[width:], skip_special_tokens=True), row[width:]) for row in out]


def generate_text(
    model, tokenizer, prompt: str, max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, torch.Tensor]:
    """Greedy (temperature 0) or sampled continuation of ``prompt``. Returns (text, new token ids (n,))."""
    return generate_texts(model, tokenizer, [prompt], max_new_tokens, chat, temperature, seed)[0]


__all__ = ["DTYPES", "META_FILE", "NotAStudent", "OutputExists", "PromptTooLong", "PromptTooShort", "SSMOptionError",
           "SSM_OPTIONS", "StudentNotFound", "check_apart", "check_output", "check_ssm_options", "convert",
           "decode_cache", "encode_prompt", "generate_text", "generate_texts", "load_student", "parse_dtype",
           "read_metadata", "save_student", "student_config_from"]
