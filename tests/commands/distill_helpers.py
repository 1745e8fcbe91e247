"""Helpers of the distill/validate CLI tests: a recipe writer for the ``root`` fixture's tiny teacher and text
(tests/commands/conftest.py), and the check that an error is a clean one-line message."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

import tm_distill  # noqa: F401
from tm_distill.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    """exit != 0, one message without a traceback, naming every fragment."""
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def write_recipe(root: Path, tmp_path: Path, *stages: dict, **top) -> Path:
    """A recipe file for the tiny teacher (output tmp_path/out); stages default to one 4-step logits stage."""
    recipe = {"name": "tiny", "teacher": str(root / "teacher"), "transpoints": "cycle=0,8", "device": "cpu",
              "output_dir": str(tmp_path / "out"),
              "data": {"source": str(root / "text"), "seq_len": 32, "heldout_fraction": 0.2, "heldout_windows": 2},
              "stages": list(stages) or [{"name": "logits", "steps": 4, "batch_size": 2, "lr": 1.0e-2}]}
    recipe.update(top)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "summary.json").read_text())
