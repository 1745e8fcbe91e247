"""Distillation stages behind one interface (``base.Stage``), loaded lazily by name.

``STAGES`` maps a stage name (what a recipe's ``stages[i].name`` says) to ``"module:Class"``.
"""

from __future__ import annotations

import importlib

from .base import Stage, TRAINABLE_SETS, freeze_except, select_parameters, use_transpoints

STAGES: dict[str, str] = {
    "matrix": "tm_distill.stages.matrix:MatrixStage",
    "hidden": "tm_distill.stages.hidden:HiddenStage",
    "logits": "tm_distill.stages.logits:LogitsStage",
    "onpolicy": "tm_distill.stages.onpolicy:OnPolicyStage",
}


class UnknownStage(ValueError):
    pass


def get_stage_class(name: str) -> type[Stage]:
    """The Stage subclass for ``name``; a typo raises UnknownStage listing the valid names."""
    if name not in STAGES:
        import difflib

        close = difflib.get_close_matches(name, STAGES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownStage(f"unknown stage {name!r}{hint}; valid stages: {', '.join(STAGES)}")
    module, attr = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["STAGES", "Stage", "TRAINABLE_SETS", "UnknownStage", "freeze_except", "get_stage_class",
           "select_parameters", "use_transpoints"]
