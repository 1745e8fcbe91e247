"""The loop: LR schedule, sampled TransPoints, exact resume after a crash, NaN stop, metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tm_distill.checkpoint import STATE_FILE
from tm_distill.models import ATTENTION_ONLY
from tm_distill.recipe import recipe_from_dict
from tm_distill.training import TrainingDiverged, lr_factor, read_metrics, run_recipe, sample_transpoints


def test_lr_factor_warmup_then_cosine_to_floor():
    f = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))  # non-increasing after warmup
    assert lr_factor(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(6, 10, 2, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(7, 10, 0, "constant", 0.0) == 1.0


def test_sampled_transpoints_are_seeded_bounded_and_keep_attention_layers():
    target = [0, 64, 128, ATTENTION_ONLY]
    a = sample_transpoints(target, 0.5, 256, seed=1, stage_idx=0, step=3)
    assert a == sample_transpoints(target, 0.5, 256, seed=1, stage_idx=0, step=3)
    draws = [sample_transpoints(target, 0.5, 256, seed=1, stage_idx=0, step=s) for s in range(50)]
    assert all(d[0] == 0 and d[3] == ATTENTION_ONLY for d in draws)
    assert all(32 <= d[1] <= 96 and 64 <= d[2] <= 192 for d in draws)
    assert len({d[1] for d in draws}) > 10  # it does vary per step
    assert sample_transpoints(target, 0.5, 100, 1, 0, 3)[2] <= 100  # clamped to the sequence


class Crash(RuntimeError):
    pass


def _crash_at(step_k):
    def on_step(stage_idx, step, loss):
        if step == step_k:
            raise Crash(f"simulated kill at step {step}")
    return on_step


def test_kill_and_resume_continues_exactly(tiny_recipe, tmp_path):
    raw = tiny_recipe(steps=6, checkpoint_every=2, transpoint_schedule="sampled", jitter=0.5)
    reference = recipe_from_dict(raw, [f"output_dir={tmp_path / 'uninterrupted'}"])
    run_recipe(reference)
    expected = [r["loss"] for r in read_metrics(reference.output_dir)]

    crashed = recipe_from_dict(raw, [f"output_dir={tmp_path / 'crashed'}"])
    with pytest.raises(Crash):
        run_recipe(crashed, on_step=_crash_at(5))  # checkpoints at steps 2 and 4 exist, step 5 is lost
    assert [r["step"] for r in read_metrics(crashed.output_dir)] == [1, 2, 3, 4, 5]
    summary = run_recipe(crashed, resume=True)
    rows = read_metrics(crashed.output_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    got = [r["loss"] for r in rows]
    assert got == pytest.approx(expected, abs=1e-6, rel=0)
    ref_summary = json.loads((tmp_path / "uninterrupted" / "summary.json").read_text())
    assert summary["heldout_kl_distilled"] == pytest.approx(ref_summary["heldout_kl_distilled"], abs=1e-6)
    assert summary["heldout_kl_seeded"] == pytest.approx(ref_summary["heldout_kl_seeded"], abs=1e-9)


def test_resume_skips_finished_stages(tiny_recipe, tmp_path):
    raw = tiny_recipe(steps=2, checkpoint_every=0)
    raw["stages"].append(dict(raw["stages"][0], steps=3))
    recipe = recipe_from_dict(raw)
    with pytest.raises(Crash):
        run_recipe(recipe, on_step=lambda i, s, l: (_ for _ in ()).throw(Crash()) if i == 1 else None)
    assert (tmp_path / "run" / "0-logits" / "final" / STATE_FILE).exists()  # stage 1 saved nothing yet
    run_recipe(recipe, resume=True)
    rows = read_metrics(recipe.output_dir)
    assert [(r["stage_idx"], r["step"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]  # 0 not rerun
    # only what resuming needs is left: stage 0's final went once stage 1 had its own
    assert not (tmp_path / "run" / "0-logits" / "final").exists()
    assert (tmp_path / "run" / "1-logits" / "final" / STATE_FILE).exists()


def test_nan_loss_stops_cleanly_keeping_last_good_checkpoint(tiny_recipe, monkeypatch):
    from tm_distill.stages.logits import LogitsStage

    recipe = recipe_from_dict(tiny_recipe(steps=6, checkpoint_every=2))
    calls = {"n": 0}
    original = LogitsStage.loss

    def poisoned(self, input_ids):
        calls["n"] += torch.is_grad_enabled()  # training forwards only, not the checks before a checkpoint
        loss, metrics = original(self, input_ids)
        return (loss * math.nan if calls["n"] == 3 and torch.is_grad_enabled() else loss), metrics

    monkeypatch.setattr(LogitsStage, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"stage 0 \(logits\) step 3: loss is nan"):
        run_recipe(recipe)
    stage_dir = recipe.output_dir + "/0-logits"
    import os

    assert sorted(os.listdir(stage_dir)) == ["step-2"]  # the last good checkpoint, nothing half-written
    state = torch.load(f"{stage_dir}/step-2/{STATE_FILE}", weights_only=False)
    assert state["step"] == 2
    monkeypatch.setattr(LogitsStage, "loss", original)
    summary = run_recipe(recipe, resume=True)  # and it resumes from there
    assert [r["step"] for r in read_metrics(recipe.output_dir)] == [1, 2, 3, 4, 5, 6]
    assert summary["heldout_kl_distilled"] < summary["heldout_kl_seeded"]


def test_fresh_run_refuses_to_overwrite_a_run(tiny_recipe):
    from tm_distill.recipe import RecipeError

    recipe = recipe_from_dict(tiny_recipe(steps=1, checkpoint_every=0))
    run_recipe(recipe)
    with pytest.raises(RecipeError, match="output_dir.*--resume"):
        run_recipe(recipe)


def test_auto_transpoints_are_resolved_recorded_and_kept_on_resume(tiny_recipe):
    from tm_distill.checkpoint import read_metadata

    raw = tiny_recipe(steps=2, checkpoint_every=1)
    raw["transpoints"] = "auto:kv_budget=50%"
    recipe = recipe_from_dict(raw)
    with pytest.raises(Crash):
        run_recipe(recipe, on_step=_crash_at(2))
    meta = read_metadata(recipe.output_dir + "/0-logits/step-1")
    assert len(meta["transpoints"]) == 2 and meta["transpoint_explanation"]
    summary = run_recipe(recipe, resume=True)
    assert summary["transpoints"] == meta["transpoints"]


def test_eval_every_logs_the_heldout_kl_curve(tiny_recipe):
    recipe = recipe_from_dict(tiny_recipe(steps=4, checkpoint_every=0, eval_every=2))
    summary = run_recipe(recipe)
    rows = read_metrics(recipe.output_dir)
    curve = [(r["stage_tokens"], r["heldout_kl"]) for r in rows if "heldout_kl" in r]
    assert [r["step"] for r in rows if "heldout_kl" in r] == [2, 4]
    assert curve[0][0] == 2 * 2 * 32 and curve[1][0] == 4 * 2 * 32  # steps x batch x seq_len
    assert curve[-1][1] == pytest.approx(summary["heldout_kl_distilled"], rel=1e-6)


def test_metrics_rows_stay_json_when_a_value_is_not_finite(tmp_path):
    from tm_distill.training.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path)
    writer.write({"step": 1, "lr": math.inf, "loss": math.nan, "grad_norm": 0.5})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 1, "lr": None, "loss": None, "grad_norm": 0.5} and "Infinity" not in line
