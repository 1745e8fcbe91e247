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
from transformers import AutoModelForCausalLM, AutoTokenizer

from .atomic import atomic_folder
from .card import write_card
from .convert.teacher import load_weights, parse_device, parse_dtype, read_config
from .models.configuration import TransMambaConfig
from .models.remote_code import write_code

log = logging.getLogger(__name__)

META_FILE = "tm_distill.json"
STATE_FILE = "training_state.pt"


class OutputExists(FileExistsError):
    pass


class StudentNotFound(FileNotFoundError):
    pass


class NotAStudent(ValueError):
    pass


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


def save_checkpoint(
    dest: str | Path, model, tokenizer=None, training_state: dict | None = None, metadata: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None, card: bool = False,
) -> Path:
    """Write a checkpoint to ``dest`` atomically (temp folder + os.replace); an existing ``dest`` is replaced.

    model: the student (``save_pretrained``); state_dict: weights to save instead of the model's own (e.g.
    with LoRA merged); training_state: what ``--resume`` needs; metadata: small JSON-able facts; card: write
    the model card (README.md) too, for a final student folder.
    """
    dest = Path(dest)
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        write_code(tmp)  # loadable without tm_distill: AutoModelForCausalLM(..., trust_remote_code=True)
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
    return save_checkpoint(check_output(out_dir, force), model, tokenizer, metadata=metadata, card=True)


def read_metadata(path: str | Path) -> dict:
    """The checkpoint's ``tm_distill.json`` ({} when it has none)."""
    meta = Path(path) / META_FILE
    return json.loads(meta.read_text()) if meta.exists() else {}


def read_training_state(path: str | Path) -> dict:
    """The checkpoint's ``training_state.pt`` (optimizer, scheduler, RNG, step, data position)."""
    return torch.load(Path(path) / STATE_FILE, weights_only=False)


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


__all__ = ["META_FILE", "NotAStudent", "OutputExists", "STATE_FILE", "StudentNotFound", "check_output",
           "load_student", "read_metadata", "read_training_state", "save_checkpoint", "save_student",
           "student_config_from"]
