"""benchmarks/report.py: docs/benchmarks.md's generated section is what it renders from the recorded results, and
a newer folder's columns (batch-1 decode against the weight-read bound, distillation throughput) are rendered."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _section(text: str) -> str:
    from benchmarks.report import END, START

    return text.split(START)[1].split(END)[0]


def test_the_docs_generated_section_is_what_report_renders_from_its_folder(tmp_path):
    from benchmarks import report

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"notes before\n{report.START}\nold tables\n{report.END}\nnotes after\n")
    report.main([str(RESULTS / "2026-11-23-h200"), "--doc", str(doc)])
    text = doc.read_text()
    assert text.startswith("notes before\n") and text.endswith("notes after\n") and "old tables" not in text
    assert _section(text) == _section((ROOT / "docs" / "benchmarks.md").read_text())
    assert (tmp_path / "bench_prefill.png").exists() and (tmp_path / "bench_decode.png").exists()


def test_a_newer_folder_renders_the_bound_and_the_distillation_tables(tmp_path):
    from benchmarks import report

    doc = tmp_path / "benchmarks.md"
    report.main([str(RESULTS / "2026-11-26-h200"), "--doc", str(doc)])
    text = doc.read_text()
    assert "### Batch-1 decode against the weight-read bound, 1b shape" in text
    assert "| cycle | 32768 | 1.998 | 0.591 | 3.38 |" in text  # speed_1b.json's bound_ms and x_bound
    assert "| 512 | 14.6 |" in text and "| 0k |" not in text  # contexts under 1k by their token count
    assert text.count("| logits |") == 3 and "bench_distill.py --model llama-3.2-1b" in text  # distill_*.json
    assert "The scan alone" not in text  # no kernels*.json in that folder: no empty kernel tables


def test_a_folder_without_results_is_refused_in_one_line(tmp_path):
    from benchmarks import report

    with pytest.raises(SystemExit, match=r"holds no speed_\*\.json, kernels\*\.json or distill_\*\.json"):
        report.main([str(tmp_path), "--doc", str(tmp_path / "doc.md")])
    assert not (tmp_path / "doc.md").exists()


def test_a_folder_outside_the_repository_renders_too(tmp_path):
    from benchmarks import report

    src = RESULTS / "2026-11-26-h200-decode" / "speed_8b.json"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "speed_8b.json").write_text(src.read_text())
    report.main([str(tmp_path / "run"), "--doc", str(tmp_path / "doc.md")])
    text = (tmp_path / "doc.md").read_text()
    assert f"results copied to `{tmp_path / 'run'}`" in text and "### Memory, 8b shape" in text
