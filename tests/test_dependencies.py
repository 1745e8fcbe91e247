"""pyproject.toml says what each dependency is for: the core ones are what tm_distill imports unconditionally,
every import (package, tests, benchmarks) is declared, every declared package is imported somewhere, an
optional one is imported lazily and named by the error a missing one gives, and setup.sh installs what the
tests import."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from tm_distill.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"tm_distill", "tests", "benchmarks"}
# import name -> distribution name, where they differ beyond - and _
DISTRIBUTION = {"yaml": "pyyaml", "lm_eval": "lm-eval", "mamba_ssm": "mamba-ssm"}
# declared packages no code imports by name, with what loads them
LOADED_INDIRECTLY = {
    "safetensors": "transformers reads .safetensors files with it",
    "gguf": "transformers reads .gguf files with it",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist(module: str) -> str:
    return _norm(DISTRIBUTION.get(module, module))


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _names(project["dependencies"]), {k: _names(v) for k, v in project["optional-dependencies"].items()}


def _third_party(names) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in LOCAL}


def _imports(folder: str, unconditional_only: bool = False) -> set[str]:
    """Top-level names of the modules the .py files under ``folder`` import; with ``unconditional_only``, only
    the imports that run when the module is imported (module level, outside if/try/functions/classes)."""
    mods = set()
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body if unconditional_only else ast.walk(tree):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return _third_party(mods)


def test_every_import_is_declared():
    core, extras = _declared()
    everything = core.union(*extras.values())
    for folder in ("tm_distill", "tests", "benchmarks"):
        missing = sorted(m for m in _imports(folder) if _dist(m) not in everything)
        assert not missing, f"{folder}/ imports packages pyproject.toml does not declare: {missing}"
    assert {"numpy", "huggingface-hub"} <= core


def test_core_dependencies_are_what_the_package_imports():
    core, _ = _declared()
    imported = {_dist(m) for m in _imports("tm_distill")}
    unused = sorted(core - imported - set(LOADED_INDIRECTLY))
    assert not unused, f"core dependencies tm_distill never imports (move them to an extra): {unused}"
    eager = sorted(m for m in _imports("tm_distill", unconditional_only=True) if _dist(m) not in core)
    assert not eager, f"tm_distill imports optional packages when it is imported (import them lazily): {eager}"


def test_every_extra_package_is_imported_somewhere():
    _, extras = _declared()
    imported = {_dist(m) for folder in ("tm_distill", "tests", "benchmarks") for m in _imports(folder)}
    for extra, packages in extras.items():
        unused = sorted(packages - imported - {"transformers"})  # serve: transformers[serving]'s extras
        assert not unused, f"extra {extra!r} declares packages nothing imports: {unused}"
    assert "trl" in extras["dev"] and {"peft"} == extras["lora"] and {"matplotlib"} == extras["plots"]


def test_the_missing_extra_error_names_the_extra_that_declares_it():
    core, extras = _declared()
    for module, extra in EXTRAS.items():
        assert _dist(module) in extras[extra] and _dist(module) not in core, (module, extra)
    mamba = [r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
             if r.startswith("mamba-ssm")]
    assert mamba and "<" in mamba[0], "ops/ calls mamba-ssm's private kernels: pin an upper bound"


def test_setup_installs_every_extra_the_tests_import():
    core, extras = _declared()
    (installed,) = re.findall(r"pip install -q -e '\.\[([\w,]+)\]'", (ROOT / "scripts" / "setup.sh").read_text())
    have = core.union(*(extras[e] for e in installed.split(",")))
    gpu_only = extras["gpu"]  # the GPU tests are skipped without CUDA; setup.sh installs CPU torch
    missing = sorted(m for m in _imports("tests") if _dist(m) not in have | gpu_only)
    assert not missing, f"tests import packages scripts/setup.sh does not install: {missing}"
