"""The stage names the recipe schema accepts are the stages the registry builds, with one unknown-name message."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tm_distill import stage_names
from tm_distill.recipe import RecipeError, StageConfig
from tm_distill.stages import STAGES, Stage, UnknownStage, get_stage_class


def test_recipe_and_registry_agree_on_every_stage():
    assert STAGES is stage_names.STAGES
    for name in STAGES:
        assert StageConfig(name=name, steps=1).name == name
        cls = get_stage_class(name)
        assert issubclass(cls, Stage) and cls.name == name


@pytest.mark.parametrize("name", ["logit", "onpolicyy", ""])
def test_an_unknown_stage_gets_the_same_message_from_both(name):
    with pytest.raises(RecipeError) as from_recipe:
        StageConfig(name=name, steps=1)
    with pytest.raises(UnknownStage) as from_registry:
        get_stage_class(name)
    assert from_recipe.value.message == str(from_registry.value) == stage_names.unknown_stage(name)


def test_trainable_sets_are_the_recipe_choices():
    for which in stage_names.TRAINABLE:
        assert StageConfig(name="logits", steps=1, trainable=which).trainable == which
    assert set(stage_names.TRAINABLE) == {*stage_names.TRAINABLE_SETS, "lora"}


def test_the_names_module_is_a_leaf_without_torch():
    tree = ast.parse(Path(stage_names.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
