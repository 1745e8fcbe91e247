"""The CPU demo recipe's shape (matrix -> hidden -> logits) on the real teacher and real text, at reduced size:
the distilled student's held-out KL to the teacher is lower than the seeded student's."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

import tm_distill  # noqa: F401
from tm_distill.recipe import load_recipe
from tm_distill.training import read_metrics, run_recipe

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "cpu-demo.yaml"


def test_demo_recipe_shape_lowers_heldout_kl_on_the_real_teacher(smol, tmp_path):
    recipe = load_recipe(DEMO, [
        f"output_dir={tmp_path / 'demo'}", "data.seq_len=64", "data.heldout_windows=2", "data.max_tokens=20000",
        "stages.matrix.steps=2", "stages.matrix.seq_len=64", "stages.matrix.batch_size=1",
        "stages.hidden.steps=2", "stages.hidden.seq_len=64", "stages.hidden.batch_size=1",
        "stages.logits.steps=4", "stages.logits.seq_len=64", "stages.logits.checkpoint_every=0",
    ])
    summary = run_recipe(recipe, teacher=smol)
    assert summary["heldout_kl_distilled"] < summary["heldout_kl_seeded"], summary
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary
    rows = read_metrics(tmp_path / "demo")
    assert [(r["stage"], r["step"]) for r in rows] == [("matrix", 1), ("matrix", 2), ("hidden", 1), ("hidden", 2),
                                                       ("logits", 1), ("logits", 2), ("logits", 3), ("logits", 4)]
    for name in ("0-matrix", "1-hidden", "2-logits"):
        assert (tmp_path / "demo" / name / "final" / "model.safetensors").exists()
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / "final")
    assert student.config.transpoints == summary["transpoints"]
