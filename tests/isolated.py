"""Run Python code in a process where tm_distill cannot be imported, as on a machine without the package.

The process runs isolated (``python -I -S``): site-packages is put on ``sys.path`` by hand, so its ``.pth``
files, among them the editable install's finder for tm_distill, never run; the working directory is a temporary
folder, not the repository, and ``PYTHON*`` variables are dropped; an import hook refuses tm_distill should a
regular install sit in site-packages. Before ``code`` runs, ``import tm_distill`` must fail, or the run stops: a
test that used it would prove nothing.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

PRELUDE = r"""
import json, sys
sys.path.extend(json.loads(sys.argv[1]))


class NoTmDistill:  # a regular (not editable) install would sit in site-packages itself
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tm_distill":
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoTmDistill())
try:
    import tm_distill
    sys.exit("tm_distill is importable in the isolated process")
except ModuleNotFoundError:
    pass
"""


def run_without_tm_distill(code: str, cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``code`` (``sys.argv[2:]`` = ``args``) with transformers' module cache in ``cwd``; fails on exit != 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(cwd / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", PRELUDE + code, json.dumps(site.getsitepackages()),
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc
