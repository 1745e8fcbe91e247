"""metrics.jsonl after an interrupted append: a torn last line is left out (resume works), earlier damage is
a one-line error naming the line."""

from __future__ import annotations

import json

import pytest

from tm_distill.training.metrics import METRICS_FILE, MetricsFileError, MetricsWriter, read_metrics


def _write(tmp_path, text: str):
    (tmp_path / METRICS_FILE).write_text(text)


def test_a_torn_last_line_is_ignored_and_dropped_on_resume(tmp_path):
    rows = [{"stage_idx": 0, "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    _write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows) + '{"stage_idx": 0, "step": 4, "lo')
    assert read_metrics(tmp_path) == rows
    writer = MetricsWriter(tmp_path, keep=lambda r: r["step"] <= 2)  # what --resume from step 2 does
    writer.write({"stage_idx": 0, "step": 3, "loss": 0.5})
    writer.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert all(json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines())


def test_damage_before_the_last_line_names_the_line(tmp_path):
    _write(tmp_path, '{"step": 1}\n{"step": 2, \n{"step": 3}\n')
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl line 2 is not JSON .*delete that line"):
        read_metrics(tmp_path)
