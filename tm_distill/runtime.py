"""Where this process computes and keeps its files: dtype and device names, and the cache folder.

Every floor of the package takes these as inputs (``convert`` loads a teacher on a device, ``checkpoint`` a
student in a dtype, ``data`` caches corpora and token windows), so they live below all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class DeviceError(UserError, ValueError):
    """A device string torch does not know, or a device this machine does not have."""


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists here: 'cpu', 'cuda', 'cuda:1', 'mps'; DeviceError otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {str(device)!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {str(device)!r}: no CUDA GPU is available here (torch {torch.__version__}); "
                              "use cpu")
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r}: Apple MPS is not available here; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(device)!r} is not supported: use cpu, cuda or cuda:N")
    return dev


def cache_dir() -> Path:
    """``$TM_DISTILL_CACHE``, else ``~/.cache/tm-distill``: de-quantized teachers, corpora, token windows."""
    return Path(os.environ.get("TM_DISTILL_CACHE", Path.home() / ".cache" / "tm-distill"))


__all__ = ["DTYPES", "DeviceError", "cache_dir", "parse_device", "parse_dtype"]
