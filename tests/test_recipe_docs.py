"""docs/recipes.md's key tables are the recipe schema's: help, default and resume rule come from recipe.py."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tm_distill import recipe_docs
from tm_distill.recipe import RESUME_RULES, StageConfig
from tm_distill.recipe_meta import fields, resume_keys, resume_rule, sections
from tm_distill.training.resume_check import safe_on_resume

DOCS = recipe_docs.DOCS.read_text()


def _row(table: str, key: str) -> str:
    (row,) = [line for line in table.splitlines() if line.startswith(f"| `{key}` |")]
    return row


def test_the_docs_tables_are_the_schemas():
    assert recipe_docs.render(DOCS) == DOCS, "docs/recipes.md is stale: run python -m tm_distill.recipe_docs"


def test_every_schema_section_has_a_table_in_the_docs():
    documented = recipe_docs.documented_sections(DOCS)
    assert sorted(documented) == sorted(s or recipe_docs.TOP for s in sections())
    assert len(set(documented)) == len(documented)


def test_every_key_has_help_text():
    for path, cls in sections().items():
        for f, _, _ in fields(cls):
            assert len(f.metadata.get("help", "")) > 5, f"{path}.{f.name} has no help text"


def test_a_stale_row_is_found_and_rewritten(tmp_path):
    stale = DOCS.replace(_row(recipe_docs.key_table("stages[i]"), "batch_size"),
                         "| `batch_size` | `2` | sequences per micro-batch |")
    assert stale != DOCS and recipe_docs.render(stale) == DOCS
    path = tmp_path / "recipes.md"
    path.write_text(stale)
    assert recipe_docs.main([str(path), "--check"]) == 1 and path.read_text() == stale  # --check writes nothing
    assert recipe_docs.main([str(path)]) == 0 and path.read_text() == DOCS
    assert recipe_docs.main([str(path), "--check"]) == 0


def test_text_outside_the_markers_is_kept():
    text = "intro\n<!-- keys: stages[i].optimizer -->\nold\n<!-- /keys -->\noutro | `lr` |\n"
    out = recipe_docs.render(text)
    assert out.startswith("intro\n<!-- keys: stages[i].optimizer -->\n| key | default | meaning |")
    assert out.endswith("<!-- /keys -->\noutro | `lr` |\n") and "| `lr` | `0.001` | peak learning rate" in out
    with pytest.raises(KeyError, match="unknown recipe section 'stages.loss'"):
        recipe_docs.render("<!-- keys: stages.loss -->\n<!-- /keys -->")


def test_defaults_are_written_as_yaml():
    stage = recipe_docs.key_table("stages[i]")
    assert "| `name` | required |" in stage and "| `steps` | — |" in stage
    assert "| `optimizer` | see `stages[i].optimizer:` |" in stage
    assert "| `normalize` | `true` |" in recipe_docs.key_table("stages[i].loss")
    assert "KL(teacher\\|\\|student)" in recipe_docs.key_table("stages[i].loss")  # a | inside a cell is escaped


def test_tokens_and_batch_size_rows_say_what_the_step_count_does_with_processes():
    """The rows state the arithmetic ``StageConfig.total_steps`` does: the token budget is the run's."""
    stage = recipe_docs.key_table("stages[i]")
    assert "seq_len * processes" in _row(stage, "tokens") and "each process" in _row(stage, "batch_size")
    cfg = StageConfig(name="logits", tokens=10_000, batch_size=2, grad_accum=3)
    for processes in (1, 2, 8):
        assert cfg.total_steps(128, processes) == math.ceil(10_000 / (2 * 3 * 128 * processes))
    assert StageConfig(name="logits", steps=7).total_steps(128, 8) == 7


@pytest.mark.parametrize("key, rule", [
    ("device", "any"), ("output_dir", "moved"), ("stages[3].keep_last", "any"),
    ("stages[0].optimizer.lr", "in_progress"), ("stages[1].precision", "in_progress"),
    ("stages[2].tokens", "longer"), ("stages[0].optimizer.betas", None), ("data.seq_len", None),
    ("ssm.use_conv", None), ("seed", None), ("stages[0].loss.kind", None),
])
def test_resume_rules_come_from_field_metadata(key, rule):
    assert resume_rule(key) == rule


def test_resume_table_and_message_name_every_key_with_a_rule():
    table = recipe_docs.resume_table()
    message = safe_on_resume()
    for rule in RESUME_RULES:
        assert resume_keys(rule), rule
        for key in resume_keys(rule):
            assert f"`{key}`" in table
            assert key.removeprefix("stages[i].") in message
    meta = {f.name: f.metadata["resume"] for f in dataclasses.fields(StageConfig)}
    assert meta["steps"] == "longer" and meta["batch_size"] is None


def test_an_unknown_resume_rule_is_refused_where_the_key_is_declared():
    from tm_distill.recipe import _help

    with pytest.raises(ValueError, match="resume='sometimes'"):
        _help("a new key", 1, resume="sometimes")
    assert _help("a new key", 1, resume="any").metadata == {"help": "a new key", "resume": "any"}
