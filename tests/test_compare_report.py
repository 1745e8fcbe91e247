"""benchmarks/compare_report.py: rows from several result folders, later folders winning; chat answers side by side."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import compare_report

ROOT = Path(__file__).resolve().parents[1]


def _row(folder: Path, name: str, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"row-{name}.json").write_text(json.dumps({"meta": {"row": name}, **extra}))


def test_rows_come_from_every_folder_and_a_later_folder_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_report, "ROOT", tmp_path)
    old, new = tmp_path / "old", tmp_path / "new"
    _row(old, "B", tokens_trained=1)
    _row(old, "H", tokens_trained=2)
    _row(new, "H", tokens_trained=3)
    out = compare_report.collect([old, new])
    assert out["sources"] == ["old", "new"]
    assert out["rows"]["B"]["tokens_trained"] == 1 and out["rows"]["H"]["tokens_trained"] == 3
    assert out["rows"]["C"] == {"status": "not run"}
    assert list(out["rows"]) == list(compare_report.ORDER)


def test_chat_answers_put_teacher_and_rows_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_report, "ROOT", tmp_path)
    chat = lambda who: [{"prompt": "Sum | it?", "teacher": "It is\n4.", "student": f"{who} says 4."}]  # noqa: E731
    _row(tmp_path / "r", "H", general={"chat": chat("H")})
    _row(tmp_path / "r", "I", general={"chat": chat("I")})
    table = compare_report.chat_answers(compare_report.collect([tmp_path / "r"]))
    assert "| prompt | teacher | row H | row I |" in table
    assert "| Sum \\| it? | It is 4. | H says 4. | I says 4. |" in table
    assert compare_report.chat_answers(compare_report.collect([tmp_path / "empty"])) == ""
