"""A ``UserError`` raised anywhere under a command is printed as one line, exit status 1, no traceback."""

from __future__ import annotations

import click
from click.testing import CliRunner

from tm_distill import cli as cli_module
from tm_distill.errors import UserError


@click.command("boom")
def boom():
    raise UserError("data.source: /nowhere does not exist: give a file or folder")


def test_a_user_error_is_one_line(monkeypatch):
    monkeypatch.setitem(cli_module.COMMANDS, "boom", "tests.test_errors:boom")
    result = CliRunner().invoke(cli_module.cli, ["boom"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.strip() == "Error: data.source: /nowhere does not exist: give a file or folder"


@click.command("boom-multiline")
def boom_multiline():
    raise UserError("cannot read weights", what="teacher runs/t", fix="re-download it\n(the file is cut)")


def test_the_error_carries_its_input_and_fix_and_prints_on_one_line(monkeypatch):
    err = UserError("is not a number", what="stages[0].lr", fix="give e.g. 1e-4")
    assert (str(err), err.message, err.what, err.fix) == (
        "stages[0].lr: is not a number: give e.g. 1e-4", "is not a number", "stages[0].lr", "give e.g. 1e-4")
    monkeypatch.setitem(cli_module.COMMANDS, "boom-multiline", "tests.test_errors:boom_multiline")
    result = CliRunner().invoke(cli_module.cli, ["boom-multiline"])
    assert result.exit_code == 1
    assert result.output == "Error: teacher runs/t: cannot read weights: re-download it (the file is cut)\n"


# Exceptions that are not a user's to fix, with why.
NOT_USER_ERRORS = {
    "tm_distill.training.loop.TrainingStopped": "a clean stop, not an error; distill says how to continue",
    "tm_distill.models.capture._StopForward": "control flow inside a forward pass",
    # models/ and ops/ ship inside a checkpoint without the rest of the package, so they cannot import errors.py
    "tm_distill.models.graphs.GraphCaptureError": "CUDA-graph capture failed: decoding falls back to eager",
    "tm_distill.models.remote_code.RemoteCodeError": "a student's code files cannot be written: a bug",
    "tm_distill.ops.BackendUnavailable": "raised at forward time under ops/; convert checks ssm_backend first",
    "tm_distill.safe_yaml.TooLarge": "a yaml.YAMLError; load_recipe turns it into a RecipeError",
}


def test_every_error_a_user_can_cause_is_a_user_error():
    import importlib
    import inspect
    import pkgutil

    import tm_distill

    others = set()
    for info in pkgutil.walk_packages(tm_distill.__path__, "tm_distill."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if (inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == module.__name__
                    and not issubclass(cls, UserError)):
                others.add(f"{cls.__module__}.{cls.__qualname__}")
    assert others == set(NOT_USER_ERRORS)


def test_commands_keep_no_catch_tuple_of_user_errors():
    """The CLI catches UserError once: no command keeps a tuple of error types, nor maps type names to keys."""
    import ast
    from pathlib import Path

    commands = Path(cli_module.__file__).parent / "commands"
    for path in sorted(commands.glob("*.py")):
        source = path.read_text()
        assert "type(err).__name__" not in source and "USER_ERRORS" not in source and "_user_errors" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ExceptHandler):
                assert not isinstance(node.type, ast.Tuple), f"{path.name}:{node.lineno} catches a tuple"
