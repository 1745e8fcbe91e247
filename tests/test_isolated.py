"""tests/isolated.py: the process it starts cannot import tm_distill, and can import what pip installed anywhere
else, site-packages or a ``pip --target`` folder on PYTHONPATH (as on the GPU machine, where mamba-ssm sits in
such a folder: without it the remote side of bench_remote_code ran the PyTorch scan)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.isolated import run_without_tm_distill

ROOT = Path(__file__).resolve().parents[1]

CODE = r"""
import importlib.util
print("FOUND", importlib.util.find_spec("target_only_pkg") is not None, importlib.util.find_spec("blocked_pkg") is not None)
"""


def test_a_pythonpath_package_stays_importable_and_tm_distill_does_not(tmp_path, monkeypatch):
    target = tmp_path / "target"
    for name in ("target_only_pkg", "blocked_pkg"):
        (target / name).mkdir(parents=True)
        (target / name / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(target)]))
    work = tmp_path / "work"
    work.mkdir()
    proc = run_without_tm_distill(CODE, work, blocked=("blocked_pkg",))  # the prelude fails if tm_distill imports
    assert proc.stdout.split("FOUND ")[1].split() == ["True", "False"]
