"""A recipe with `calibrate:` fits the seed before training, records it, and does not refit on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tm_distill.recipe import RecipeError, recipe_from_dict
from tm_distill.training import run_recipe


class Crash(RuntimeError):
    pass


def test_recipe_calibrates_the_seed_and_records_it(tiny_recipe, tmp_path):
    raw = tiny_recipe(steps=2, checkpoint_every=1)
    plain = run_recipe(recipe_from_dict(raw, [f"output_dir={tmp_path / 'plain'}"]))
    recipe = recipe_from_dict(raw, ["calibrate.windows=3"])
    summary = run_recipe(recipe)
    record = json.loads((Path(recipe.output_dir) / "calibration.json").read_text())
    assert record["windows"] == 3 and record["seq_len"] == 32 and record["data"] == raw["data"]["source"]
    assert [f["layer"] for f in record["layers"]] == [0, 1] and record["heldout_windows"] == 1
    assert all(f["error_after"] < 1.0 and f["heldout_after"] < 1.0 for f in record["layers"])
    assert summary["calibration"]["means"] == record["means"]
    saved = json.loads((Path(summary["final"]) / "config.json").read_text())["calibration"]
    assert saved["windows"] == 3 and saved["errors"] == record["errors"]
    assert summary["heldout_kl_seeded"] < plain["heldout_kl_seeded"]


def test_resume_does_not_calibrate_again(tiny_recipe, monkeypatch):
    from tm_distill.convert import calibrate

    recipe = recipe_from_dict(tiny_recipe(steps=3, checkpoint_every=1), ["calibrate.windows=2"])
    with pytest.raises(Crash):
        run_recipe(recipe, on_step=lambda i, s, l: (_ for _ in ()).throw(Crash()) if s == 2 else None)

    def refuse(*args, **kwargs):
        raise AssertionError("calibrated again on resume")

    monkeypatch.setattr(calibrate, "calibrate_student", refuse)
    summary = run_recipe(recipe, resume=True)
    assert summary["calibration"]["windows"] == 2


def test_bad_calibration_data_fails_naming_the_key(tiny_recipe, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(RecipeError) as err:
        run_recipe(recipe_from_dict(tiny_recipe(), [f"calibrate.data={empty}"]))
    assert err.value.key == "calibrate" and str(empty) in str(err.value) and "gave no text" in str(err.value)
    assert not (tmp_path / "run" / "0-logits").exists()
