"""`convert`, `generate`, `eval` and `inspect` on broken inputs: each is a one-line error naming the
input, no traceback, nothing written; and `convert` never overwrites its teacher or leaves temp folders behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.conftest import tiny_llama
from tm_distill.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    last = re.split(r"[\r\n]+", result.output.strip())[-1]
    for fragment in fragments:
        assert fragment in last, (fragment, result.output)


@pytest.fixture(scope="module")
def models(tmp_path_factory, smol):
    """teacher/ (tiny random Llama + SmolLM2 tokenizer), its student/, and broken copies of both."""
    root = tmp_path_factory.mktemp("models")
    tiny_llama(num_kv_heads=2).save_pretrained(root / "teacher")
    smol.tokenizer.save_pretrained(root / "teacher")
    assert run("convert", root / "teacher", root / "student", "--transpoints", "cycle=0,4").exit_code == 0
    for name in ("teacher", "student"):
        shutil.copytree(root / name, root / f"{name}-truncated")
        weights = root / f"{name}-truncated" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        shutil.copytree(root / name, root / f"{name}-badconfig")
        (root / f"{name}-badconfig" / "config.json").write_text("{ this is not json")
    shutil.copytree(root / "teacher", root / "teacher-notokenizer")
    for f in (root / "teacher-notokenizer").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            f.unlink()
    return root


# ----------------------------------------------------------------------------------- 5: unreadable model files
@pytest.mark.parametrize("kind, fragment", [("truncated", "corrupt or truncated"),
                                            ("badconfig", "config.json is not a readable model config")])
def test_convert_a_broken_teacher(models, tmp_path, kind, fragment):
    result = run("convert", models / f"teacher-{kind}", tmp_path / "out", "--transpoints", "all=4")
    assert_clean_error(result, fragment)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("kind, fragment", [("truncated", "corrupt or truncated"),
                                            ("badconfig", "config.json is not a readable model config")])
def test_generate_eval_inspect_a_broken_student(models, tmp_path, kind, fragment):
    student = models / f"student-{kind}"
    assert_clean_error(run("generate", student, "--prompt", "Hello"), fragment, str(student))
    assert_clean_error(run("eval", student, "--teacher", models / "teacher", "--out", tmp_path / "r"), fragment)
    assert not (tmp_path / "r").exists()
    if kind == "badconfig":  # inspect reads config.json only
        assert_clean_error(run("inspect", student), fragment)


def test_a_teacher_folder_without_tokenizer_says_so(models, tmp_path):
    result = run("convert", models / "teacher-notokenizer", tmp_path / "out", "--transpoints", "all=4")
    assert_clean_error(result, "has no tokenizer", "save_pretrained")
    assert "sentencepiece" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, fragment", [("gpu9", "'gpu9' is not a device"), ("cuda:7", "cuda:7")])
def test_devices_that_do_not_exist(models, tmp_path, device, fragment):
    if device.startswith("cuda") and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert_clean_error(run("convert", models / "teacher", tmp_path / "o", "--transpoints", "all=4", "--device", device),
                       fragment)
    assert_clean_error(run("generate", models / "student", "--prompt", "Hi", "--device", device), fragment)
    assert_clean_error(run("eval", models / "student", "--teacher", models / "teacher", "--out", tmp_path / "r",
                           "--device", device), fragment)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_generate_with_an_empty_prompt(models):
    result = run("generate", models / "student", "--prompt", "")
    assert result.exit_code == 2 and "the prompt is empty" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------ 4: never overwrite the teacher
def test_convert_refuses_to_write_over_or_into_its_teacher(models, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(models / "teacher", teacher)
    (tmp_path / "link").symlink_to(teacher)
    before = {p.name: p.read_bytes() for p in teacher.iterdir()}
    for out in (teacher, tmp_path / "link", teacher / "student", tmp_path / "link" / "student", tmp_path):
        result = run("convert", teacher, out, "--transpoints", "all=4", "--force")
        assert_clean_error(result, f"output {out}", "teacher")
    assert {p.name: p.read_bytes() for p in teacher.iterdir()} == before  # untouched, nothing added


# ------------------------------------------------------------------------------ 6: temp folders of a killed run
def test_convert_removes_what_a_killed_conversion_left(models, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = [tmp_path / f".tmp-student-{dead_pid}-abcd1234", tmp_path / ".tmp-student-zz9_qq8x",  # an older version's
             tmp_path / f".tmp-old-student-{dead_pid}-abcd1234"]
    alive = [tmp_path / f".tmp-student-{os.getpid()}-live0000",  # a conversion still running
             tmp_path / f".tmp-other-{dead_pid}-abcd1234"]  # another output's
    for folder in stale + alive:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"0" * 1000)
    result = run("convert", models / "teacher", tmp_path / "student", "--transpoints", "all=4")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and all(p.exists() for p in alive)
    assert json.loads((tmp_path / "student" / "config.json").read_text())["transpoints"] == [4, 4, 4]
