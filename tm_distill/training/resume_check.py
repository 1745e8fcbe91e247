"""``--resume`` continues the run its output folder holds, so the recipe must be the one that run started with.

The run's ``recipe.yaml`` is compared with the recipe given to ``--resume``. A key may differ only where the
work already done stays what the recipe says; each key's ``resume`` metadata in ``recipe.py`` says where
(``recipe.RESUME_RULES``):

- ``any``: anywhere (``device``, ``max_time``, each stage's ``checkpoint_every``, ...: bookkeeping);
- ``moved``: ``output_dir``, compared as resolved paths (``runs/x/`` and an absolute path are the same
  folder; a run moved elsewhere continues where it is);
- a stage that has not started yet (no checkpoint of it or of a later stage): any of its keys but ``name``;
- ``in_progress``: also in the stage in progress (its ``optimizer.lr`` and ``precision``, to recover from a
  divergence);
- ``longer``: also in the last stage while it is in progress, when they make it longer (``steps``/``tokens``).

Everything else (teacher, TransPoints, data, seed, ssm, the stage list, finished stages) is refused, naming
each differing key. Allowed changes are recorded: appended to ``OUTPUT/recipe_changes.jsonl`` (when, at which
stage and step, old and new values) and ``OUTPUT/recipe.yaml`` becomes the recipe the run continues with.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import safe_yaml
from ..atomic import atomic_write_file
from ..recipe import Recipe, RecipeError, dump_recipe, recipe_from_dict
from ..recipe_meta import resume_keys, resume_rule
from .checkpoint import locate_resume_point

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
CHANGES_FILE = "recipe_changes.jsonl"


@dataclass
class Change:
    key: str  # dotted path, stages as stages[i]
    old: Any
    new: Any
    why: str  # why it is allowed or refused

    def describe(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r} ({self.why})"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"stages[0].optimizer.lr": 0.001, "data.seq_len": 256, ...}; lists other than stages stay values."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "stages" and not prefix and isinstance(value, list):
                for i, stage in enumerate(value):
                    out.update(flatten(stage, f"stages[{i}]"))
            else:
                out.update(flatten(value, path))
        return out
    return {prefix: tree}


def _stage_key(key: str) -> tuple[int, str] | None:
    if not key.startswith("stages["):
        return None
    idx, _, rest = key[len("stages["):].partition("].")
    return int(idx), rest


def classify(old: Recipe, new: Recipe, next_stage: int, steps_done: int) -> tuple[list[Change], list[Change]]:
    """(allowed, refused) differences between the run's recipe ``old`` and ``new``, given where it resumes:
    ``next_stage`` is the stage to run next, ``steps_done`` the steps of it already checkpointed."""
    old_names, new_names = [s.name for s in old.stages], [s.name for s in new.stages]
    if old_names != new_names:
        return [], [Change("stages", old_names, new_names, "the run's stage list cannot change")]
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    allowed, refused = [], []
    last = len(new.stages) - 1
    for key in sorted(set(a) | set(b), key=lambda k: (k.startswith("stages["), k)):
        if a.get(key) == b.get(key):
            continue
        change = Change(key, a.get(key), b.get(key), "")
        where, rule = _stage_key(key), resume_rule(key)
        if rule == "moved":
            ok, change.why = True, "the run's folder moved: it continues where it is"
        elif where is None:
            ok = rule == "any"
            change.why = "does not change the result" if ok else "the work done so far depends on it"
        else:
            idx, sub = where
            started = idx < next_stage or (idx == next_stage and steps_done > 0)
            if rule == "any":
                ok, change.why = True, "bookkeeping"
            elif not started:
                ok, change.why = True, f"stage {idx} has not started"
            elif idx < next_stage:
                ok, change.why = False, f"stage {idx} ({new_names[idx]}) is finished"
                if rule == "longer" and idx == last:
                    change.why += ("; to train longer, start a new run from its result with "
                                   f"student: {Path(new.output_dir) / 'final'}")
            elif rule == "in_progress":
                ok, change.why = True, f"stage {idx} continues from step {steps_done} with it"
            elif rule == "longer" and idx == last:
                seq_len = new.stage_seq_len(new.stages[idx])
                before, after = old.stages[idx].total_steps(seq_len), new.stages[idx].total_steps(seq_len)
                ok = after >= before
                change.why = (f"the last stage runs {after} steps instead of {before}" if ok else
                              f"the last stage would shrink from {before} to {after} steps; only longer is allowed")
            else:
                ok = False
                change.why = (f"stage {idx} is in progress (step {steps_done}); only its {_stage_keys('in_progress')}"
                              f" may change" + (f", and its {_stage_keys('longer')} to run longer" if idx == last
                                                else ""))
        (allowed if ok else refused).append(change)
    return allowed, refused


def _stage_keys(rule: str) -> str:
    """"optimizer.lr, precision": a stage's keys with ``rule``, without the ``stages[i].`` prefix."""
    return ", ".join(sorted(k.removeprefix("stages[i].") for k in resume_keys(rule) if k.startswith("stages[i].")))


def safe_on_resume() -> str:
    """What ``--resume`` accepts, from the schema's ``resume`` metadata, as one sentence for an error."""
    anywhere = ", ".join(k for k in resume_keys("any") + resume_keys("moved") if not k.startswith("stages["))
    return (f"{anywhere}; each stage's {_stage_keys('any')}; the {_stage_keys('in_progress')} of the stage in "
            f"progress; the {_stage_keys('longer')} of the last stage (longer only); any key of a stage that has "
            "not started")


def check_resume(recipe: Recipe, output_dir: str | Path) -> list[Change]:
    """Refuse resuming ``output_dir`` with a recipe that differs from its recipe.yaml beyond the safe keys
    (RecipeError naming every differing key); record and return the allowed changes."""
    out = Path(output_dir)
    path = out / RECIPE_FILE
    if not path.exists():
        return []  # the run stopped before writing it: nothing was done that a recipe must match
    try:
        old = recipe_from_dict(safe_yaml.load(path.read_text()) or {})
    except (RecipeError, yaml.YAMLError, UnicodeDecodeError) as err:
        reason = safe_yaml.describe(err) if isinstance(err, yaml.YAMLError) else " ".join(str(err).split())
        raise RecipeError("", f"cannot read the run's {path} ({reason[:200]}): resume with the tm-distill version "
                              "that started the run, or start a new run in another output_dir") from None
    if Path(old.output_dir).expanduser().resolve() == out.expanduser().resolve():
        old.output_dir = recipe.output_dir  # the same folder, written another way (runs/x/, an absolute path)
    next_stage, _, steps_done = locate_resume_point(out, [s.name for s in old.stages])
    allowed, refused = classify(old, recipe, next_stage, steps_done)
    if refused:
        lines = "\n".join(f"  {c.describe()}" for c in refused)
        raise RecipeError("", (
            f"--resume continues the run in {out} with the recipe it started with ({path}), but these keys "
            f"differ:\n{lines}\nRevert them (or leave out the overrides), or start a new run with another "
            f"output_dir. Safe to change on resume: {safe_on_resume()}."))
    if allowed:
        _record(out, recipe, allowed, next_stage, steps_done)
    return allowed


def _record(out: Path, recipe: Recipe, changes: list[Change], stage: int, step: int) -> None:
    entry = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "resumed_stage": stage,
             "resumed_step": step, "changes": {c.key: {"old": c.old, "new": c.new, "why": c.why} for c in changes}}
    with (out / CHANGES_FILE).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    atomic_write_file(out / RECIPE_FILE, lambda tmp: Path(tmp).write_text(dump_recipe(recipe)))
    for c in changes:
        log.warning("resuming with a changed recipe: %s", c.describe())


def apply_peak_lr(optimizer, scheduler, lr: float) -> None:
    """After loading a resumed optimizer and LambdaLR, use the recipe's peak ``lr`` (and the schedule's current
    factor, which depends on the stage's possibly longer total) for the next step."""
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


__all__ = ["CHANGES_FILE", "Change", "apply_peak_lr", "check_resume", "classify", "flatten", "safe_on_resume"]
