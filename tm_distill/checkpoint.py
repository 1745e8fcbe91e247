"""A student checkpoint on disk: the one place that writes and reads it, for `convert` and for training alike.

A checkpoint is a plain Hugging Face folder (safetensors, config.json with the TransPoints and an ``auto_map``,
the modeling code that ``auto_map`` names (``models.remote_code``), tokenizer with its chat template,
generation_config.json) plus ``tm_distill.json`` (``META_FILE``), a small record of where it came from (teacher,
stage, step, metrics), and, for a training checkpoint, ``training_state.pt`` (``STATE_FILE``: optimizer,
scheduler, RNG, step, data position) for ``--resume``.

Writes are atomic: everything goes into a temporary sibling folder (``.tmp-<name>-*``) that is renamed into
place with ``os.replace``, so an error or a crash never leaves a half-written checkpoint under a real name.
Where a run's checkpoints go and which one to resume from is ``training.checkpoint``'s job.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from .atomic import DENIED, FULL, OutputNotWritable, atomic_folder
from .card import write_card
from .convert.teacher import (SHIPPED_TEACHER, CustomCodeRefused, UnreadableModel, load_tokenizer, load_weights,
                              read_config)
from .errors import UserError
from .metadata import META_FILE, CheckpointError, read_metadata
from .models.configuration import TransMambaConfig
from .models.remote_code import write_code
from .runtime import parse_device, parse_dtype

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"


class OutputExists(UserError, FileExistsError):
    pass


class OutputInTheWay(OutputExists):
    """``out_dir`` exists and replacing it was not asked for (a caller's own flag, e.g. the CLI's --force)."""

    def __init__(self, path: Path):
        super().__init__(f"output {path} already exists: pass force=True to replace it")
        self.path = path


class StudentNotFound(UserError, FileNotFoundError):
    pass


class NotAStudent(UserError, ValueError):
    pass


class StudentMismatch(UserError, ValueError):
    """A student whose shapes or teacher family are not this teacher's, or whose weights differ from its config."""


def check_output(out_dir: str | Path, force: bool) -> Path:
    """Refuse an existing ``out_dir`` unless ``force``; with force, refuse a folder that is not a checkpoint."""
    out = Path(out_dir).expanduser()
    if not out.exists():
        return out
    if not force:
        raise OutputInTheWay(out)
    if out.is_dir() and any(out.iterdir()) and not ((out / "config.json").exists() or (out / META_FILE).exists()):
        raise OutputExists(f"output {out} is a non-empty folder that is not a checkpoint; refusing to replace it")
    if not out.is_dir():
        raise OutputExists(f"output {out} is a file, not a checkpoint folder; remove it or pick another path")
    return out


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype``; tied tensors (one storage) stay one tensor, so they are saved once."""
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for k, v in state_dict.items():
        key = (v.data_ptr(), v.shape, v.stride())
        if key not in cast:
            cast[key] = v.to(dtype) if v.is_floating_point() else v
        out[k] = cast[key]
    return out


def _record_dtype(folder: Path, dtype: torch.dtype) -> None:
    """save_pretrained writes the model's own dtype into config.json; the tensors were cast: say theirs."""
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_checkpoint(
    dest: str | Path, model, tokenizer=None, training_state: dict | None = None, metadata: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None, card: bool = False, dtype: torch.dtype | None = None,
) -> Path:
    """Write a checkpoint to ``dest`` atomically (temp folder + os.replace); an existing ``dest`` is replaced.

    model: the student (``save_pretrained``); state_dict: weights to save instead of the model's own (e.g.
    with LoRA merged); training_state: what ``--resume`` needs; metadata: small JSON-able facts; card: write
    the model card (README.md) too, for a final student folder; dtype: the floating tensors' dtype on disk (None:
    as they are; the model itself is left as it is).
    """
    dest = Path(dest)
    if dtype is not None:
        state_dict = _cast(state_dict if state_dict is not None else model.state_dict(), dtype)
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        write_code(tmp)  # loadable without tm_distill: AutoModelForCausalLM(..., trust_remote_code=True)
        if dtype is not None:
            _record_dtype(tmp, dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(metadata or {}, indent=2, default=str) + "\n")
        if card:
            write_card(tmp)
    log.info("saved checkpoint %s", dest)
    return dest


def save_student(model, tokenizer, out_dir: str | Path, metadata: dict | None = None, force: bool = False) -> Path:
    """Write model (+ generation config), tokenizer, ``tm_distill.json`` and the model card to ``out_dir``
    atomically.

    An existing ``out_dir`` is an error unless ``force``; then it is replaced only once the new checkpoint
    is complete. Returns the output path.
    """
    out = check_output(out_dir, force)
    try:
        return save_checkpoint(out, model, tokenizer, metadata=metadata, card=True)
    except OSError as err:
        if err.errno not in FULL + DENIED:
            raise
        raise OutputNotWritable(f"output {out} is not writable ({err.strerror}): give a folder you can write to, "
                                "on a disk with free space") from None




def read_training_state(path: str | Path) -> dict:
    """The checkpoint's ``training_state.pt`` (optimizer, scheduler, RNG, step, data position).

    Read with ``weights_only=True``: only tensors, numbers, strings and containers of them load, so a file
    planted in a shared run folder cannot run code. Anything else is a ``CheckpointError``.
    """
    file = Path(path) / STATE_FILE
    try:
        return torch.load(file, weights_only=True)
    except Exception as err:  # noqa: BLE001  (zip, pickle and EOF errors alike: name the file)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{file} cannot be read as plain training state ({reason[:200]}): it is truncated, corrupt, or holds "
            "pickled objects, which tm-distill never loads; remove that checkpoint folder to resume from an "
            "earlier one, or start a new run in another output_dir") from None


def student_config_from(path: str | Path) -> TransMambaConfig:
    """The config of the student checkpoint at ``path``; clear errors for a missing folder or a non-student."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StudentNotFound(_missing_student(path))
    if not (path / "config.json").exists():
        raise StudentNotFound(f"{path} has no config.json: it is not a model checkpoint folder")
    config = read_config(path)
    if not isinstance(config, TransMambaConfig):
        raise NotAStudent(
            f"{path} holds a {config.model_type!r} model, not a TransMamba student: "
            f"convert it first with `tm-distill convert {path} OUT --transpoints SPEC`"
        )
    return config


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# The teacher's fields a student's weight shapes follow (``head_dim`` is derived where a config has none).
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim")


def check_student_weights(path: str | Path, config: TransMambaConfig) -> None:
    """Refuse a student folder without weight files, or whose embedding is not config.json's vocab x hidden."""
    from safetensors import safe_open  # noqa: PLC0415

    path = Path(path).expanduser()
    if not any((path / name).exists() for name in WEIGHT_FILES):
        raise StudentNotFound(f"student {path} has no weights (no model.safetensors): copy the whole folder, or "
                              "re-create it with `tm-distill convert`")
    try:
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            shape = list(f.get_slice("model.embed_tokens.weight").get_shape())
    except Exception:  # noqa: BLE001  (sharded, .bin or corrupt: loading the weights names the problem)
        return
    if shape != [config.vocab_size, config.hidden_size]:
        raise StudentMismatch(f"student {path}: config.json says vocab_size {config.vocab_size} x hidden_size "
                              f"{config.hidden_size} but its weights hold a {shape[0]} x {shape[1]} embedding: the "
                              "config was edited or belongs to another model; re-create it with `tm-distill convert`")


def _shape(config, field: str):
    if field == "head_dim":
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return getattr(config, field, None)


def check_student_of(student: TransMambaConfig, teacher, where: str | Path) -> None:
    """Refuse a student that was not converted from a teacher with ``teacher``'s config (its model family and
    every shape in ``SHAPE_FIELDS``), naming what differs."""
    diffs = [f"{f} {_shape(student, f)} (teacher {_shape(teacher, f)})" for f in SHAPE_FIELDS
             if _shape(student, f) != _shape(teacher, f)]
    family = getattr(student, "teacher_model_type", None)
    if family and family != teacher.model_type:
        diffs.insert(0, f"converted from a {family!r} model (teacher {teacher.model_type!r})")
    if diffs:
        raise StudentMismatch(f"{where} is a student of another teacher ({getattr(student, 'teacher', None) or '?'}): "
                              f"{', '.join(diffs)}; convert this teacher with `tm-distill convert TEACHER OUT`")


def _missing_student(path: Path) -> str:
    """Why ``path`` is no student and the command that makes one (a teacher source is converted, not inspected)."""
    example = "--transpoints cycle=0,64,128,256"
    if str(path) == SHIPPED_TEACHER or path.suffix == ".gguf":
        return (f"{path} is a teacher, not a student folder: convert it first, e.g. "
                f"`tm-distill convert {path} runs/student {example}`, then give runs/student")
    return f"student {path} does not exist: create one with `tm-distill convert TEACHER {path} {example}`"


def load_student(path: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a student checkpoint: (model in eval mode, tokenizer). dtype None keeps the checkpoint's."""
    device = parse_device(device)
    check_student_weights(path, student_config_from(path))
    model = load_weights(AutoModelForCausalLM, path, dtype=parse_dtype(dtype) if dtype is not None else "auto")
    model = model.to(device).eval()
    try:
        tokenizer = load_tokenizer(path, f"the tokenizer of student {path}")
    except CustomCodeRefused:
        raise
    except UnreadableModel as err:
        raise StudentNotFound(f"{err}; re-create it with `tm-distill convert`") from None
    return model, tokenizer


__all__ = ["CheckpointError", "META_FILE", "NotAStudent", "OutputExists", "OutputInTheWay", "SHAPE_FIELDS", "STATE_FILE",
           "StudentMismatch", "StudentNotFound", "WEIGHT_FILES", "check_output", "check_student_of",
           "check_student_weights", "load_student", "read_metadata", "read_training_state", "save_checkpoint", "save_student",
           "student_config_from"]
