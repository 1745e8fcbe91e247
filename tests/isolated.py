"""Run Python code in a process where tm_distill cannot be imported, as on a machine without the package.

The process runs isolated (``python -I -S``): site-packages is put on ``sys.path`` by hand, so its ``.pth``
files, among them the editable install's finder for tm_distill, never run; the working directory is a temporary
folder, not the repository, and ``PYTHON*`` variables are dropped (PYTHONPATH's folders that hold no
tm_distill are kept on ``sys.path``); every import finder is wrapped so that it
finds neither tm_distill (a regular install would sit in site-packages itself) nor any package named in
``blocked``, as on a machine without them. Before ``code`` runs, ``import tm_distill`` must fail, or the run
stops: a test that used it would prove nothing.
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
_isolation = json.loads(sys.argv[1])
sys.path.extend(_isolation["path"])


class Without:  # each finder, blind to the blocked packages: find_spec gives None, import raises, as if not installed
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _isolation["blocked"] or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, attr)


sys.meta_path[:] = [Without(finder) for finder in sys.meta_path]
try:
    import tm_distill
    sys.exit("tm_distill is importable in the isolated process")
except ModuleNotFoundError:
    pass
"""


def _pythonpath_without_tm_distill() -> list[str]:
    """The PYTHONPATH folders that hold no tm_distill: packages installed with ``pip --target`` (as on the GPU
    machine, where mamba-ssm sits in such a folder) stay importable, the repository checkout does not."""
    folders = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [p for p in folders if not (Path(p) / "tm_distill").exists()]


def run_without_tm_distill(code: str, cwd: Path, *args: str, timeout: float = 900,
                           blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` (``sys.argv[2:]`` = ``args``) with transformers' module cache in ``cwd``, tm_distill and the
    top-level packages in ``blocked`` not importable; fails on exit != 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(cwd / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    isolation = {"path": [*site.getsitepackages(), *_pythonpath_without_tm_distill()],
                 "blocked": ["tm_distill", *blocked]}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", PRELUDE + code, json.dumps(isolation), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc
