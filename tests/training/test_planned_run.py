"""A run whose TransPoints are planned (auto:...) plans on its training documents, never the held-out ones."""

from __future__ import annotations

from tm_distill.data.loading import load_texts
from tm_distill.data.tokens import build_token_dataset
from tm_distill.models.configuration import ATTENTION_ONLY as ATTN


def test_a_run_plans_on_its_training_documents_only(monkeypatch, tiny_recipe):
    import tm_distill.plan as plan_module
    from tm_distill.recipe import recipe_from_dict
    from tm_distill.training import run_recipe

    seen = {}

    def fake(spec, model, tokenizer, texts, seq_len, **kw):
        seen["texts"] = list(texts)
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
