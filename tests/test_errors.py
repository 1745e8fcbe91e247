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
