"""An optional dependency that is missing is one line naming the feature and the extra, before any work."""

from __future__ import annotations

import sys

import pytest
import torch

from tm_distill.errors import UserError
from tm_distill.extras import MissingExtra, available, require
from tm_distill.recipe import LoraConfig, RecipeError, recipe_from_dict
from tm_distill.training.resolve import resolve_plan


def _hide(monkeypatch, module: str) -> None:
    """As if ``module`` were not installed: find_spec finds nothing and an import fails."""
    monkeypatch.setitem(sys.modules, module, None)
    assert not available(module)


def test_require_names_the_feature_and_the_extra(monkeypatch):
    require("yaml", "anything")  # installed: nothing happens
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtra) as err:
        require("matplotlib", "the report's plots")
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    assert str(err.value) == ("the report's plots needs matplotlib, which is not installed: "
                              "pip install 'tm-distill[plots]'")


def test_plots_without_matplotlib_say_how_to_install_or_skip(monkeypatch, tmp_path):
    from tm_distill.eval.plots import plot_layer_error

    _hide(monkeypatch, "matplotlib")
    report = {"models": {"s": {"kind": "student", "layer_error": [0.1, 0.2]}}}
    with pytest.raises(MissingExtra, match=r"--no-plots` skips them\) needs matplotlib.*tm-distill\[plots\]"):
        plot_layer_error(report, tmp_path / "layer_error.png")
    assert not (tmp_path / "layer_error.png").exists()


def _lora_recipe(tmp_path, trainable="lora"):
    return recipe_from_dict({"teacher": "smollm2-135m", "output_dir": str(tmp_path / "run"),
                             "stages": [{"name": "hidden", "steps": 1},
                                        {"name": "logits", "steps": 1, "trainable": trainable}]})


def test_a_lora_recipe_without_peft_is_refused_before_any_work(monkeypatch, tmp_path):
    _hide(monkeypatch, "peft")
    with pytest.raises(RecipeError, match=r"stages\[1\]\.trainable: lora needs peft, which is not installed: "
                                          r"pip install 'tm-distill\[lora\]'"):
        resolve_plan(_lora_recipe(tmp_path), None)
    assert resolve_plan(_lora_recipe(tmp_path, trainable="ssm"), None).stages  # only lora needs peft
    assert not (tmp_path / "run").exists()


def test_the_lora_stage_itself_names_the_extra(monkeypatch):
    from tm_distill.stages.logits import _inject_lora

    _hide(monkeypatch, "peft")
    with pytest.raises(MissingExtra, match=r"trainable: lora needs peft.*tm-distill\[lora\]"):
        _inject_lora(torch.nn.Linear(2, 2), LoraConfig())
