"""The student's modeling code, written beside its weights so that plain transformers can load it.

A checkpoint folder carries a flat copy of every module the model runs (``models/`` and the ``ops/`` it
imports, fast paths included: each module keeps its own guard on mamba-ssm, Triton and Liger-Kernel and falls
back to the PyTorch reference without them) and an ``auto_map`` in config.json, so that
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` works where tm_distill is not installed.
With ``import tm_distill`` the registered classes load the same folder without ``trust_remote_code``.

Why not transformers' ``register_for_auto_class``: its ``custom_object_save`` copies a class's module plus the
modules found by ``from .name import`` lines, from that module's own folder, and the loader finds a module's
dependencies by the same one-dot pattern (``dynamic_module_utils.get_relative_imports``). The model spans two
subpackages (``models`` imports ``..ops``, two dots the loader does not follow), so the files are written
flat, one per package module, each relative import rewritten to its flat name. They are made from the
package's own source at save time; nothing is kept by hand. A module imported as an object
(``from ..ops import fused``) has no one-dot form the loader would see, so the model code imports names
(``from ..ops.fused import rotary``) and this module refuses anything else.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

from ..version import __version__

# auto class -> (module, class) of what a checkpoint's config.json maps it to
ENTRY_POINTS = {
    "AutoConfig": ("tm_distill.models.configuration", "TransMambaConfig"),
    "AutoModel": ("tm_distill.models.modeling", "TransMambaModel"),
    "AutoModelForCausalLM": ("tm_distill.models.modeling", "TransMambaForCausalLM"),
}
_PACKAGE = "tm_distill"
_CARRIED = ("tm_distill.models", "tm_distill.ops")  # the model's layers; nothing else may be imported by them
# the Hub's usual names for the two files an auto_map names
_HF_NAMES = {"tm_distill.models.configuration": "configuration_transmamba",
             "tm_distill.models.modeling": "modeling_transmamba"}


class RemoteCodeError(RuntimeError):
    """The model's modules import something a checkpoint cannot carry."""


def flat_name(module: str) -> str:
    """The file stem a package module is saved as: ``tm_distill.ops.decode`` -> ``transmamba_ops_decode``."""
    if module in _HF_NAMES:
        return _HF_NAMES[module]
    parts = module.split(".")[1:]
    if parts[:1] == ["models"]:
        parts = parts[1:]
    return "_".join(["transmamba", *parts])


def _source(module: str) -> tuple[Path, str]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RemoteCodeError(f"cannot find the source of {module}")
    return Path(spec.origin), Path(spec.origin).read_text(encoding="utf-8")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _relative_imports(module: str, path: Path, source: str) -> list[tuple[ast.ImportFrom, str]]:
    """Every ``from .x import names`` of ``module`` (nested ones included), with the module it names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        absolute = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if any(n == _PACKAGE or n.startswith(_PACKAGE + ".") for n in absolute):
            raise RemoteCodeError(f"{module} line {node.lineno} imports {_PACKAGE} by name: import relatively "
                                  "(a checkpoint has no tm_distill)")
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        if not target.startswith(tuple(p + "." for p in _CARRIED) + _CARRIED):
            raise RemoteCodeError(f"{module} line {node.lineno} imports {target}: model code may import only "
                                  f"from {' and '.join(_CARRIED)}, which a checkpoint carries")
        objects = [a.name for a in node.names if _is_module(f"{target}.{a.name}")]
        if objects:
            raise RemoteCodeError(f"{module} line {node.lineno} imports module {target}.{objects[0]} as an "
                                  f"object: import the names it uses (from .{objects[0]} import ...)")
        found.append((node, target))
    return found


def _rewrite(source: str, imports: list[tuple[ast.ImportFrom, str]]) -> str:
    """``source`` with each relative import replaced by a one-dot import of its flat module."""
    lines = [line.encode("utf-8") for line in source.splitlines(keepends=True)]
    for node, target in sorted(imports, key=lambda it: (it[0].lineno, it[0].col_offset), reverse=True):
        names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
        new = f"from .{flat_name(target)} import {names}".encode()
        first, last = node.lineno - 1, node.end_lineno - 1
        joined = lines[first][: node.col_offset] + new + lines[last][node.end_col_offset:]
        lines[first: last + 1] = [joined]
    return b"".join(lines).decode("utf-8")


def _header(module: str, path: Path) -> str:
    where = path.relative_to(Path(importlib.util.find_spec(_PACKAGE).origin).parent.parent).as_posix()
    return (f"# {where} of tm-distill {__version__}, with its relative imports flattened by\n"
            "# tm_distill.models.remote_code when the checkpoint was saved: edit the package, not this copy.\n")


def code_files() -> dict[str, str]:
    """Flat file name -> source, for every module the entry points need (transitively, lazy imports too)."""
    todo, files, seen = sorted({m for m, _ in ENTRY_POINTS.values()}), {}, set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path, source = _source(module)
        imports = _relative_imports(module, path, source)
        files[f"{flat_name(module)}.py"] = _header(module, path) + _rewrite(source, imports)
        todo.extend(target for _, target in imports)
    return dict(sorted(files.items()))


def auto_map() -> dict[str, str]:
    """config.json's ``auto_map``: each auto class -> ``flat_module.Class``."""
    return {auto: f"{flat_name(module)}.{cls}" for auto, (module, cls) in ENTRY_POINTS.items()}


def write_code(folder: str | Path) -> list[Path]:
    """Write the modeling files into ``folder`` and add ``auto_map`` to its config.json; returns the files."""
    folder = Path(folder)
    written = []
    for name, text in code_files().items():
        (folder / name).write_text(text, encoding="utf-8")
        written.append(folder / name)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = auto_map()
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return written


__all__ = ["ENTRY_POINTS", "RemoteCodeError", "auto_map", "code_files", "flat_name", "write_code"]
