"""Every documented benchmark command parses: each `python benchmarks/X.py ...` in the docs, the README and the
scripts' own docstrings goes through its script's argument parser (and nothing else runs)."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"python3? (benchmarks/(\w+)\.py)([^\n`#;&]*)")
INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def _texts() -> dict[str, str]:
    docs = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
    out = {str(p.relative_to(ROOT)): p.read_text() for p in docs}
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        out[str(path.relative_to(ROOT))] = ast.get_docstring(ast.parse(path.read_text())) or ""
    return out


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script module name, argv) for each documented command; ``[...]`` marks optional parts and
    ``A|B`` alternatives."""
    found = []
    for where, text in _texts().items():
        text = text.replace("\\\n", " ")  # shell line continuations
        text = INLINE_CODE.sub(lambda m: "`" + m[1].replace("\n", " ") + "`", text)  # a `span` wrapped in prose
        for m in COMMAND.finditer(text):
            args = re.sub(r"\[[^\]]*\]", " ", m[3])  # [--optional parts]
            args = re.sub(r"(\S+?)\|\S+", r"\1", args)  # A|B: one of them
            found.append((where, m[2], shlex.split(args)))
    return found


class _Parsed(Exception):
    pass


def _parse_only(module, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run ``module.main`` until its parser has parsed ``argv``; SystemExit when argparse refuses it."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    try:
        module.main(argv) if inspect.signature(module.main).parameters else module.main()
    except _Parsed as done:
        return done.args[0]
    raise AssertionError(f"{module.__name__}.main returned without parsing its arguments")


COMMANDS = documented_commands()


def test_the_docs_document_benchmark_commands():
    scripts = {name for _, name, _ in COMMANDS}
    assert {"bench_speed", "bench_distill", "bench_multigpu", "compare_row", "report"} <= scripts
    assert all(name in {p.stem for p in (ROOT / "benchmarks").glob("*.py")} for name in scripts)


@pytest.mark.parametrize("where, script, argv", COMMANDS, ids=[f"{w}:{s}:{i}" for i, (w, s, _) in enumerate(COMMANDS)])
def test_every_documented_benchmark_command_parses(where, script, argv, monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{script}")
    try:
        _parse_only(module, argv, monkeypatch)
    except SystemExit:
        pytest.fail(f"{where}: `python benchmarks/{script}.py {' '.join(argv)}` does not parse: "
                    f"{capsys.readouterr().err.strip().splitlines()[-1]}")


def test_a_stale_flag_is_caught(monkeypatch):
    with pytest.raises(SystemExit):
        _parse_only(importlib.import_module("benchmarks.bench_speed"), ["--student-maxbatch", "256"], monkeypatch)
