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
        "calibrate.seq_len=64", "calibrate.windows=2",
        "stages.matrix.steps=2", "stages.matrix.seq_len=64", "stages.matrix.batch_size=1",
        "stages.hidden.steps=2", "stages.hidden.seq_len=64", "stages.hidden.batch_size=1",
        "stages.logits.steps=4", "stages.logits.seq_len=64", "stages.logits.checkpoint_every=0",
    ])
    summary = run_recipe(recipe, teacher=smol)
    assert summary["heldout_kl_distilled"] < summary["heldout_kl_seeded"], summary
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary
    assert summary["calibration"]["windows"] == 2 and summary["calibration"]["seq_len"] == 64
    rows = read_metrics(tmp_path / "demo")
    assert [(r["stage"], r["step"]) for r in rows] == [("matrix", 1), ("matrix", 2), ("hidden", 1), ("hidden", 2),
                                                       ("logits", 1), ("logits", 2), ("logits", 3), ("logits", 4)]
    # only what resuming needs: the last stage's final/ and OUTPUT/final, which links to the same bytes, and the
    # calibrated seed; students in the teacher's dtype (the shipped GGUF is quantized: bfloat16)
    assert {p.name for p in (tmp_path / "demo").iterdir() if p.is_dir()} - {"tensorboard"} == {
        "2-logits", "final", "seed"}
    for name in ("seed", "final"):
        assert json.loads((tmp_path / "demo" / name / "config.json").read_text())["dtype"] == "bfloat16"
    assert summary["heldout_kl_converted"] > summary["heldout_kl_seeded"]  # calibration helped too
    last, final = (tmp_path / "demo" / "2-logits" / "final" / "model.safetensors",
                   tmp_path / "demo" / "final" / "model.safetensors")
    assert last.exists() and final.stat().st_ino == last.stat().st_ino
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / "final")
    assert student.config.transpoints == summary["transpoints"]


def test_teacher_samples_join_the_training_windows_only(smol, tmp_path, monkeypatch):
    """data.teacher_samples adds self-distillation text from the real teacher to training, not to held-out."""
    from tm_distill.data import tokens as tokens_mod

    built = []
    real_build = tokens_mod.build_token_dataset

    def spy(texts, *args, **kwargs):
        out = real_build(texts, *args, **kwargs)
        built.append((list(texts), kwargs.get("heldout_fraction"), out))
        return out

    monkeypatch.setattr(tokens_mod, "build_token_dataset", spy)
    recipe = load_recipe(DEMO, [
        f"output_dir={tmp_path / 'selfgen'}", "data.seq_len=32", "data.heldout_windows=1", "data.max_tokens=4000",
        "calibrate=null",
        "data.teacher_samples=2", "data.teacher_sample_tokens=40", "stages=[{name: logits, steps: 1, batch_size: 1}]",
    ])
    summary = run_recipe(recipe, teacher=smol)
    (source_texts, _, source), (samples, fraction, extra) = built
    assert len(samples) == 2 and fraction == 0.0
    assert all("<|im_start|>assistant" in s for s in samples)  # chat-formatted completions of the teacher
    assert extra.train.shape[0] >= 1 and not any(s in source_texts for s in samples)
    assert summary["heldout_kl_distilled"] >= 0
