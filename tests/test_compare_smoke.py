"""The student comparison (docs/results.md) at CPU scale: the A-G pipeline (distill the trained students, eval all,
robustness) end to end."""

from __future__ import annotations

import json
import math

from benchmarks.compare_students import RECIPES, ROBUSTNESS, TRAINED, compare, load_recipe


def test_compare_recipes_share_one_token_budget():
    budgets = {}
    for name, file in TRAINED.items():
        recipe = load_recipe(RECIPES / file)
        budgets[name] = sum(s.tokens for s in recipe.stages)
    assert len(set(budgets.values())) == 1, budgets


def test_row_g_is_c_with_its_logits_stage_on_policy():
    """G changes only C's logits stage, which runs as an onpolicy stage of the same budget; the rest is C's."""
    c, g = load_recipe(RECIPES / TRAINED["C-full"]), load_recipe(RECIPES / TRAINED["G-onpolicy"])
    assert (g.data, g.transpoints, g.calibrate, g.seed, g.ssm) == (c.data, c.transpoints, c.calibrate, c.seed, c.ssm)
    assert g.stages[:2] == c.stages[:2] and len(g.stages) == len(c.stages) == 3
    tail, logits = g.stages[2], c.stages[2]
    assert tail.name == "onpolicy" and tail.tokens == logits.tokens
    assert (tail.optimizer, tail.schedule, tail.trainable) == (logits.optimizer, logits.schedule, logits.trainable)
    assert 0 < tail.on_policy.lmbda <= 0.5 and tail.on_policy.prompt_tokens + tail.on_policy.new_tokens <= 2048


def test_compare_smoke_runs_every_row(tmp_path):
    results = compare("smoke", tmp_path / "cmp")
    rows = results["models"]
    assert set(rows) == {"A-seeded", *TRAINED}
    for label, row in rows.items():
        for key in ("perplexity", "kl_to_teacher", "top1_agreement", "memory_mib_2k", "memory_mib_32k"):
            assert math.isfinite(row[key]) and row[key] >= 0, (label, key, row[key])
    # every trained student moved toward the teacher from the seeded start, even at a few steps
    for label in TRAINED:
        if label != "B-mil":  # B has another schedule, so its seeded start differs from A
            assert rows[label]["kl_to_teacher"] < rows["A-seeded"]["kl_to_teacher"], label
    # B keeps full KV in 8 of 30 layers; the cycle students hold only state at 32k tokens
    assert rows["B-mil"]["memory_mib_32k"] > rows["C-full"]["memory_mib_32k"]
    assert set(results["robustness"]) == set(ROBUSTNESS)
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert saved["models"].keys() == rows.keys()
    assert "| C-full |" in (tmp_path / "cmp" / "results.md").read_text()


def test_gpu_cycle_recipe_is_student_c():
    """The shipped GPU recipe runs exactly student C's stages and data (its device run is row C)."""
    from pathlib import Path

    gpu = load_recipe(Path(RECIPES).parent / "gpu-cycle.yaml")
    c = load_recipe(RECIPES / TRAINED["C-full"])
    assert gpu.stages == c.stages and gpu.data == c.data and gpu.transpoints == c.transpoints
    assert gpu.calibrate == c.calibrate
