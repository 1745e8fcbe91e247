"""Stopping from outside: --max-time / max_time and SIGTERM finish the step, checkpoint, and resume exactly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from tm_distill.cli import cli
from tm_distill.recipe import RecipeError, parse_duration, recipe_from_dict
from tm_distill.training import TrainingStopped, read_metrics, run_recipe


def test_parse_duration():
    assert parse_duration("8m") == 480 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    assert parse_duration("2m30s") == 150 and parse_duration(12) == 12 and parse_duration(None) is None
    for bad in ("", "soon", "0", "-1m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_bad_max_time_in_a_recipe_names_the_key(tiny_recipe):
    raw = tiny_recipe(steps=2)
    raw["max_time"] = "ten minutes"
    with pytest.raises(RecipeError, match="max_time"):
        recipe_from_dict(raw)


def test_max_time_in_the_last_stage_leaves_final_and_resumes_exactly(tiny_recipe, tmp_path):
    raw = tiny_recipe(steps=5, checkpoint_every=0, transpoint_schedule="sampled")
    reference = recipe_from_dict(raw, [f"output_dir={tmp_path / 'whole'}"])
    run_recipe(reference)
    expected = [r["loss"] for r in read_metrics(reference.output_dir)]

    recipe = recipe_from_dict(raw, [f"output_dir={tmp_path / 'boxed'}"])
    with pytest.raises(TrainingStopped) as info:
        run_recipe(recipe, max_time=1e-6)  # the budget is gone after the first step
    assert info.value.reason == "max_time" and info.value.step == 1
    out = Path(recipe.output_dir)
    assert (out / "0-logits" / "step-1" / "training_state.pt").exists()
    assert (out / "final" / "model.safetensors").exists()  # a usable student already
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"]["reason"] == "max_time" and summary["stopped"]["step"] == 1
    run_recipe(recipe, resume=True)
    got = [r["loss"] for r in read_metrics(recipe.output_dir)]
    assert got == pytest.approx(expected, abs=1e-6, rel=0)
    assert "stopped" not in json.loads((out / "summary.json").read_text())


def test_sigterm_finishes_the_step_and_checkpoints(tiny_recipe):
    raw = tiny_recipe(steps=6, checkpoint_every=0)
    raw["stages"].append(dict(raw["stages"][0], steps=2))  # stopped in the first of two stages: no final/
    recipe = recipe_from_dict(raw)

    def term_at_3(stage_idx, step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingStopped, match="SIGTERM") as info:
        run_recipe(recipe, on_step=term_at_3)
    assert info.value.step == 3 and info.value.stage_idx == 0
    out = Path(recipe.output_dir)
    assert (out / "0-logits" / "step-3" / "training_state.pt").exists() and not (out / "final").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    summary = run_recipe(recipe, resume=True)
    assert [(r["stage_idx"], r["step"]) for r in read_metrics(recipe.output_dir)][-3:] == [(0, 6), (1, 1), (1, 2)]
    assert Path(summary["final"]).exists()


def test_cli_max_time_exits_nonzero_with_the_resume_command(tiny_recipe, tmp_path):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(steps=4, checkpoint_every=0)))
    result = CliRunner().invoke(cli, ["distill", str(path), "--max-time", "0.000001"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "max_time" in result.output and f"tm-distill distill {path} --resume" in result.output
    bad = CliRunner().invoke(cli, ["distill", str(path), "--max-time", "soon"])
    assert bad.exit_code != 0 and "--max-time" in bad.output and "Traceback" not in bad.output


def test_run_dtype_and_fp32_master_weights(tiny_recipe):
    """Weights load in the run's dtype; only trained ones stay fp32."""
    import torch

    from tm_distill.convert import seed_student
    from tm_distill.stages import select_parameters
    from tm_distill.stages.base import freeze_except
    from tm_distill.training.loop import set_param_dtypes

    raw = tiny_recipe(steps=1, precision="bf16")
    recipe = recipe_from_dict(raw)
    assert recipe.run_dtype("cuda") == "bfloat16" and recipe.run_dtype("cpu") == "float32"
    assert recipe_from_dict(raw, ["dtype=float32"]).run_dtype("cuda") == "float32"
    assert recipe_from_dict(tiny_recipe(steps=1)).run_dtype("cuda") == "float32"  # an fp32 stage keeps fp32

    from tests.conftest import tiny_llama

    student = seed_student(tiny_llama(), [0, 4, 8], seed=0, dtype=torch.float32)
    freeze_except(student, select_parameters(student, "ssm"))
    set_param_dtypes(student, torch.bfloat16)
    for name, p in student.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(student(torch.randint(0, 97, (1, 12))).logits).all()
