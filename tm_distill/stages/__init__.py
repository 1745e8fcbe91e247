"""Distillation stages behind one interface (``base.Stage``), loaded lazily by name.

``STAGES`` (defined in ``tm_distill.stage_names``, which the recipe schema reads too) maps a stage name (what a
recipe's ``stages[i].name`` says) to ``"module:Class"``.
"""

from __future__ import annotations

import importlib

from ..errors import UserError
from ..stage_names import STAGES, TRAINABLE_SETS, unknown_stage
from .base import Stage, freeze_except, select_parameters, use_transpoints


class UnknownStage(UserError, ValueError):
    pass


def get_stage_class(name: str) -> type[Stage]:
    """The Stage subclass for ``name``; a typo raises UnknownStage listing the valid names."""
    if name not in STAGES:
        raise UnknownStage(unknown_stage(name))
    module, attr = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["STAGES", "Stage", "TRAINABLE_SETS", "UnknownStage", "freeze_except", "get_stage_class",
           "select_parameters", "use_transpoints"]
