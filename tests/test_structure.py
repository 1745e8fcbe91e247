"""The package's shape: floors that import only downwards, no import cycle inside tm_distill, and functions
short enough to read on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tm_distill"
MAX_LINES = 60
# The package's floors, lowest first. A module imports only from its own floor or below, anywhere in the file
# (inside functions and under ``if TYPE_CHECKING:`` too). A name is a top-level module or a subpackage of
# tm_distill, or a module inside one where that module sits above the rest of its package; "__init__" is the
# root package, which registers the student with transformers.
FLOORS = (
    # no model code: errors, atomic writes, YAML, dtype/device/cache folder, chat templates, the recipe schema
    ("errors", "extras", "atomic", "safe_yaml", "version", "runtime", "chat", "stage_names", "metadata",
     "recipe_parse", "recipe", "recipe_meta", "recipe_docs"),
    ("ops",),  # the scan and decode kernels, each with its PyTorch reference
    ("models",),  # the student: config, mixer, model, cache, CUDA-graph decode, activation capture
    ("data", "losses", "generation"),  # text -> token windows; losses as functions; decoding loops
    ("convert",),  # teacher loading, TransPoint specs, weight seeding, calibration
    ("stages",),  # the distillation stages behind one interface
    ("checkpoint", "card"),  # a student folder on disk and its model card
    ("plan", "importance"),  # auto TransPoints
    ("conversion",),  # `convert` itself: load, seed, plan, calibrate, save
    ("training",),
    ("eval", "serving"),
    ("commands", "cli", "__init__"),
)
# Functions over MAX_LINES lines, with why.
LONG_FUNCTIONS = {
    # each has a comment above it saying why
    "conversion.py:convert": "a long docstring; 37-line body",
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
                base = _from_base(node, package)
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


def _floor_names() -> dict[str, int]:
    return {name: level for level, names in enumerate(FLOORS) for name in names}


def floor_of(module: str) -> str:
    """The FLOORS name that holds ``module`` (dotted, under tm_distill): the longest name it starts with."""
    rel = module.removeprefix("tm_distill").removeprefix(".") or "__init__"
    names = [n for n in _floor_names() if rel == n or rel.startswith(n + ".")]
    assert names, f"{module} is on no floor: add it to FLOORS in tests/test_structure.py"
    return max(names, key=len)


def _from_base(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from X import ...`` inside ``package`` names (relative levels resolved)."""
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return base


def _all_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every tm_distill module ``name`` imports anywhere in its file, with the packages whose ``__init__``
    that import runs (the root excepted: every import runs it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            subs = {f"{base}.{alias.name}" for alias in node.names} & known  # ``from pkg import submodule``
            found.update(subs or {base})
    targets = set()
    for target in found & known:
        parts = target.split(".")
        targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return (targets & known) - {name}


def upward_imports() -> list[str]:
    """'module (floor) -> module (floor)' for every import that reaches a higher floor."""
    modules = _modules()
    level = _floor_names()
    out = []
    for name, path in modules.items():
        here = floor_of(name)
        for target in sorted(_all_imports(name, path, set(modules))):
            there = floor_of(target)
            if level[there] > level[here]:
                out.append(f"{name} ({here}) -> {target} ({there})")
    return out


def test_floors_name_every_module_once():
    names = [n for floor in FLOORS for n in floor]
    assert len(names) == len(set(names))
    for name in _modules():
        floor_of(name)  # asserts it has one


def test_no_import_reaches_a_higher_floor():
    assert floor_of("tm_distill.conversion") == "conversion" and floor_of("tm_distill.convert.seed") == "convert"
    up = upward_imports()
    assert not up, "imports up a floor (move the helper down, or the module up):\n" + "\n".join(up)


def test_the_floor_walk_sees_function_local_and_relative_imports(tmp_path):
    """A lazy import inside a function counts; ``from .. import x`` names the module x."""
    module = tmp_path / "m.py"
    module.write_text("from .. import safe_yaml\n\ndef f():\n    from ..training.run import run_recipe\n")
    known = {"tm_distill", "tm_distill.safe_yaml", "tm_distill.training", "tm_distill.training.run"}
    assert _all_imports("tm_distill.data.m", module, known) == {
        "tm_distill.safe_yaml", "tm_distill.training", "tm_distill.training.run"}


def _lines_with(text: str) -> list[str]:
    return [f"{p.relative_to(PACKAGE).as_posix()}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if text in line]


def test_one_resolver_owns_fixed_and_auto_transpoint_specs():
    """``convert.transpoints.is_auto_spec`` alone tells an ``auto:`` spec from a fixed one, and only
    ``plan.resolve_transpoints`` plans one: convert, plan, validate and distill all resolve through it."""
    assert [line.split(":")[0] for line in _lines_with('startswith("auto')] == ["convert/transpoints.py"]
    callers = {line.split(":")[0] for line in _lines_with("resolve_auto(")}
    assert callers == {"plan.py"}, callers
    users = {line.split(":")[0] for line in _lines_with("resolve_transpoints(")}
    assert users >= {"plan.py", "conversion.py", "training/resolve.py", "training/run.py", "commands/plan.py"}


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
