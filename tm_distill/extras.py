"""Optional dependencies: the pyproject.toml extra that brings each, and one error naming it when it is missing.

A feature that needs one checks it before any work (``require``), so a missing package is one line naming the
feature and the ``pip install`` that adds it, never an ImportError halfway through a run.
"""

from __future__ import annotations

import importlib.util

from .errors import UserError

# import name -> the extra of pyproject.toml that installs it (tests/test_dependencies.py checks they match)
EXTRAS = {"matplotlib": "plots", "peft": "lora", "lm_eval": "eval", "tensorboard": "track", "mamba_ssm": "gpu"}


class MissingExtra(UserError, ImportError):
    """A feature was asked for whose optional dependency is not installed."""


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def install_hint(module: str) -> str:
    return f"pip install 'tm-distill[{EXTRAS[module]}]'"


def require(module: str, feature: str) -> None:
    """MissingExtra naming ``feature`` and the extra to install unless ``module`` is importable."""
    if not available(module):
        raise MissingExtra(f"{feature} needs {module}, which is not installed: {install_hint(module)}")


__all__ = ["EXTRAS", "MissingExtra", "available", "install_hint", "require"]
