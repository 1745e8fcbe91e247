"""A recipe with `calibrate:` fits the seed before training, records it, and does not refit on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tm_distill.data.loading import load_texts
from tm_distill.recipe import RecipeError, recipe_from_dict
from tm_distill.training import kl_line, run_recipe


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
    # what calibration gave and what training gave: the plain seed is the uncalibrated run's seed
    assert summary["heldout_kl_converted"] == pytest.approx(plain["heldout_kl_seeded"], rel=1e-6)
    assert plain["heldout_kl_converted"] is None and plain["seed"] is None
    assert summary["heldout_kl_calibration_pct"] < 0
    line = kl_line(summary)
    assert line.startswith(f"held-out KL: converted {summary['heldout_kl_converted']:.4f} -> calibrated seed "
                           f"{summary['heldout_kl_seeded']:.4f} (calibration -") and "(training " in line


def test_the_calibrated_seed_is_saved_for_a_like_with_like_eval(tiny_recipe):
    """OUTPUT/seed is the student the stages start from: its held-out KL is the summary's seeded KL."""
    from tm_distill.checkpoint import load_student, read_metadata
    from tm_distill.convert import load_teacher
    from tm_distill.training import heldout_kl
    from tm_distill.training.run import build_data

    recipe = recipe_from_dict(tiny_recipe(steps=2), ["calibrate.windows=2"])
    summary = run_recipe(recipe)
    seed = Path(recipe.output_dir) / "seed"
    assert summary["seed"] == str(seed) and read_metadata(seed)["stage"] == "seeded"
    model, _ = load_student(seed)
    assert model.config.calibration["windows"] == 2 and model.dtype == torch.float32  # the tiny teacher's dtype
    teacher = load_teacher(recipe.teacher)
    _, heldout = build_data(recipe, teacher, load_texts(recipe.data.source), "cpu", 1)
    assert heldout_kl(model, teacher.model, heldout, summary["transpoints"]) == pytest.approx(
        summary["heldout_kl_seeded"], rel=1e-5)


def test_students_are_left_in_the_save_dtype_and_emptied_stage_folders_go(tiny_recipe):
    raw = tiny_recipe(steps=2, checkpoint_every=1)
    raw["stages"] = [{"name": "hidden", "steps": 2, "batch_size": 2}, raw["stages"][0]]
    recipe = recipe_from_dict(raw, ["calibrate.windows=1", "save_dtype=bfloat16"])
    run_recipe(recipe)
    out = Path(recipe.output_dir)
    assert not (out / "0-hidden").exists()  # superseded: neither its checkpoints nor an empty folder stay
    for name in ("seed", "final", "1-logits/final"):
        assert json.loads((out / name / "config.json").read_text())["dtype"] == "bfloat16"
        with safe_open(out / name / "model.safetensors", "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert (out / "final" / "model.safetensors").stat().st_ino == (out / "1-logits/final/model.safetensors").stat().st_ino


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


def test_calibration_reuses_the_runs_tokenized_data(tiny_recipe, monkeypatch):
    """Calibrating on data.source at the run's seq_len loads and tokenizes the source once for the whole run, and
    fits the windows a standalone calibration_windows picks from the same split."""
    from tm_distill.convert import calibrate
    from tm_distill.data import loading, tokens

    loads, builds, tokenized, fitted = [], [], [], []
    real_load, real_build, real_calibrate = loading.load_texts, tokens.build_token_dataset, calibrate.calibrate_student
    real_tokenize = tokens.tokenize_windows
    monkeypatch.setattr(loading, "load_texts", lambda source, **kw: loads.append(source) or real_load(source, **kw))
    monkeypatch.setattr(tokens, "build_token_dataset",
                        lambda texts, *a, **kw: builds.append(len(texts)) or real_build(texts, *a, **kw))
    monkeypatch.setattr(tokens, "tokenize_windows",  # the uncapped windows, in memory: the cache keeps the capped
                        lambda texts, *a, **kw: tokenized.append(len(texts)) or real_tokenize(texts, *a, **kw))
    monkeypatch.setattr(calibrate, "calibrate_student",
                        lambda student, teacher, windows, **kw: fitted.append(windows) or real_calibrate(
                            student, teacher, windows, **kw))
    raw = tiny_recipe(steps=1)
    raw["data"]["max_tokens"] = 32 * 6  # the run trains on fewer windows than calibration chooses from
    run_recipe(recipe_from_dict(raw, ["calibrate.windows=3"]))
    source = raw["data"]["source"]
    assert loads == [source] and builds == [len(load_texts(source))] and tokenized == builds
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(raw["teacher"])
    alone, _ = calibrate.calibration_windows(source, tokenizer, 32, 3, heldout_fraction=0.2, seed=0)
    assert torch.equal(fitted[0], alone)
