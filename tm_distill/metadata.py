"""A student folder's record of where it came from: ``tm_distill.json`` (``META_FILE``) and reading it back.

Plain files only (no torch), so that both ``checkpoint`` (which writes a student folder) and ``card`` (which
renders its model card from this record) read it from here.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

META_FILE = "tm_distill.json"


class CheckpointError(UserError):
    """A training checkpoint that cannot be read back: corrupt, truncated, or not plain data."""


def read_metadata(path: str | Path) -> dict:
    """The checkpoint's ``tm_distill.json`` ({} when it has none); CheckpointError naming it when it is no JSON
    object (cut short, overwritten)."""
    meta = Path(path) / META_FILE
    if not meta.exists():
        return {}
    try:
        record = json.loads(meta.read_text())
    except ValueError as err:  # bad JSON or bytes that are not UTF-8 alike
        record = err
    if not isinstance(record, dict):
        reason = str(record).splitlines()[0][:200] if isinstance(record, ValueError) else "not a JSON object"
        raise CheckpointError(f"{meta} cannot be read ({reason}): the checkpoint is corrupt; copy it again from a good "
                              "copy, or in a run remove that checkpoint folder to resume from an earlier one")
    return record


__all__ = ["META_FILE", "CheckpointError", "read_metadata"]
