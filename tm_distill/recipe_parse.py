"""Strict parsing of the recipe's dataclasses from YAML mappings, apart from the schema (``recipe.py``).

``from_dict`` builds a dataclass from a mapping and fails on an unknown key, a wrong type or a bad value with a
``RecipeError`` naming the full key path (``stages[1].optimizer.lr: must be > 0``); ``apply_overrides`` applies
``key=value`` pairs with dotted paths (list items by index or, for named items such as stages, by name, the value
parsed as YAML); ``described`` declares a field with its facts (help, default, what ``--resume`` may change),
which ``recipe_meta`` reads and ``recipe_docs`` turns into docs/recipes.md's tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import safe_yaml
from .errors import UserError


class RecipeError(UserError, ValueError):
    """A bad recipe; ``key`` is the full dotted path of the offending entry, ``file`` the recipe's path once
    known (``recipe_file``): ``str(err)`` is then ``bad recipe FILE: KEY: MESSAGE``."""

    def __init__(self, key: str, message: str, file: str | None = None):
        super().__init__(message, what=key or None)
        self.key, self.file = key, file

    def __str__(self) -> str:
        text = super().__str__()
        return f"bad recipe {self.file}: {text}" if self.file else text


@contextlib.contextmanager
def recipe_file(path: str | Path):
    """A RecipeError raised inside names the recipe file ``path`` (what the user typed)."""
    try:
        yield
    except RecipeError as err:
        if err.file is None:
            err.file = str(path)
        raise


@contextlib.contextmanager
def recipe_key(key: str):
    """A user error raised inside (a data source that does not exist, a teacher that cannot load, ...) becomes a
    RecipeError naming ``key``, the recipe entry that gave the input."""
    try:
        yield
    except RecipeError:
        raise
    except UserError as err:
        raise RecipeError(key, str(err)) from None


# What ``--resume`` may change, as a field's ``resume`` metadata (``training/resume_check.py`` reads it; the
# docs' table is generated from it). A key without one changes only in a stage that has not started.
RESUME_RULES = ("any", "moved", "in_progress", "longer")
#   any:         anywhere, any time: bookkeeping that leaves the result unchanged
#   moved:       output_dir, compared as a resolved path: a run moved to another folder continues there
#   in_progress: also in the stage in progress, from its next step (a lower lr after a divergence)
#   longer:      also in the last stage while it is in progress, when the stage gets longer


def described(text: str, default: Any = dataclasses.MISSING, *, resume: str | None = None) -> Any:
    """A dataclass field with its facts in its metadata: help text, default and ``resume`` (one of
    RESUME_RULES, or None); a class or list/dict default becomes a factory. ``python -m
    tm_distill.recipe_docs`` writes docs/recipes.md's key tables from them."""
    if resume not in (None, *RESUME_RULES):
        raise ValueError(f"resume={resume!r}: choose from {RESUME_RULES} or None")
    meta = {"help": text, "resume": resume}
    if isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise RecipeError(key, message)


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds in ``text`` ("90", "90s", "8m", "1h30m", "1.5h"), None for None; ValueError otherwise."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m or not any(m.groups()) or not str(text).strip():
            raise ValueError(f"{text!r} is not a duration: write e.g. 90s, 8m, 1h30m or a number of seconds")
        seconds = sum(float(v) * unit for v, unit in zip(m.groups(), (3600.0, 60.0, 1.0)) if v)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r} must be a positive, finite duration")
    return seconds


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, key: str):
    """Check ``value`` against the annotation ``tp`` (ints are accepted for floats); returns the value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except RecipeError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        check(value in choices, key, f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        check(isinstance(value, list), key, f"expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp)
        return [_coerce(arg, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected a number, got {type(value).__name__} {value!r}")
        check(math.isfinite(value), key, f"must be a finite number, got {value}")
        return float(value)
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key,
               f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        check(isinstance(value, str), key, f"expected a string, got {type(value).__name__} {value!r}")
        return value
    raise RecipeError(key, f"unsupported type {_type_name(tp)}")


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a mapping, strictly; errors carry the full key path."""
    check(isinstance(data, dict), path or "recipe", f"expected a mapping, got {type(data).__name__}")
    data = dict(data)
    if hasattr(cls, "expand_shorthand"):  # e.g. a stage's ``lr`` for ``optimizer.lr``
        data = cls.expand_shorthand(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"{prefix}{key}", f"unknown key{hint}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            key = f"{prefix}{name}"
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{prefix}{name}", f"missing required key ({f.metadata.get('help', '')})")
    try:
        return cls(**kwargs)
    except RecipeError as err:
        raise RecipeError(f"{prefix}{err.key}", err.message) from None


def set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):
            if part.isdigit():
                idx = int(part)
            else:  # a stage addressed by name
                names = [s.get("name") if isinstance(s, dict) else None for s in node]
                if names.count(part) != 1:
                    raise RecipeError(where, f"no single list item named {part!r}; use an index 0..{len(node) - 1} "
                                             f"or one of {names}")
                idx = names.index(part)
            check(idx < len(node), where, f"index {idx} out of range (the list has {len(node)} items)")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        else:
            check(isinstance(node, dict), where, "cannot index into a scalar")
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key=value`` overrides (dotted paths; values parsed as YAML) to a raw recipe mapping."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise RecipeError(item, "override must look like key=value, e.g. stages.logits.steps=50")
        key, text = item.split("=", 1)
        try:
            value = safe_yaml.load(text) if text.strip() else None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise RecipeError(key.strip(), f"{text!r} is not a YAML value ({problem}); to give it as text, quote it: "
                                           f"{key.strip()}='\"{text}\"'") from None
        set_path(raw, key.strip(), value)
    return raw


__all__ = ["RESUME_RULES", "RecipeError", "apply_overrides", "check", "described", "from_dict", "parse_duration",
           "recipe_file", "recipe_key", "set_path"]
