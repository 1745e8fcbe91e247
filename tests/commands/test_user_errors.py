"""Inputs that used to end in a traceback, a prompt or running a folder's code: each is one line naming the
input and the fix, exit != 0, and nothing runs from the data (custom model code, pickles, chat templates)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from tests.commands.distill_helpers import assert_clean_error, run, write_recipe
from tm_distill.convert.teacher import gguf_cache_path, shipped_teacher_path

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "cpu-demo.yaml"
_CODE = "import os, sys\nos.mkdir(os.environ['TM_MARKER'])\nfrom transformers import LlamaConfig\n" \
        "class EvilConfig(LlamaConfig):\n    model_type = 'evilllama'\n"


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _copy(root: Path, src: str, dest: str, edit=None) -> Path:
    shutil.copytree(root / src, root / dest)
    if edit is not None:
        config = json.loads((root / dest / "config.json").read_text())
        edit(config)
        (root / dest / "config.json").write_text(json.dumps(config))
    return root / dest


@pytest.fixture(scope="module")
def folders(root, smol):
    """Next to root/teacher: its student, broken students, teachers with custom code, .bin and GGUF variants."""
    assert run("convert", root / "teacher", root / "student", "--transpoints", "cycle=0,8", "--conv").exit_code == 0
    _copy(root, "student", "student-vocab", lambda c: c.update(vocab_size=c["vocab_size"] + 5))
    _copy(root, "student", "student-conv", lambda c: c.update(conv_kernel=-2))
    (_copy(root, "student", "student-noweights") / "model.safetensors").unlink()
    (_copy(root, "student", "student-meta") / "tm_distill.json").write_text('{"teacher": "cut sh')
    torch.manual_seed(1)
    other = LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(other).save_pretrained(root / "other-teacher")
    smol.tokenizer.save_pretrained(root / "other-teacher")
    assert run("convert", root / "other-teacher", root / "other-student", "--transpoints", "all=4").exit_code == 0
    auto_map = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    for name, model_type in (("custom", "evilllama"), ("custom-llama", "llama")):
        _copy(root, "teacher", name, lambda c, t=model_type: c.update(model_type=t, auto_map=auto_map))
        (root / name / "modeling_evil.py").write_text(_CODE)
    for name, src in (("custom-tok", "teacher"), ("student-custom-tok", "student")):
        tok_config = json.loads((root / src / "tokenizer_config.json").read_text())
        tok_config.update(auto_map={"AutoTokenizer": ["tok_evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
        (_copy(root, src, name) / "tokenizer_config.json").write_text(json.dumps(tok_config))
        (root / name / "tok_evil.py").write_text(_CODE)
    weights = load_file(root / "teacher" / "model.safetensors")
    for name, payload in (("bin-planted", {**weights, "x": _Planted(root / "bin-code-ran")}),
                          ("bin-garbage", None)):
        (_copy(root, "teacher", name) / "model.safetensors").unlink()
        if payload is None:
            (root / name / "pytorch_model.bin").write_bytes(b"\x00not a pytorch file" * 64)
        else:
            torch.save(payload, root / name / "pytorch_model.bin")
    (root / "cut.gguf").write_bytes(shipped_teacher_path().read_bytes()[:100])
    (_copy(root, "teacher", "hostile") / "chat_template.jinja").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m.content }}{% endfor %}")
    assert gguf_cache_path(shipped_teacher_path()).is_dir()
    return root


# ------------------------------------------------------------------ teachers that ship their own code
def test_a_teacher_with_custom_code_is_never_run_nor_prompted(folders, tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("TM_MARKER", str(marker))
    custom = folders / "custom"
    fragment = "needs its own Python code to load (auto_map -> modeling_evil.py, model_type 'evilllama')"
    result = run("convert", custom, tmp_path / "s", "--transpoints", "all=4")
    assert_clean_error(result, fragment, "never runs code from a model folder")
    assert "[y/N]" not in result.output
    assert_clean_error(run("validate", write_recipe(folders, tmp_path, teacher=str(custom))), "teacher: ", fragment)
    assert_clean_error(run("eval", folders / "student", "--teacher", custom, "--out", tmp_path / "r"), fragment)
    assert_clean_error(run("generate", custom, "--prompt", "Hi"), fragment)
    assert not marker.exists() and not (tmp_path / "s").exists() and not (tmp_path / "r").exists()
    # a model_type transformers ships loads with transformers' code; the folder's auto_map is ignored
    assert run("convert", folders / "custom-llama", tmp_path / "s2", "--transpoints", "all=4").exit_code == 0
    assert not marker.exists()


def test_a_tokenizer_with_custom_code_is_never_run_nor_prompted(folders, tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("TM_MARKER", str(marker))
    fragment = "needs its own Python code (auto_map in tokenizer_config.json): tm-distill never runs code"
    result = run("convert", folders / "custom-tok", tmp_path / "s", "--transpoints", "all=4")
    assert_clean_error(result, f"the tokenizer of teacher '{folders / 'custom-tok'}' {fragment}")
    student = folders / "student-custom-tok"
    for args in (("generate", student, "--prompt", "Hi"),
                 ("eval", student, "--teacher", folders / "teacher", "--out", tmp_path / "r")):
        result = run(*args)
        assert_clean_error(result, f"the tokenizer of student {student} {fragment}")
        assert "[y/N]" not in result.output and len(result.output.strip().splitlines()[-1]) > 80
        assert "trust_remote_code" not in result.output  # transformers' own multi-line advice is not passed on
    assert not marker.exists() and not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------- weights and files
def test_bin_weights_that_are_not_plain_tensors_are_refused_unrun(folders, tmp_path):
    for name in ("bin-planted", "bin-garbage"):
        result = run("convert", folders / name, tmp_path / name, "--transpoints", "all=4")
        assert_clean_error(result, f"the .bin weights in {folders / name} are not plain tensors", "model.safetensors")
    assert not (folders / "bin-code-ran").exists()


def test_bin_weights_that_transformers_blocks_on_an_old_torch(folders, tmp_path, monkeypatch):
    import transformers.modeling_utils

    def blocked():  # what transformers raises before reading any .bin on torch < 2.6 (CVE-2025-32434)
        raise ValueError("Due to a serious vulnerability issue in `torch.load`, even with `weights_only=True`, we now "
                         "require users to upgrade torch to at least v2.6 in order to use the function.\nSee ...")

    monkeypatch.setattr(transformers.modeling_utils, "check_torch_load_is_safe", blocked)
    result = run("convert", folders / "bin-planted", tmp_path / "s", "--transpoints", "all=4")
    assert_clean_error(result, f"the .bin weights in {folders / 'bin-planted'} cannot be read safely with torch",
                       "pip install -U 'torch>=2.6', or save them as model.safetensors")
    assert not (tmp_path / "s").exists() and not (folders / "bin-code-ran").exists()


def test_a_gguf_cut_inside_its_header(folders, tmp_path):
    fragment = "the file is cut short or corrupt"
    assert_clean_error(run("convert", folders / "cut.gguf", tmp_path / "s", "--transpoints", "all=4"), fragment)
    assert_clean_error(run("validate", write_recipe(folders, tmp_path, teacher=str(folders / "cut.gguf"))),
                       "teacher: cannot read GGUF teacher", fragment)


@pytest.mark.parametrize("name, fragment", [
    ("student-vocab", "config.json says vocab_size 49157 x hidden_size 64 but its weights hold a 49152 x 64"),
    ("student-conv", "config.json is not a readable model config: conv_kernel=-2 must be > 0"),
    ("student-noweights", "has no weights (no model.safetensors)"),
])
def test_broken_student_folders(folders, tmp_path, name, fragment):
    student = folders / name
    assert_clean_error(run("generate", student, "--prompt", "Hi"), fragment)
    assert_clean_error(run("eval", student, "--teacher", folders / "teacher", "--out", tmp_path / "r"), fragment)
    assert_clean_error(run("validate", write_recipe(folders, tmp_path, student=str(student))), "student: ", fragment)
    assert not (tmp_path / "r").exists()


def test_a_damaged_tm_distill_json(folders, tmp_path):
    student = folders / "student-meta"
    assert_clean_error(run("inspect", student), f"{student / 'tm_distill.json'} cannot be read (Unterminated string",
                       "the checkpoint is corrupt")
    card = (student / "README.md").read_bytes()
    result = run("eval", student, "--teacher", folders / "teacher", "--out", tmp_path / "r", "--seq-len", "32",
                 "--windows", "1", "--passkey-lengths", "none", "--speed-lengths", "none")
    assert result.exit_code == 0, result.output  # the report stands; only the card is left as it was
    assert (tmp_path / "r" / "report.json").is_file() and (student / "README.md").read_bytes() == card


# --------------------------------------------------------------------------------- student: in a recipe
@pytest.mark.parametrize("student, fragment", [
    ("{root}/missing", "student {root}/missing does not exist"),
    ("smollm2-135m", "'smollm2-135m' is a teacher, not a student folder"),
    ("{root}/teacher", "{root}/teacher holds a 'llama' model, not a TransMamba student"),
    ("{root}/other-student", "{root}/other-student is a student of another teacher ({root}/other-teacher): "
                             "hidden_size 32 (teacher 64), intermediate_size 64 (teacher 128), head_dim 8 (teacher 16)"),
])
def test_student_must_be_a_student_of_this_teacher(folders, tmp_path, student, fragment):
    recipe = write_recipe(folders, tmp_path, student=student.format(root=folders))
    for command in ("validate", "distill"):
        assert_clean_error(run(command, recipe), "student: " + fragment.format(root=folders))
    assert not (tmp_path / "out").exists()


def test_a_student_of_this_teacher_trains(folders, tmp_path):
    result = run("distill", write_recipe(folders, tmp_path, student=str(folders / "student"), calibrate=None))
    assert result.exit_code == 0, result.output


def test_eval_of_a_student_of_another_teacher(folders, tmp_path):
    result = run("eval", folders / "other-student", "--teacher", folders / "teacher", "--out", tmp_path / "r")
    assert_clean_error(result, "is a student of another teacher", "hidden_size 32 (teacher 64)")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------ chat templates
def test_a_hostile_chat_template_is_one_line(folders):
    result = run("generate", folders / "hostile", "--chat", "--prompt", "Hi", "--max-new-tokens", "2")
    assert_clean_error(result, f"the chat template of {folders / 'hostile'} cannot be used (SecurityError: access to "
                               "attribute '__class__' of 'str' object is unsafe.)")


# ---------------------------------------------------------------------------- recipe values on the CLI
@pytest.mark.parametrize("override, fragment", [
    ("data.source=*.txt", "data.source: '*.txt' is not a YAML value"),
    ("stages.0.lr=[1,", "stages.0.lr: '[1,' is not a YAML value"),
    ("name=@me", "name: '@me' is not a YAML value"),
    ("seed=-1", "seed: must be in [0, 2**32 - 1]"),
])
def test_recipe_overrides_that_used_to_crash(override, fragment):
    for command in ("validate", "distill"):
        assert_clean_error(run(command, DEMO, override), f"bad recipe {DEMO}: {fragment}")


# ---------------------------------------------------------------------------------- surprising before
def test_calibration_windows_beyond_the_teachers_context_are_refused(folders, tmp_path):
    result = run("convert", folders / "teacher", tmp_path / "s", "--transpoints", "all=4", "--calibrate",
                 folders / "text", "--calibrate-seq-len", "100000")
    assert_clean_error(result, "--calibrate-seq-len 100000 is beyond the teacher's context "
                               "(max_position_embeddings=256): use at most 256")
    assert not (tmp_path / "s").exists()


def test_a_run_inside_the_teachers_folder_is_refused(folders, tmp_path):
    before = sorted(p.name for p in (folders / "teacher").iterdir())
    recipe = write_recipe(folders, tmp_path, output_dir=str(folders / "teacher" / "run"))
    for command in ("validate", "distill"):
        assert_clean_error(run(command, recipe), f"output_dir: output {folders / 'teacher' / 'run'} is the teacher",
                           "inside its folder", "give the run its own folder")
    assert sorted(p.name for p in (folders / "teacher").iterdir()) == before


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_temperature_that_is_not_finite_is_refused(folders, value):
    result = run("generate", folders / "student", "--prompt", "Hi", "--temperature", value)
    assert_clean_error(result, f"Invalid value for '--temperature': {value} is not a finite number")
