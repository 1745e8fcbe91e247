"""A recipe key's facts, read from the schema's field metadata (``recipe_parse.described``): its help text, its default
and what ``--resume`` may do with it. ``training/resume_check.py`` and ``recipe_docs`` read them here, so a new
key is described once, where it is declared.

Keys are dotted paths from ``Recipe``; list items are written ``[i]``: ``stages[i].optimizer.lr``,
``data.mixture[i].weight``. A section is the dataclass at such a path: ``data``, ``stages[i].loss``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from .recipe import Recipe
from .recipe_parse import RESUME_RULES

_INDEX = re.compile(r"\[(?:\d+|i)\]")


def _unwrap(tp) -> tuple[Any, bool]:
    """(the dataclass or type under ``X | None`` and ``list[X]``, whether a list was unwrapped)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def fields(cls) -> list[tuple[dataclasses.Field, Any, bool]]:
    """(field, the type under Optional/list, whether it is a list) for each field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return [(f, *_unwrap(hints[f.name])) for f in dataclasses.fields(cls)]


def sections(cls=Recipe, prefix: str = "") -> dict[str, type]:
    """{"": Recipe, "data": DataConfig, "data.mixture[i]": MixtureEntry, "stages[i]": StageConfig, ...}."""
    out = {prefix: cls}
    for f, tp, is_list in fields(cls):
        if dataclasses.is_dataclass(tp):
            path = f"{prefix}.{f.name}" if prefix else f.name
            out.update(sections(tp, path + ("[i]" if is_list else "")))
    return out


def resume_rule(key: str) -> str | None:
    """The ``resume`` rule of a recipe key (``stages[2].optimizer.lr``, ``data.seq_len``, ``ssm.use_conv``): that
    of the deepest schema field on its path that has one; None where none has (a fixed key)."""
    cls, rule = Recipe, None
    for part in _INDEX.sub("", key).split("."):
        found = [(f, tp) for f, tp, _ in fields(cls) if f.name == part] if cls is not None else []
        if not found:
            break
        f, tp = found[0]
        rule = f.metadata.get("resume") or rule
        cls = tp if dataclasses.is_dataclass(tp) else None
    return rule


def resume_keys(rule: str) -> list[str]:
    """Every leaf key with the ``resume`` rule ``rule``, top-level keys first: ["device", ...,
    "stages[i].checkpoint_every", ...]."""
    if rule not in RESUME_RULES:
        raise ValueError(f"unknown resume rule {rule!r}: one of {RESUME_RULES}")
    out = []
    for path, cls in sections().items():
        for f, tp, _ in fields(cls):
            key = f"{path}.{f.name}" if path else f.name
            if not dataclasses.is_dataclass(tp) and resume_rule(key) == rule:
                out.append(key)
    return out


__all__ = ["fields", "resume_keys", "resume_rule", "sections"]
