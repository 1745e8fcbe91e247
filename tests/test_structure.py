"""The package's shape: no import cycle inside tm_distill, and functions short enough to read on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tm_distill"
MAX_LINES = 60
# Functions over MAX_LINES lines, with why.
LONG_FUNCTIONS = {
    # each has a comment above it saying why
    "convert/api.py:convert": "a long docstring; 37-line body",
    "data/selfgen.py:sample_from_teacher": "a long docstring; 47-line body",
    "plan.py:choose_transpoints": "one greedy pass; 54-line body",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """tm_distill modules ``name`` imports when it is imported: statements outside functions and classes
    (those under ``if TYPE_CHECKING:`` included, so a cycle cannot hide there); lazy imports inside functions
    are not module-level and are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pkg import submodule``
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []) or [])

    visit(ast.parse(path.read_text()).body)
    targets = set()
    for target in found & known:
        targets.add(target)
        parts = target.split(".")  # importing a.b.c runs a/b/__init__ too, unless it is already running
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if not (name == parent or name.startswith(parent + ".")):
                targets.add(parent)
    return targets - {name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_inside_the_package():
    modules = _modules()
    graph = {name: _module_level_imports(name, path, set(modules)) for name, path in modules.items()}
    assert graph["tm_distill.recipe"] >= {"tm_distill.stage_names"}  # the walk sees relative imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def long_functions() -> dict[str, int]:
    """'path:function' -> lines, for every function in tm_distill over MAX_LINES lines."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    out[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = lines
    return out


def test_functions_fit_on_a_screen():
    over = {k: v for k, v in long_functions().items() if k not in LONG_FUNCTIONS}
    assert not over, f"functions over {MAX_LINES} lines (split them, or list them in LONG_FUNCTIONS with why): {over}"


if __name__ == "__main__":  # python tests/test_structure.py: list the long functions
    for where, lines in sorted(long_functions().items(), key=lambda kv: -kv[1]):
        print(f"{lines:4d}  {where}")
