"""Experiment tracking (recipe ``report_to``) through accelerate's trackers: TensorBoard, W&B, MLflow, ...

The trackers get what the run already records: the recipe, flattened, as hyperparameters when the run starts,
and every metrics.jsonl row as scalars (every finite number in it, tagged ``<stage_idx>-<stage>/<key>``) at a
run-wide step: the steps of earlier stages plus the stage's step, so the axis only grows (wandb drops a step
that goes back). Local trackers write under ``OUTPUT/trackers/<recipe name>/``. A resumed run logs again the
steps after the checkpoint it resumes from; metrics.jsonl drops them, a tracker shows both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..recipe import Recipe, RecipeError

TRACKERS_DIR = "trackers"


def check_trackers(names: list[str]) -> None:
    """RecipeError naming ``report_to[i]`` for a tracker accelerate does not know or that is not installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers  # noqa: PLC0415

    available = {str(t) for t in get_available_trackers()}
    for i, name in enumerate(names):
        if name not in LOGGER_TYPE_TO_CLASS:
            raise RecipeError(f"report_to[{i}]", f"unknown tracker {name!r}: choose from "
                                                 f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            hint = "pip install 'tm-distill[track]'" if name == "tensorboard" else f"pip install {name}"
            raise RecipeError(f"report_to[{i}]", f"{name} is not installed here: {hint}")


def accelerator_options(recipe: Recipe) -> dict:
    """``Accelerator(**...)`` arguments for the recipe's trackers ({} without any)."""
    if not recipe.report_to:
        return {}
    from accelerate.utils import ProjectConfiguration  # noqa: PLC0415

    out = Path(recipe.output_dir)
    return {"log_with": list(recipe.report_to),
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / TRACKERS_DIR))}


def hyperparameters(recipe: Recipe) -> dict[str, str | int | float | bool]:
    """The recipe as flat scalars: {"stages[0].optimizer.lr": 0.001, "data.source": "shakespeare", ...}; lists
    are JSON text and null is "null" (what every tracker's hyperparameter table takes)."""
    from .resume_check import flatten  # noqa: PLC0415

    def scalar(value):
        return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)

    return {key: scalar(value) for key, value in flatten(recipe.to_dict()).items()}


class Trackers:
    """The run's trackers: ``start`` stores the recipe, ``log`` a metrics row, ``close`` ends the run."""

    def __init__(self, accelerator, stage_steps: list[int]):
        self.accelerator = accelerator
        self.offsets = [sum(stage_steps[:i]) for i in range(len(stage_steps))]

    def start(self, recipe: Recipe) -> Trackers:
        self.accelerator.init_trackers(recipe.name, config=hyperparameters(recipe))
        return self

    def log(self, row: dict, step: int) -> None:
        """Every finite number of ``row`` at the run-wide step of its stage's ``step``."""
        idx = int(row.get("stage_idx", 0))
        prefix = f"{idx}-{row.get('stage', 'stage')}"
        values = {f"{prefix}/{key}": value for key, value in row.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        self.accelerator.log(values, step=self.offsets[idx] + step)

    def close(self) -> None:
        self.accelerator.end_training()


__all__ = ["TRACKERS_DIR", "Trackers", "accelerator_options", "check_trackers", "hyperparameters"]
