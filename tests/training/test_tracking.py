"""Recipe ``report_to``: accelerate's trackers get every metrics.jsonl row and the recipe (TensorBoard read back)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tm_distill.recipe import RecipeError, recipe_from_dict
from tm_distill.training.metrics import read_metrics
from tm_distill.training.resolve import resolve_plan
from tm_distill.training.run import run_recipe
from tm_distill.training.tracking import TRACKERS_DIR, hyperparameters

pytest.importorskip("tensorboard", reason="the track extra is not installed")


def _events(logdir):
    """{tag: {step: value}} of every scalar in the TensorBoard event files under ``logdir``."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    mux.Reload()
    out: dict[str, dict[int, float]] = {}
    for run, tags in mux.Runs().items():
        for tag in tags["scalars"]:
            for event in mux.Scalars(run, tag):
                out.setdefault(tag, {})[event.step] = event.value
    return out


def test_tensorboard_gets_every_metric_row_and_the_recipe(tiny_recipe):
    raw = tiny_recipe(steps=3, checkpoint_every=0, eval_every=3)
    raw["stages"] = [{"name": "hidden", "steps": 2, "batch_size": 2, "lr": 1e-2}, raw["stages"][0]]
    raw["report_to"] = ["tensorboard"]
    recipe = recipe_from_dict(raw)
    run_recipe(recipe)
    rows = read_metrics(recipe.output_dir)
    assert [r["stage"] for r in rows] == ["hidden"] * 2 + ["logits"] * 3 and "heldout_kl" in rows[-1]
    logdir = recipe.output_dir + f"/{TRACKERS_DIR}/{recipe.name}"
    scalars = _events(logdir)
    offsets = {0: 0, 1: 2}  # the run-wide step: the hidden stage's 2 steps come first
    expected = {(f"{r['stage_idx']}-{r['stage']}/{k}", offsets[r["stage_idx"]] + r["step"]): v
                for r in rows for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    assert {"1-logits/loss", "1-logits/kd", "1-logits/lr", "1-logits/grad_norm", "1-logits/tokens_per_s",
            "1-logits/heldout_kl", "0-hidden/loss"} <= {tag for tag, _ in expected}  # kd: the training KL
    got = {(tag, step): value for tag, steps in scalars.items() for step, value in steps.items()}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    (hparams_file,) = list(Path(logdir).rglob("hparams.yml"))
    stored = yaml.safe_load(hparams_file.read_text())
    assert stored == hyperparameters(recipe)
    assert stored["stages[1].optimizer.lr"] == 1e-2 and stored["report_to"] == '["tensorboard"]'


def test_without_report_to_no_tracker_writes(tiny_recipe):
    recipe = recipe_from_dict(tiny_recipe(steps=1, checkpoint_every=0))
    run_recipe(recipe)
    assert not (Path(recipe.output_dir) / TRACKERS_DIR).exists()
    assert len(read_metrics(recipe.output_dir)) == 1


@pytest.mark.parametrize("tracker, message", [
    ("tensorbord", "report_to[0]: unknown tracker 'tensorbord'"),
    ("wandb", "report_to[0]: wandb is not installed here: pip install wandb"),
])
def test_a_tracker_that_cannot_run_is_refused_before_any_work(tiny_recipe, tracker, message):
    pytest.importorskip("tensorboard")
    if tracker == "wandb":
        pytest.importorskip("accelerate.tracking")
        from accelerate.tracking import is_wandb_available

        if is_wandb_available():
            pytest.skip("wandb is installed here")
    recipe = recipe_from_dict({**tiny_recipe(), "report_to": [tracker]})
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_plan(recipe, None)
