"""`tm-distill generate` and `tm-distill inspect` in-process on students converted from the real teacher."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner

from tm_distill.cli import cli
from tm_distill.checkpoint import student_config_from
from tm_distill.conversion import convert
from tm_distill.models import ATTENTION_ONLY
from tm_distill.models.memory import format_bytes, layer_memory, memory_totals

CHAT_PROMPT = "What is the capital of France?"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    return re.split(r"[\r\n]+", result.output.strip())[-1]


@pytest.fixture(scope="module")
def students(tmp_path_factory, smol):
    root = tmp_path_factory.mktemp("students")
    result = run("convert", "smollm2-135m", root / "attn", "--transpoints", "attn")  # the CLI, as a user would
    assert result.exit_code == 0, result.output
    return {
        "attn": root / "attn",
        "mixed": convert("smollm2-135m", root / "mixed", "cycle=0,4,8,16", progress=False),
    }


def test_all_attention_student_answers_like_the_teacher(students, smol):
    result = run("generate", students["attn"], "--chat", "--prompt", CHAT_PROMPT, "--max-new-tokens", 24)
    assert result.exit_code == 0, result.output
    tok = smol.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": CHAT_PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = smol.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    want = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in want  # the teacher knows; the student must say exactly the same
    assert result.stdout.rstrip("\n") == want


def test_mixed_schedule_student_prints_text(students):
    result = run("generate", students["mixed"], "--prompt", "To be, or not to be", "--max-new-tokens", 6)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    sampled = [run("generate", students["mixed"], "--chat", "--prompt", "Hi", "--max-new-tokens", 3,
                   "--temperature", 0.9, "--seed", 3).stdout for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0].strip()  # seeded sampling is reproducible


def test_several_prompts_decode_in_one_padded_batch_as_each_alone(students):
    """Left padding: each row's TransPoints (0, 4, 8, 16) count from its own first token."""
    prompts = ["To be, or not to be, that is the question", "Once upon"]
    alone = [run("generate", students["mixed"], "--prompt", p, "--max-new-tokens", 12) for p in prompts]
    batched = run("generate", students["mixed"], "--prompt", prompts[0], "--prompt", prompts[1],
                  "--max-new-tokens", 12)
    assert batched.exit_code == 0, batched.output
    assert batched.stdout == "".join(f"--- {i}\n{r.stdout}" for i, r in enumerate(alone))


def test_generate_with_the_teacher_alias():
    result = run("generate", "smollm2-135m", "--chat", "--prompt", CHAT_PROMPT, "--max-new-tokens", 3)
    assert result.exit_code == 0 and result.stdout.strip(), result.output


def test_generate_errors(students, tmp_path):
    long = run("generate", students["attn"], "--prompt", "word " * 8300, "--max-new-tokens", 1)
    assert long.exit_code == 1 and "at most 8192" in error_line(long) and "Traceback" not in long.output
    missing = run("generate", tmp_path / "nope", "--prompt", "hi")
    assert missing.exit_code == 1 and error_line(missing).startswith("Error: ")
    assert run("generate", students["attn"], "--prompt", "hi", "--max-new-tokens", 0).exit_code == 2


def test_inspect_table(students):
    result = run("inspect", students["mixed"], "--context", 6, "--context", 4096)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "cycle=0,4,8,16 -> 0,4,8,16,0,4" in out and "teacher:     smollm2-135m (llama)" in out
    cfg = student_config_from(students["mixed"])
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s*\d+\s+\d+\s+(ssm|hybrid|attn)\s", line)]
    assert len(rows) == 30
    at6 = layer_memory(cfg, 6)
    for row, mem in zip(rows, at6):
        assert int(row[1]) == mem.transpoint
        assert " ".join(row[4:6]) == format_bytes(mem.student_bytes)  # student@6 column
    t = memory_totals(layer_memory(cfg, 4096))
    assert f"at 4096 tokens: student {format_bytes(t['student'])}" in out
    assert f"vs teacher KV {format_bytes(t['teacher'])}" in out and t["kv"] == 0
    assert "added parameters: 156,330" in out  # 30 layers x (576x9 dt_proj + 3x9 dt_bias/A_log/D)


def test_inspect_all_attention_costs_what_the_teacher_costs(students):
    out = run("inspect", students["attn"], "--context", 100).output
    cfg = student_config_from(students["attn"])
    assert all(p == ATTENTION_ONLY for p in cfg.transpoints)
    t = memory_totals(layer_memory(cfg, 100))
    assert t["student"] == t["teacher"] and ": 1.00x" in out


def test_inspect_errors(tmp_path, smol):
    smol.model.config.save_pretrained(tmp_path / "teacher")
    result = run("inspect", tmp_path / "teacher")
    assert result.exit_code == 1 and "not a TransMamba student" in error_line(result)
    assert run("inspect", tmp_path / "missing").exit_code == 1
    assert "Examples:" in run("inspect", "--help").output and "Examples:" in run("generate", "--help").output


def test_inspect_of_a_teacher_suggests_the_convert_command(tmp_path):
    result = run("inspect", "smollm2-135m")
    assert result.exit_code == 1
    assert error_line(result) == ("Error: smollm2-135m is a teacher, not a student folder: convert it first, e.g. "
                                  "`tm-distill convert smollm2-135m runs/student --transpoints cycle=0,64,128,256`, "
                                  "then give runs/student")
    missing = run("inspect", tmp_path / "nope")
    assert f"`tm-distill convert TEACHER {tmp_path / 'nope'} --transpoints" in error_line(missing)


def test_several_models_answer_the_same_prompts_side_by_side(students):
    result = run("generate", "smollm2-135m", students["attn"], "--chat", "--prompt", CHAT_PROMPT, "--prompt", "Hi!",
                 "--max-new-tokens", 8)
    assert result.exit_code == 0, result.output
    blocks = result.stdout.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"=== {CHAT_PROMPT}", "=== Hi!"]
    for block in blocks:
        teacher, student = block.splitlines()[1:]
        name = str(students["attn"])
        assert teacher.startswith("smollm2-135m".ljust(len(name)) + " | ") and student.startswith(f"{name} | ")
        assert teacher.split(" | ", 1)[1] == student.split(" | ", 1)[1]  # all attention: the teacher's answer
    assert "Paris" in blocks[0]


def test_a_model_that_stops_at_once_says_so(students, monkeypatch):
    import tm_distill.generation as generation

    eos = torch.tensor([2, 2, 2])  # <|im_end|>, then padding

    monkeypatch.setattr(generation, "generate_texts", lambda lm, tok, prompts, *a, **k: [("", eos)] * len(prompts))
    alone = run("generate", students["attn"], "--chat", "--prompt", CHAT_PROMPT)
    assert alone.exit_code == 0 and alone.stdout == "\n"
    assert "[the model stopped at once: its first token was <|im_end|>, the end of its turn]" in alone.stderr
    both = run("generate", students["attn"], students["mixed"], "--chat", "--prompt", CHAT_PROMPT)
    assert both.exit_code == 0, both.output
    assert both.stdout.count("(stopped at once: its first token was <|im_end|>, the end of its turn)") == 2
