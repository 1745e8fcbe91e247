"""pyproject.toml declares what tm_distill imports, and nothing it does not import as a core dependency."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml", "lm_eval": "lm-eval", "mamba_ssm": "mamba-ssm"}
# imported only behind a guard on the GPU path and installed with CUDA builds of torch
PROVIDED_BY_TORCH = {"triton"}
# declared core dependencies that are loaded by another library rather than imported by name
LOADED_INDIRECTLY = {"safetensors", "gguf"}  # transformers reads .safetensors and .gguf files with them


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}  # noqa: E731
    return names(project["dependencies"]), {k: names(v) for k, v in project["optional-dependencies"].items()}


def _imported() -> set[str]:
    mods = set()
    for path in (ROOT / "tm_distill").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "tm_distill"} - PROVIDED_BY_TORCH


def test_every_imported_package_is_declared():
    core, extras = _declared()
    everything = core.union(*extras.values())
    missing = sorted(m for m in _imported() if _norm(DISTRIBUTION.get(m, m)) not in everything)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert {"numpy", "huggingface-hub"} <= core


def test_core_dependencies_are_imported():
    core, extras = _declared()
    imported = {_norm(DISTRIBUTION.get(m, m)) for m in _imported()}
    unused = sorted(core - imported - LOADED_INDIRECTLY)
    assert not unused, f"core dependencies tm_distill never imports (move them to an extra): {unused}"
    assert "trl" not in core and "trl" in extras["dev"]  # the tests compare our JSD with trl's
