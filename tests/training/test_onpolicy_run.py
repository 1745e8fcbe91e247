"""A recipe with the onpolicy stage after a logits stage runs end to end on the tiny teacher, logs its on-policy
fraction, and resumes exactly after a kill in the onpolicy stage (the same generated sequences, the same losses)."""

from __future__ import annotations

import json

import pytest

from tm_distill.recipe import recipe_from_dict
from tm_distill.training import read_metrics, run_recipe
from tm_distill.training.resolve import resolve_plan

ON_POLICY = {"lmbda": 0.5, "beta": 0.5, "prompt_tokens": 8, "new_tokens": 8, "temperature": 1.0}


class Crash(RuntimeError):
    pass


def _raw(tiny_recipe):
    raw = tiny_recipe(steps=1, checkpoint_every=0)  # stage 0: one logits step
    raw["stages"].append({"name": "onpolicy", "steps": 4, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2,
                          "keep_last": 2, "on_policy": ON_POLICY})
    return raw


def test_onpolicy_recipe_runs_and_resumes_exactly(tiny_recipe, tmp_path):
    raw = _raw(tiny_recipe)
    reference = recipe_from_dict(raw, [f"output_dir={tmp_path / 'whole'}"])
    plan = resolve_plan(reference, None)
    assert plan.stages[1].generated == 2 * 2 * 8  # 4 micro-batches, half on-policy, 2 rows x 8 new tokens
    assert any(line.strip().startswith("on-policy: 32 tokens sampled") for line in plan.lines())
    summary = run_recipe(reference)
    rows = read_metrics(reference.output_dir)
    on = [r for r in rows if r["stage"] == "onpolicy"]
    assert [r["on_policy"] for r in on] == [0.0, 1.0, 0.0, 1.0]
    assert [r["positions"] for r in on] == [2 * 32, 2 * 8, 2 * 32, 2 * 8]  # min P is 0 in the cycle=0,8 schedule
    assert all(r["loss"] > 0 for r in on)
    assert summary["heldout_kl_distilled"] < summary["heldout_kl_seeded"]
    expected = [r["loss"] for r in rows]

    crashed = recipe_from_dict(raw, [f"output_dir={tmp_path / 'crashed'}"])
    with pytest.raises(Crash):  # step 2's checkpoint exists; the on-policy step 4 is lost with the kill at 4
        run_recipe(crashed, on_step=lambda i, s, loss: (_ for _ in ()).throw(Crash()) if (i, s) == (1, 3) else None)
    resumed = run_recipe(crashed, resume=True)
    got = [r["loss"] for r in read_metrics(crashed.output_dir)]
    assert got == pytest.approx(expected, abs=1e-6, rel=0)
    ref_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert resumed["heldout_kl_distilled"] == pytest.approx(ref_summary["heldout_kl_distilled"], abs=1e-6)
