"""YAML reading with a bound on what aliases expand to.

``yaml.safe_load`` runs no code, but aliases (``&a [*b, *b, ...]``) let a few hundred bytes stand for
billions of values; whatever walks the result (validation, copies, ``dataclasses.asdict``) then takes minutes
and all memory. ``load`` counts the nodes the document stands for, aliases expanded, before building
anything, and refuses more than ``MAX_NODES`` (a recipe has a few hundred).
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 100_000


class TooLarge(yaml.YAMLError):
    """A document whose aliases expand to more than ``MAX_NODES`` nodes (or into themselves)."""


def _expanded(node: yaml.Node, memo: dict[int, float]) -> float:
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = float("inf")  # an alias of a node still being counted refers to itself
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded(k, memo) + _expanded(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


class _BoundedLoader(yaml.SafeLoader):
    def compose_document(self):
        node = super().compose_document()
        if node is not None and (size := _expanded(node, {})) > MAX_NODES:
            what = "refers to itself" if size == float("inf") else f"expands to {int(size):,} values"
            raise TooLarge(f"its aliases (*name) make it too large: it {what}, more than {MAX_NODES:,}; write the "
                           "values out without nested aliases")
        return node


def load(text: str) -> Any:
    """``yaml.safe_load(text)`` that refuses documents whose aliases expand past ``MAX_NODES``."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506  (a SafeLoader subclass)


def describe(err: yaml.YAMLError) -> str:
    """One line for a YAML error: its problem and where (PyYAML's own message quotes the text over several lines)."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if not problem:
        return " ".join(str(err).split())
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


__all__ = ["MAX_NODES", "TooLarge", "describe", "load"]
