"""The README's two commands and the scripts behind them: what CI runs, where they install, what the demo shows."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from click.testing import CliRunner

from tm_distill.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO = (ROOT / "scripts" / "demo.sh").read_text()


def test_ci_runs_exactly_the_readmes_test_command():
    commands = re.findall(r"^(bash scripts/setup\.sh && bash scripts/\w+\.sh)$", README, flags=re.M)
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
