"""`tm-distill convert` in-process: the real GGUF teacher, SSM option flags, and one-line user errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import tiny_llama
from tm_distill.cli import cli
from tm_distill.convert import parse_transpoints
from tm_distill.models import ATTENTION_ONLY


def run(*args):
    return CliRunner().invoke(cli, list(args))


def error_line(result) -> str:
    """The last line the command wrote (progress bars redraw with carriage returns before it)."""
    return re.split(r"[\r\n]+", result.output.strip())[-1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol):
    path = tmp_path_factory.mktemp("tiny")
    tiny_llama(num_kv_heads=2).save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return path


def test_convert_real_gguf(tmp_path, smol):
    out = tmp_path / "student"
    result = run("convert", "smollm2-135m", str(out), "--transpoints", "attn=0,8,16,24;ssm=rest")
    assert result.exit_code == 0, result.output
    assert f"student written to {out}" in result.output and "smollm2-135m (llama)" in result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "transmamba" and cfg["teacher"] == "smollm2-135m"
    assert cfg["transpoint_spec"] == "attn=0,8,16,24;ssm=rest"
    assert [i for i, p in enumerate(cfg["transpoints"]) if p == ATTENTION_ONLY] == [0, 8, 16, 24]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_option_flags_reach_the_config(tiny_dir, tmp_path):
    out = tmp_path / "s"
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "cycle=0,4", "--z-gate", "--conv",
                 "--feature-map", "silu", "--c-scale", "--ssm-rope", "--dtype", "bfloat16", "--seed", "7")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["use_z_gate"], cfg["use_conv"], cfg["bc_feature_map"], cfg["ssm_c_scale"], cfg["ssm_rope"]) == (
        True, True, "silu", True, True)
    assert cfg["dtype"] == "bfloat16" and cfg["transpoints"] == [0, 4, 0]
    assert json.loads((out / "tm_distill.json").read_text())["seed"] == 7


@pytest.mark.parametrize("teacher,spec,fragment", [
    ("missing", "all=4", "does not exist"),
    ("garbage.gguf", "all=4", "not a GGUF file"),
    ("gpt2", "all=4", "'gpt2' is not supported"),
    ("tiny", "every=4", "unknown key 'every'"),
    ("tiny", "all=-4", "negative"),
    ("tiny", "4,8", "lists 2 TransPoints but the model has 3 layers"),
    ("tiny", "attn=7;ssm=rest", "layer index 7"),
])
def test_user_errors_are_one_line(tiny_dir, tmp_path, teacher, spec, fragment):
    if teacher == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(
            tmp_path / "gpt2")
    (tmp_path / "garbage.gguf").write_bytes(b"unreadable")
    source = {"missing": str(tmp_path / "nope"), "gpt2": str(tmp_path / "gpt2"), "tiny": str(tiny_dir),
              "garbage.gguf": str(tmp_path / "garbage.gguf")}[teacher]
    out = tmp_path / "out"
    result = run("convert", source, str(out), "--transpoints", spec)
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: ") and fragment in error_line(result)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_existing_output_needs_force(tiny_dir, tmp_path):
    out = tmp_path / "s"
    assert run("convert", str(tiny_dir), str(out), "--transpoints", "all=4").exit_code == 0
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "attn")
    assert result.exit_code == 1 and error_line(result) == f"Error: output {out} already exists: pass --force to replace it"
    assert json.loads((out / "config.json").read_text())["transpoint_spec"] == "all=4"
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "attn", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["transpoint_spec"] == "attn"


def test_missing_spec_and_help():
    result = run("convert", "smollm2-135m", "out")
    assert result.exit_code == 2 and "--transpoints" in result.output
    help_text = run("convert", "--help").output
    assert "Examples:" in help_text and "tm-distill convert smollm2-135m" in help_text


def test_students_are_saved_in_the_teachers_dtype_unless_asked(tiny_dir, tmp_path):
    from tm_distill.convert.dtype import teacher_dtype

    bf16 = tmp_path / "bf16-teacher"
    tiny_llama(num_kv_heads=2).to(torch.bfloat16).save_pretrained(bf16)
    for f in tiny_dir.iterdir():
        if "token" in f.name or f.suffix == ".jinja":
            (bf16 / f.name).write_bytes(f.read_bytes())
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    for teacher, args, want in [(bf16, [], "bfloat16"), (tiny_dir, [], "float32"), (bf16, ["--dtype", "float32"],
                                                                                  "float32")]:
        out = tmp_path / f"s-{want}-{len(args)}"
        result = run("convert", str(teacher), str(out), "--transpoints", "all=4", *args)
        assert result.exit_code == 0, result.output
        assert f"dtype:       {want}" + ("" if args else " (the teacher's)") in result.output
        assert json.loads((out / "config.json").read_text())["dtype"] == want
        assert json.loads((out / "tm_distill.json").read_text())["dtype"] == want
    # the shipped GGUF is quantized (Q4_1): bfloat16 holds its weights at half fp32's bytes
    assert teacher_dtype("smollm2-135m") == torch.bfloat16


def test_auto_spec_plans_and_converts_in_one_step(smol, tmp_path, real_text):
    tiny_dir = tmp_path / "teacher"  # the real tokenizer's vocabulary: it reads real text
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512)).save_pretrained(tiny_dir)
    smol.tokenizer.save_pretrained(tiny_dir)
    text = tmp_path / "calib.txt"
    text.write_text(real_text)
    out = tmp_path / "auto"
    result = run("convert", str(tiny_dir), str(out), "--transpoints", "auto:kv_budget=50%", f"--calibrate={text}",
                 "--calibrate-seq-len", "64", "--calibrate-windows", "1")
    assert result.exit_code == 0, result.output
    assert "auto TransPoints: kv_budget=50.0%" in result.output and "chosen P" in result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["transpoint_spec"] == "auto:kv_budget=50%" and len(cfg["transpoints"]) == 3
    planned = run("plan", str(tiny_dir), "--budget", "kv=50%", "--calib", str(text))
    assert planned.exit_code == 0, planned.output
    assert cfg["transpoints"] == parse_transpoints(planned.stdout.strip().splitlines()[-1], 3)  # what `plan` prints
    bad = run("convert", str(tiny_dir), str(tmp_path / "bad"), "--transpoints", "auto:kv_budget=0%")
    assert bad.exit_code == 1 and "outside (0, 100%]" in error_line(bad) and not (tmp_path / "bad").exists()
