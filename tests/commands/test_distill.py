"""`tm-distill validate` and `tm-distill distill` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

import tm_distill  # noqa: F401
from tm_distill.cli import cli

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "cpu-demo.yaml"


@pytest.fixture(scope="module")
def tiny_run_recipe(root):
    """A recipe file for the tiny random Llama teacher (SmolLM2's tokenizer) on a few kB of real text."""
    recipe = {"name": "tiny-cli", "teacher": str(root / "teacher"), "transpoints": "cycle=0,8", "device": "cpu",
              "output_dir": str(root / "out"),
              "data": {"source": str(root / "text"), "seq_len": 32, "heldout_fraction": 0.2, "heldout_windows": 4},
              "stages": [{"name": "logits", "steps": 4, "batch_size": 2, "lr": 1.0e-2}]}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_validate_prints_the_resolved_plan_of_the_demo():
    result = CliRunner().invoke(cli, ["validate", str(DEMO), "stages.logits.steps=20"])
    assert result.exit_code == 0, result.output
    assert "30 layers" in result.output and "min P 0" in result.output
    assert "[2] logits" in result.output and "20 steps" in result.output and "recipe is valid" in result.output


@pytest.mark.parametrize("override, message", [
    ("stages.1.nme=hidden", "stages[1].nme: unknown key"),
    ("stages.0.name=matrx", "stages[0].name: unknown stage 'matrx' (did you mean 'matrix'?)"),
    ("stages.2.steps=0", "stages[2].steps: token budget must be > 0"),
    ("data.seq_len=9000", "data.seq_len: 9000 is longer than the teacher supports"),
    ("teacher=/no/such/teacher", "teacher: teacher '/no/such/teacher' does not exist"),
])
def test_validate_rejects_bad_recipes_naming_the_key(override, message):
    result = CliRunner().invoke(cli, ["validate", str(DEMO), override])
    assert result.exit_code != 0
    assert message in result.output


def test_distill_runs_a_tiny_recipe_end_to_end(tiny_run_recipe):
    result = CliRunner().invoke(cli, ["distill", str(tiny_run_recipe)])
    assert result.exit_code == 0, result.output
    out = Path(yaml.safe_load(tiny_run_recipe.read_text())["output_dir"])
    summary = json.loads((out / "summary.json").read_text())
    line = [ln[ln.index("held-out KL"):] for ln in result.stdout.splitlines() if "held-out KL: seeded " in ln]
    assert line and f"{summary['heldout_kl_seeded']:.4f} -> distilled {summary['heldout_kl_distilled']:.4f}" in line[0]
    assert summary["heldout_kl_distilled"] < summary["heldout_kl_seeded"]
    student = AutoModelForCausalLM.from_pretrained(out / "final")
    assert student.config.transpoints == [0, 8]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    again = CliRunner().invoke(cli, ["distill", str(tiny_run_recipe)])  # a second fresh run would clobber it
    assert again.exit_code != 0 and "--resume" in again.output
    resumed = CliRunner().invoke(cli, ["distill", str(tiny_run_recipe), "--resume"])  # all done: just report
    assert resumed.exit_code == 0 and "held-out KL" in resumed.output


def test_distill_fails_before_any_work_on_a_too_long_sequence(tiny_run_recipe, tmp_path):
    result = CliRunner().invoke(cli, ["distill", str(tiny_run_recipe), f"output_dir={tmp_path / 'never'}",
                                      "stages.0.seq_len=4096"])
    assert result.exit_code != 0 and "stages[0].seq_len: 4096 is longer than the teacher supports" in result.output
    assert not (tmp_path / "never").exists()


def test_distill_with_calibrate_reports_the_calibrated_seed(tiny_run_recipe, tmp_path):
    out = tmp_path / "calibrated"
    result = CliRunner().invoke(cli, ["distill", str(tiny_run_recipe), f"output_dir={out}", "calibrate.windows=2"])
    assert result.exit_code == 0, result.output
    assert "calibrated seed: mean mixer error" in result.output and "calibration.json" in result.output
    assert "calibrate layers: 100%" in result.output and "2/2 [" in result.output  # a bar step per layer, time left
    assert json.loads((out / "calibration.json").read_text())["windows"] == 2
    bad = CliRunner().invoke(cli, ["distill", str(tiny_run_recipe), f"output_dir={tmp_path / 'bad'}",
                                   f"calibrate.data={tmp_path / 'missing.txt'}"])
    assert bad.exit_code != 0 and "calibrate: calibration data" in bad.output and "does not exist" in bad.output
    assert "Traceback" not in bad.output


def test_validate_says_what_this_machine_lacks_for_a_gpu_recipe(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu = DEMO.parent / "gpu-cycle.yaml"
    result = CliRunner().invoke(cli, ["validate", str(gpu)])
    assert result.exit_code == 1 and "[0] matrix" in result.output  # the plan is still printed
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: recipe is valid, but this machine cannot run it: device: cuda is asked for")
    assert "override device=cpu" in last
    assert CliRunner().invoke(cli, ["validate", str(gpu), "device=cpu"]).exit_code == 0
