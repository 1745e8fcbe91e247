"""Training metrics: one JSON object per logged step in OUTPUT/metrics.jsonl, and the recipe's trackers
(``report_to``: TensorBoard, W&B, ... through accelerate, ``training.tracking``)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsFileError(UserError):
    """A metrics.jsonl damaged before its last line."""


def read_metrics(output_dir: str | Path) -> list[dict]:
    """Every row of a run's metrics.jsonl, in order (empty when there is none).

    A torn last line (the run died, or the disk filled, mid-append) is left out with a warning; a damaged
    line before it is a ``MetricsFileError`` naming the line.
    """
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    rows = []
    for k, (i, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if k < len(lines) - 1:
                raise MetricsFileError(f"{path} line {i} is not JSON ({err.msg}): the file is damaged; delete that "
                                       "line to continue the run") from None
            log.warning("%s: ignoring its torn last line %d (an interrupted write)", path, i)
    return rows


def json_safe(row: dict) -> dict:
    """NaN and inf become null: JSON has no such numbers (json.dumps would write the invalid ``Infinity``)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


class MetricsWriter:
    """Append rows to OUTPUT/metrics.jsonl and hand them to the run's trackers (``training.tracking.Trackers``).

    keep: on resume, a predicate choosing which existing rows stay (rows logged after the checkpoint the
    run resumes from are dropped, so the file reads as one uninterrupted run). enabled: False on non-main
    processes. trackers: None without ``report_to``; closed with the writer.
    """

    def __init__(self, output_dir: str | Path, keep: Callable[[dict], bool] | None = None, enabled: bool = True,
                 trackers=None):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self.trackers = trackers
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_metrics(output_dir) if keep is not None else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)) if keep else "")

    def write(self, row: dict, global_step: int | None = None) -> None:
        """One row; ``global_step``: the stage's step the trackers place it at (None: the file only)."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
        if self.trackers is not None and global_step is not None:
            self.trackers.log(row, global_step)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


__all__ = ["METRICS_FILE", "MetricsFileError", "MetricsWriter", "json_safe", "read_metrics"]
