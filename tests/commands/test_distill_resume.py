"""`tm-distill distill --resume` after a failure (issue 13): a diverged run resumes with a lower lr from a finite
checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.commands.distill_helpers import assert_clean_error, run, summary, write_recipe


# -------------------------------------------------------------------------------------- 2: divergence
def test_diverged_stage_saves_nothing_bad_and_resumes_with_a_lower_lr(root, tmp_path):
    recipe = write_recipe(root, tmp_path, {"name": "logits", "steps": 2, "lr": 1.0e-2},
                          {"name": "logits", "steps": 3, "lr": 1.0e30, "checkpoint_every": 1})
    result = run("distill", recipe)
    assert_clean_error(result, "stage 1 (logits) step 1", "nothing was saved",
                       f"the newest finite checkpoint is {tmp_path / 'out' / '0-logits' / 'final'}", "stages.1.lr=")
    assert not (tmp_path / "out" / "1-logits").exists() or not list((tmp_path / "out" / "1-logits").iterdir())
    for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}, which is not JSON"))
    resumed = run("distill", recipe, "stages.1.lr=1e-3", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert math.isfinite(summary(tmp_path)["heldout_kl_distilled"])
    weights = load_file(tmp_path / "out" / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_divergence_before_any_checkpoint_restarts_from_the_seeded_student(root, tmp_path):
    recipe = write_recipe(root, tmp_path, {"name": "logits", "steps": 3, "lr": 1.0e30, "checkpoint_every": 1})
    assert_clean_error(run("distill", recipe), "step 1", "no checkpoint was written", "seeded student")
    assert not list((tmp_path / "out" / "0-logits").glob("step-*"))
    assert run("distill", recipe, "stages.0.lr=1e-2", "--resume").exit_code == 0


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_validate_rejects_non_finite_numbers(root, tmp_path, value):
    recipe = write_recipe(root, tmp_path)
    assert_clean_error(run("validate", recipe, f"stages.0.lr={value}"), "stages[0].optimizer.lr: must be a finite")
