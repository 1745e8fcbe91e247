"""The dtype a teacher was published in: students are saved in it unless a caller asks for another.

A Hugging Face folder or hub id says it in config.json (``dtype``, formerly ``torch_dtype``). A GGUF file says
its tensor type in the header: F32, F16 and BF16 files give that dtype; a quantized file (Q4_1, Q8_0, ...)
gives bfloat16, because its weights are integers of at most 8 bits times an fp16 scale: bfloat16's 8-bit
significand keeps every de-quantized weight within a fraction of the file's own quantization step, at half
fp32's bytes. The teacher itself is still de-quantized to fp32 (exactly) and computed in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..runtime import DTYPES
from .teacher import resolve_source

_GGUF_FLOAT_TYPES = {0: torch.float32, 1: torch.float16, 32: torch.bfloat16}  # general.file_type: ALL_F32, F16, BF16


def _config_dtype(config: dict) -> torch.dtype | None:
    name = str(config.get("dtype") or config.get("torch_dtype") or "").removeprefix("torch.")
    return DTYPES.get(name)


def _gguf_dtype(path: Path) -> torch.dtype:
    from gguf import GGUFReader  # noqa: PLC0415  (reads the header through a memory map)

    field = GGUFReader(str(path)).fields.get("general.file_type")
    file_type = int(field.contents()) if field is not None else None
    return _GGUF_FLOAT_TYPES.get(file_type, torch.bfloat16)


def teacher_dtype(source: str, config=None) -> torch.dtype:
    """The dtype ``source`` (HF folder, hub id, .gguf, the shipped alias) was published in; float32 if unknown.

    config: an already-loaded config of a hub-id teacher (its ``dtype``). A file that cannot be read gives
    float32 here: loading the teacher names what is wrong with it.
    """
    path = Path(resolve_source(source))
    try:
        if path.suffix == ".gguf":
            return _gguf_dtype(path)
        if (path / "config.json").exists():
            return _config_dtype(json.loads((path / "config.json").read_text())) or torch.float32
    except (OSError, ValueError):
        return torch.float32
    dtype = getattr(config, "dtype", None)
    return dtype if dtype in DTYPES.values() else torch.float32


__all__ = ["teacher_dtype"]
