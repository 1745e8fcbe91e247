"""`tm-distill convert --calibrate` and `inspect` on a calibrated student, in-process through click."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.commands.test_convert import error_line, run
from tests.training.conftest import tiny_smol_teacher
from tm_distill.convert import parse_transpoints, seed_student


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol):
    """A tiny random 2-layer Llama with SmolLM2's tokenizer (and vocabulary)."""
    path = tmp_path_factory.mktemp("tiny")
    tiny_smol_teacher(smol.tokenizer).model.save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, shakespeare_files):
    path = tmp_path_factory.mktemp("text")
    for i, f in enumerate(shakespeare_files[:4]):
        (path / f"{i}.txt").write_text(f.read_text()[:4000])
    return path


def test_calibrate_prints_and_records_the_errors(tiny_dir, text_dir, tmp_path):
    out = tmp_path / "s"
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "cycle=0,16", "--calibrate", str(text_dir),
                 "--calibrate-seq-len", "64", "--calibrate-windows", "3")
    assert result.exit_code == 0, result.output
    assert "calibration: 3 window(s) x 64 tokens" in result.output and "held-out" in result.output
    assert "calibrate layers: 100%" in result.output and "2/2 [" in result.output  # a bar step per layer, time left
    meta = json.loads((out / "tm_distill.json").read_text())["calibration"]
    cfg = json.loads((out / "config.json").read_text())["calibration"]
    assert meta["data"] == cfg["data"] == str(text_dir) and meta["windows"] == 3 and meta["seq_len"] == 64
    assert [f["layer"] for f in meta["layers"]] == [0, 1] and len(meta["layers"][0]["decay_lengths"]) == 4
    assert all(row[3] < 1.0 for row in cfg["errors"]) and "layers" not in cfg
    shown = run("inspect", str(out))
    assert shown.exit_code == 0, shown.output
    assert "seeded with calibration:" in shown.output and f"{cfg['errors'][1][3]:.3f}" in shown.output


def test_without_calibrate_convert_is_unchanged(tiny_dir, tmp_path):
    out = tmp_path / "s"
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "cycle=0,16", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "calibration" not in result.output
    assert json.loads((out / "config.json").read_text())["calibration"] is None
    assert json.loads((out / "tm_distill.json").read_text())["calibration"] is None
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_dir)
    want = seed_student(teacher, parse_transpoints("cycle=0,16", 2), seed=3).state_dict()
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], want[k]) for k in saved)
    assert "seeded with calibration" not in run("inspect", str(out)).output


@pytest.mark.parametrize("content,words", [("", "gave no text"), ("Too short.", "no whole window")])
def test_bad_calibration_data_is_one_line_and_writes_nothing(tiny_dir, tmp_path, content, words):
    bad = tmp_path / "bad.txt"
    bad.write_text(content)
    out = tmp_path / "out"
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "cycle=0,16", f"--calibrate={bad}",
                 "--calibrate-seq-len", "64")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    line = error_line(result)
    assert line.startswith("Error: calibration data") and str(bad) in line and words in line
    assert "give at least 64 tokens" in line and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_missing_calibration_data_and_z_gate_are_refused(tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "all=8", "--calibrate",
                 str(tmp_path / "nope.txt"))
    assert result.exit_code == 1 and "does not exist" in error_line(result) and not out.exists()
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "all=8", "--calibrate", "--z-gate")
    assert result.exit_code == 1 and "z gate" in error_line(result) and not out.exists()
