"""A run whose TransPoints are planned (auto:...) plans on its training documents, never the held-out ones."""

from __future__ import annotations

import pytest
import torch

from tm_distill.data.loading import load_texts
from tm_distill.data.tokens import build_token_dataset
from tm_distill.models.configuration import ATTENTION_ONLY as ATTN


def test_a_run_plans_on_its_training_documents_only(monkeypatch, tiny_recipe):
    import tm_distill.plan as plan_module
    from tm_distill.recipe import recipe_from_dict
    from tm_distill.training import run_recipe

    seen = {}

    def fake(spec, model, tokenizer, texts, seq_len, **kw):
        seen["texts"] = list(texts.texts)  # the run's training documents, as data.windows.Documents
        return [0, ATTN], "planned"

    monkeypatch.setattr(plan_module, "resolve_auto", fake)
    raw = tiny_recipe(steps=1)
    raw["transpoints"] = "auto:kv_budget=50%,method=importance"
    recipe = recipe_from_dict(raw)
    run_recipe(recipe)
    docs = load_texts(raw["data"]["source"])
    data = build_token_dataset(docs, smol_tokenizer(recipe), 32, heldout_fraction=0.2, seed=0)
    assert 0 < len(seen["texts"]) < len(docs) and data.meta["heldout_documents"] == len(docs) - len(seen["texts"])


def smol_tokenizer(recipe):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(recipe.teacher)


def _marked_text(tiny_text_dir, tokenizer, folder):
    """tiny_text_dir's documents with the one the run holds out (heldout_fraction 0.2, seed 0) rewritten in Greek
    letters; returns (folder, the token ids only that held-out document has)."""
    import random

    from tm_distill.data.tokens import training_documents

    texts = load_texts(str(tiny_text_dir))
    train = training_documents(texts, tokenizer, 32, heldout_fraction=0.2, seed=0)
    held = [i for i, t in enumerate(texts) if t not in train]
    rng = random.Random(0)
    greek = " ".join("".join(rng.choice("αβγδεζηθικλμνξοπρστυφχψω") for _ in range(rng.randint(2, 9)))
                     for _ in range(900))
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i}.txt").write_text(greek if i in held else text)
    marked = load_texts(str(folder))
    assert len(held) == 1 and training_documents(marked, tokenizer, 32, heldout_fraction=0.2, seed=0) == train
    seen = {t for d in tokenizer(train, add_special_tokens=False)["input_ids"] for t in d}
    markers = set(tokenizer(greek, add_special_tokens=False)["input_ids"]) - seen
    assert len(markers) > 20
    return folder, torch.tensor(sorted(markers))


def _marks(windows, markers) -> int:
    return int(torch.isin(windows, markers).sum())


@pytest.mark.parametrize("method", ["sensitivity", "importance"])
def test_no_heldout_window_reaches_planning_or_calibration(monkeypatch, tiny_recipe, tiny_text_dir, tmp_path, method):
    """The held-out document is written in Greek, so its tokens mark every window cut from it: the windows
    `auto:` planning measures and calibration fits hold none, while the held-out windows do."""
    from types import SimpleNamespace

    import tm_distill.plan as plan_module
    from tm_distill import importance
    from tm_distill.convert import calibrate
    from tm_distill.recipe import recipe_from_dict
    from tm_distill.training import run_recipe

    raw = tiny_recipe(steps=1)
    folder, markers = _marked_text(tiny_text_dir, smol_tokenizer(recipe_from_dict(raw)), tmp_path / "marked")
    seen = {}
    real_sensitivity, real_calibrate = plan_module.measure_sensitivity, calibrate.calibrate_student

    def sensitivity(model, windows, *args, **kw):
        seen["planned"] = windows
        return real_sensitivity(model, windows, *args, **kw)

    def by_importance(teacher, windows, *args, **kw):
        seen["planned"] = windows
        return SimpleNamespace(transpoints=[0, ATTN], explain=lambda: "planned")

    def calibration(student, teacher, windows, *, heldout=None, **kw):
        seen["fitted"], seen["scored"] = windows, heldout
        return real_calibrate(student, teacher, windows, heldout=heldout, **kw)

    monkeypatch.setattr(plan_module, "measure_sensitivity", sensitivity)
    monkeypatch.setattr(importance, "plan_by_importance", by_importance)
    monkeypatch.setattr(calibrate, "calibrate_student", calibration)
    raw["data"]["source"] = str(folder)
    raw["transpoints"] = f"auto:kv_budget=50%,method={method}"
    summary = run_recipe(recipe_from_dict(raw, ["calibrate.windows=4", "calibrate.heldout_windows=2"]))
    assert seen["planned"].shape[0] >= 1 and _marks(seen["planned"], markers) == 0
    assert seen["fitted"].shape == (4, 32) and _marks(seen["fitted"], markers) == 0
    assert _marks(seen["scored"], markers) > 0  # the marks are there to see: in the held-out windows
    assert summary["heldout_windows"] == 4
