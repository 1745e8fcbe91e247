"""OUTPUT/final's model card: what the run trained (tokens, recipe, held-out KL), then what `eval` measured."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tm_distill.card import CARD_FILE
from tm_distill.eval.api import EvalOptions, run_eval
from tm_distill.models.remote_code import auto_map, code_files
from tm_distill.recipe import recipe_from_dict
from tm_distill.training.run import run_recipe


def test_final_card_states_the_run_then_the_eval_numbers(tiny_recipe, tiny_teacher_dir, tiny_text_dir, tmp_path):
    raw = tiny_recipe(steps=3, checkpoint_every=0)
    raw["stages"] = [{"name": "hidden", "steps": 2, "batch_size": 2, "lr": 1e-2}, raw["stages"][0]]
    recipe = recipe_from_dict(raw)
    summary = run_recipe(recipe)
    final = Path(recipe.output_dir) / "final"
    card = (final / CARD_FILE).read_text()
    tokens = 2 * 2 * 32 + 3 * 2 * 32  # steps x batch x seq_len, both stages
    assert f"Tokens trained: **{tokens:,}**" in card and "recipe `tiny`" in card
    assert "| hidden | 2 | 128 |" in card and "| logits | 3 | 192 |" in card
    assert f"{summary['heldout_kl_seeded']:.4f} before training, **{summary['heldout_kl_distilled']:.4f}** after" in card
    assert "distillation" in yaml.safe_load(card.split("---", 2)[1])["tags"]
    assert "Not evaluated yet" in card
    assert not (Path(recipe.output_dir) / "1-logits" / "final" / CARD_FILE).exists()  # the run's final/ only
    config = json.loads((final / "config.json").read_text())  # loadable without tm_distill, like every checkpoint
    assert config["auto_map"] == auto_map() and sorted(p.name for p in final.glob("*.py")) == sorted(code_files())

    options = EvalOptions(seq_len=32, windows=2, heldout_fraction=0.2, layer_error=False, retrieval_lengths=[],
                          speed=False)
    report = run_eval([final], str(tiny_teacher_dir), str(tiny_text_dir), tmp_path / "report", options, plots=False,
                      progress=False)
    card = (final / CARD_FILE).read_text()
    s, t = report["models"]["final"], report["models"]["teacher"]
    assert "Not evaluated yet" not in card and str((tmp_path / "report").resolve()) in card
    assert (f"| this student | {s['perplexity']:.3f} | {s['kl_to_teacher']:.4f} | {s['top1_agreement']:.3f} |"
            in card)
    assert f"{t['perplexity']:.3f}" in card and "Tokens trained" in card  # the run's part stays
    meta = json.loads((final / "tm_distill.json").read_text())
    assert meta["evaluation"]["heldout"]["student"]["kl_to_teacher"] == s["kl_to_teacher"]
    stage_meta = json.loads((Path(recipe.output_dir) / "1-logits" / "final" / "tm_distill.json").read_text())
    assert "evaluation" not in stage_meta  # final/ hard-links the stage's files: the card replaced, not edited

    before = card
    run_eval([final], str(tiny_teacher_dir), str(tiny_text_dir), tmp_path / "other",
             EvalOptions(**{**options.__dict__, "transpoints": "all=8"}), plots=False, progress=False)
    assert (final / CARD_FILE).read_text() == before  # numbers of another schedule are not this folder's
