"""docs/recipes.md's key tables, written from the recipe schema (help, default and ``resume`` metadata).

    python -m tm_distill.recipe_docs            # rewrite the tables of docs/recipes.md in place
    python -m tm_distill.recipe_docs --check    # exit 1, naming the tables, when they differ from the schema

A table sits between ``<!-- keys: SECTION -->`` and ``<!-- /keys -->``, SECTION being a schema section
(``recipe`` for the top level, ``data``, ``stages[i]``, ``stages[i].loss``, ...: ``recipe_meta.sections``);
the table of what ``--resume`` may change between ``<!-- resume-safe -->`` and ``<!-- /resume-safe -->``.
Text outside the markers is left as it is. ``tests/test_recipe_docs.py`` fails when the docs drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

import yaml

from .recipe_meta import fields, resume_keys, sections

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
TOP = "recipe"
_REGION = re.compile(r"(?P<open><!-- (?:keys: (?P<section>\S+)|resume-safe) -->\n)(?P<body>.*?)"
                     r"(?P<close><!-- /(?:keys|resume-safe) -->)", re.S)
# one row per resume rule: (what, why it is safe); {keys} lists the rule's keys
_RESUME_ROWS = {
    "any": ("{keys}", "bookkeeping: the result does not change"),
    "moved": ("{keys}, compared as a resolved path (`runs/x/` and `/abs/runs/x` are one folder)",
              "a run moved to another folder continues where it is"),
    None: ("any key of a stage that has not started", "none of its work is done yet"),
    "in_progress": ("{keys} of the stage in progress", "to recover from a divergence; the new value applies from "
                                                        "the next step"),
    "longer": ("{keys} of the last stage while it is in progress, if longer",
               "the schedule stretches to the new length"),
}


def _yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _default(f: dataclasses.Field, tp, path: str) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        if dataclasses.is_dataclass(tp):
            return f"see `{path}:`"
        value = f.default_factory()
    else:
        return "required"
    return "—" if value is None else f"`{_yaml(value)}`"


def key_table(section: str) -> str:
    """The markdown table of one schema section's keys: key, default, meaning."""
    known = sections()
    path = "" if section == TOP else section
    if path not in known:
        raise KeyError(f"unknown recipe section {section!r}: one of {', '.join(s or TOP for s in known)}")
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for f, tp, is_list in fields(known[path]):
        child = (f"{path}.{f.name}" if path else f.name) + ("[i]" if is_list else "")
        meaning = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | {_default(f, tp, child)} | {meaning} |")
    return "\n".join(rows) + "\n"


def resume_table() -> str:
    """The markdown table of the keys ``--resume`` may change, rule by rule."""
    rows = ["| what | why it is safe |", "| --- | --- |"]
    for rule, (what, why) in _RESUME_ROWS.items():
        keys = ", ".join(f"`{k}`" for k in resume_keys(rule)) if rule else ""
        rows.append(f"| {what.format(keys=keys)} | {why} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` with every marked region rewritten from the schema."""
    def table(m: re.Match) -> str:
        body = key_table(m["section"]) if m["section"] else resume_table()
        return f"{m['open']}{body}{m['close']}"

    return _REGION.sub(table, text)


def documented_sections(text: str) -> list[str]:
    """The sections ``text`` has a marked key table for."""
    return [m["section"] for m in _REGION.finditer(text) if m["section"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tm_distill.recipe_docs", description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DOCS, help="the markdown file (docs/recipes.md)")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the tables are stale")
    args = parser.parse_args(argv)
    text = args.path.read_text()
    new = render(text)
    if args.check:
        if new != text:
            sys.stderr.write(f"{args.path}: key tables differ from the recipe schema; run python -m "
                             "tm_distill.recipe_docs\n")
            return 1
        return 0
    if new != text:
        args.path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
