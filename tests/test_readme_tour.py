"""The README's quick tour: it shows loading without the package, serving and tracking, and its commands are real
(every `tm-distill` subcommand and flag exists, recipes load with their overrides, lm_eval parses its line)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest

from tm_distill.cli import cli
from tm_distill.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TOUR = re.search(r"^## Quick tour\n(.*?)^## ", (ROOT / "README.md").read_text(), flags=re.S | re.M).group(1)


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", TOUR, flags=re.S | re.M)


def _commands(program: str) -> list[list[str]]:
    """Each shell command of the tour that runs ``program``, continuation lines joined, comments dropped."""
    text = "\n".join(_blocks("bash")).replace("\\\n", " ")
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))
            and words[0] == program]


def _options(name: str) -> set[str]:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, f"tm-distill has no command {name!r}"
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}


def test_every_tm_distill_command_of_the_tour_exists_with_its_flags():
    commands = _commands("tm-distill")
    assert {c[1] for c in commands} >= {"convert", "generate", "inspect", "plan", "validate", "distill", "eval",
                                         "serve"}
    for words in commands:
        flags = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        assert flags <= _options(words[1]), (words, flags - _options(words[1]))


def test_the_tours_recipes_load_with_their_overrides():
    runs = [w for w in _commands("tm-distill") if w[1] in ("validate", "distill")]
    assert runs
    for words in runs:
        args = [w for w in words[2:] if not w.startswith("--")]
        recipe = load_recipe(ROOT / args[0], args[1:])
        if "report_to=[tensorboard]" in args:
            assert recipe.report_to == ["tensorboard"]


def test_the_tour_shows_loading_without_the_package_serving_and_tracking():
    (python,) = _blocks("python")
    assert 'from_pretrained("runs/student", trust_remote_code=True)' in python
    assert not re.search(r"^\s*(import|from) tm_distill", python, flags=re.M)  # only a comment offers it
    assert "without tm-distill installed" in TOUR
    (serve,) = [w for w in _commands("tm-distill") if w[1] == "serve"]
    (curl,) = _commands("curl")
    port = serve[serve.index("--port") + 1]
    assert curl[1] == f"localhost:{port}/v1/chat/completions"
    body = json.loads(curl[curl.index("-d") + 1])
    assert body["model"] == serve[2] and body["messages"][0]["role"] == "user"
    assert any(w[1] == "distill" and "report_to=[tensorboard]" in w for w in _commands("tm-distill"))
    assert any(w[:3] == ["tensorboard", "--logdir", "runs/cpu-demo/trackers"] for w in _commands("tensorboard"))


def test_the_tours_lm_eval_line_parses_with_lm_evals_own_cli(monkeypatch):
    main = pytest.importorskip("lm_eval.__main__")
    (words,) = _commands("lm_eval")
    monkeypatch.setattr("sys.argv", words)
    args = main.HarnessCLI().parse_args()
    assert args.model == "hf" and args.model_args["trust_remote_code"] is True
    assert args.model_args["pretrained"] == "runs/cpu-demo/final"
