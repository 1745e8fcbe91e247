"""convert / save_student / load_student: round trips, recorded provenance, dtypes, and atomic failure."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from tm_distill.convert import TeacherNotFound, UnsupportedTeacher, TransPointSpecError, load_teacher, seed_student
from tm_distill.checkpoint import (META_FILE, NotAStudent, OutputExists, StudentNotFound, load_student, read_metadata,
                                   save_student)
from tm_distill.conversion import convert
from tm_distill.generation import PromptTooLong, generate_text
from tm_distill.models import ATTENTION_ONLY, TransMambaForCausalLM


def _ids(length=24, vocab=97, seed=0):
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


def _no_leftovers(parent):
    return not [p.name for p in parent.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------ 5. save -> AutoModel -> same logits
def test_convert_tiny_round_trip(tiny_teacher_dir, tmp_path):
    out = convert(str(tiny_teacher_dir), tmp_path / "student", "cycle=0,5,attn", seed=3, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, TransMambaForCausalLM)
    cfg = model.config
    assert cfg.transpoints == [0, 5, ATTENTION_ONLY] and cfg.transpoint_spec == "cycle=0,5,attn"
    assert cfg.teacher == str(tiny_teacher_dir) and cfg.teacher_model_type == "llama"
    meta = read_metadata(out)
    assert meta["stage"] == "seeded" and meta["transpoints"] == cfg.transpoints and meta["seed"] == 3
    assert meta["teacher"]["source"] == str(tiny_teacher_dir) and meta["version"] and meta["created"]
    assert (out / "generation_config.json").exists() and _no_leftovers(tmp_path)
    teacher = load_teacher(str(tiny_teacher_dir))
    want = seed_student(teacher.model, cfg.transpoints, seed=3)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, want(ids).logits)
    _, tok = load_student(out)
    assert tok.chat_template == teacher.tokenizer.chat_template


@pytest.mark.parametrize("options", [{}, {"use_z_gate": True, "use_conv": True, "bc_feature_map": "elu1"}])
def test_save_student_round_trip_with_options(tiny_teacher_dir, tmp_path, options):
    teacher = load_teacher(str(tiny_teacher_dir))
    student = seed_student(teacher.model, [0, 3, 9], "0,3,9", "tiny", seed=5, **options)
    with torch.no_grad():  # make the SSM additions non-trivial so a lost tensor would show
        for layer in student.model.layers:
            layer.mixer.D.normal_()
    out = save_student(student, teacher.tokenizer, tmp_path / "ckpt", {"stage": "test"})
    loaded, _ = load_student(out)
    ids = _ids(seed=1)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, student(ids).logits)
    assert json.loads((out / META_FILE).read_text()) == {"stage": "test"}
    for key, value in options.items():
        assert getattr(loaded.config, key) == value


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_is_honored(tiny_teacher_dir, tmp_path, dtype):
    out = convert(str(tiny_teacher_dir), tmp_path / dtype, "all=6", dtype=dtype, progress=False)
    model, _ = load_student(out)
    assert model.dtype == getattr(torch, dtype)
    assert all(p.dtype == getattr(torch, dtype) for p in model.parameters())
    assert load_student(out, dtype="float32")[0].dtype == torch.float32
    teacher = load_teacher(str(tiny_teacher_dir)).model
    w = teacher.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(model.model.layers[0].mixer.q_proj.weight, w.to(model.dtype))
    assert read_metadata(out)["dtype"] == dtype


def test_convert_real_teacher(smol, real_text, tmp_path):
    out = convert("smollm2-135m", tmp_path / "smol", "cycle=8,16,32,64", dtype="bfloat16", progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.teacher == "smollm2-135m"
    assert model.config.transpoints[:5] == [8, 16, 32, 64, 8] and model.config.num_hidden_layers == 30
    want = seed_student(smol.model, model.config.transpoints, seed=0, dtype=torch.bfloat16)
    ids = smol.tokenizer(real_text, return_tensors="pt").input_ids[:, :64]
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, want(ids).logits)
    _, tok = load_student(out)
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert model.generation_config.eos_token_id == smol.model.generation_config.eos_token_id


# ------------------------------------------------------------------ 7. bad inputs, nothing half-written
def test_existing_output_is_refused_before_any_work(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(OutputExists, match="pass force=True"):  # checked before the (missing) teacher is looked at
        convert("no/such-teacher", out, "all=4", progress=False)
    assert (out / "config.json").read_text() == "{}"


def test_force_replaces_only_checkpoints(tiny_teacher_dir, tmp_path):
    out = tmp_path / "s"
    convert(str(tiny_teacher_dir), out, "all=4", progress=False)
    convert(str(tiny_teacher_dir), out, "attn", force=True, progress=False)
    assert read_metadata(out)["transpoint_spec"] == "attn" and _no_leftovers(tmp_path)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExists, match="not a checkpoint"):
        convert(str(tiny_teacher_dir), precious, "attn", force=True, progress=False)
    assert (precious / "notes.txt").exists()


def test_failure_mid_write_leaves_nothing(tiny_teacher_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        convert(str(tiny_teacher_dir), tmp_path / "s", "all=4", progress=False)
    assert not (tmp_path / "s").exists() and _no_leftovers(tmp_path)
    # with --force, a failed write keeps the old checkpoint intact
    monkeypatch.undo()
    convert(str(tiny_teacher_dir), tmp_path / "s", "all=4", progress=False)
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    with pytest.raises(OSError):
        convert(str(tiny_teacher_dir), tmp_path / "s", "attn", force=True, progress=False)
    assert read_metadata(tmp_path / "s")["transpoint_spec"] == "all=4" and _no_leftovers(tmp_path)


def test_a_full_or_read_only_disk_is_a_user_error_naming_the_output(tiny_teacher_dir, tmp_path, monkeypatch):
    import errno

    from tm_distill.atomic import OutputNotWritable

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    out = tmp_path / "s"
    with pytest.raises(OutputNotWritable, match=f"output {out} is not writable \\(No space left on device\\): give a "
                                                 "folder you can write to, on a disk with free space"):
        convert(str(tiny_teacher_dir), out, "all=4", progress=False)
    assert not out.exists() and _no_leftovers(tmp_path)


@pytest.mark.parametrize("teacher,spec,error,fragment", [
    ("missing", "all=4", TeacherNotFound, "does not exist"),
    ("tiny", "every=4", TransPointSpecError, "unknown key 'every'"),
    ("tiny", "all=-1", TransPointSpecError, "negative"),
    ("tiny", "1,2", TransPointSpecError, "the model has 3 layers"),
    ("gpt2", "all=4", UnsupportedTeacher, "'gpt2' is not supported"),
])
def test_bad_inputs_write_nothing(tiny_teacher_dir, gpt2_dir, tmp_path, teacher, spec, error, fragment):
    source = {"missing": str(tmp_path / "nope"), "tiny": str(tiny_teacher_dir), "gpt2": str(gpt2_dir)}[teacher]
    with pytest.raises(error) as err:
        convert(source, tmp_path / "out", spec, progress=False)
    assert fragment in str(err.value)
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_bad_options(tiny_teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown SSM option"):
        convert(str(tiny_teacher_dir), tmp_path / "o", "all=4", progress=False, use_magic=True)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        convert(str(tiny_teacher_dir), tmp_path / "o", "all=4", dtype="int8", progress=False)
    assert not (tmp_path / "o").exists()


def test_load_student_errors(tiny_teacher_dir, tmp_path):
    with pytest.raises(StudentNotFound, match="tm-distill convert"):
        load_student(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudentNotFound, match="no config.json"):
        load_student(tmp_path / "empty")
    with pytest.raises(NotAStudent, match="'llama' model, not a TransMamba student"):
        load_student(tiny_teacher_dir)


def test_generate_text_limits(tiny_teacher_dir, tmp_path):
    model, tok = load_student(convert(str(tiny_teacher_dir), tmp_path / "s", "all=4", progress=False))
    with pytest.raises(PromptTooLong, match="at most 512"):
        generate_text(model, tok, "word " * 600, max_new_tokens=2)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        generate_text(model, tok, "hi", chat=True)
