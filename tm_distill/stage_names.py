"""Which stages exist and what they may train: plain data, read by the recipe schema and by the stage registry.

A leaf module (no torch, no tm_distill imports), so checking a recipe's stage names loads no model code and
``recipe.py`` and ``stages/`` need not import each other. A new stage is one line in ``STAGES``.
"""

from __future__ import annotations

import difflib

# stage name (a recipe's ``stages[i].name``) -> "module:Class" of its ``stages.base.Stage`` subclass
STAGES: dict[str, str] = {
    "matrix": "tm_distill.stages.matrix:MatrixStage",
    "hidden": "tm_distill.stages.hidden:HiddenStage",
    "logits": "tm_distill.stages.logits:LogitsStage",
    "onpolicy": "tm_distill.stages.onpolicy:OnPolicyStage",
}

# parameter sets ``stages.base.select_parameters`` knows; "lora" (LoRA adapters + the SSM set) is the logits
# stage's own
TRAINABLE_SETS = ("ssm", "mixer", "all")
TRAINABLE = (*TRAINABLE_SETS, "lora")


def unknown_stage(name: str) -> str:
    """The message for a stage name that is not in ``STAGES``, with the closest valid name as a hint."""
    close = difflib.get_close_matches(name, STAGES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown stage {name!r}{hint}; valid stages: {', '.join(STAGES)}"


__all__ = ["STAGES", "TRAINABLE", "TRAINABLE_SETS", "unknown_stage"]
