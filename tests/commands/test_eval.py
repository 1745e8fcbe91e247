"""`tm-distill eval` in-process on the real teacher and Shakespeare, and its one-line user errors."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
from click.testing import CliRunner

from tm_distill.cli import cli
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.checkpoint import save_student

FAST = ["--seq-len", "64", "--windows", "1", "--no-speed", "--passkey-lengths", "none", "--no-layer-error"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, smol):
    path = tmp_path_factory.mktemp("students") / "cycle"
    spec = "cycle=16,32,attn"
    model = seed_student(smol.model, parse_transpoints(spec, smol.model.config.num_hidden_layers), spec,
                         teacher_name="smollm2-135m")
    return save_student(model, smol.tokenizer, path)


def test_end_to_end_report_on_real_teacher(student_dir, tmp_path):
    out = tmp_path / "report"
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--data", "shakespeare", "--out", out,
                 "--seq-len", "64", "--windows", "1", "--passkey-lengths", "128", "--depths", "0.5", "--trials", "1",
                 "--retrieval-tasks", "passkey", "--speed-lengths", "32", "--decode-tokens", "3")
    assert result.exit_code == 0, result.output
    assert "teacher: perplexity" in result.output and f"report: {out}/report.md" in result.output
    data = json.loads((out / "report.json").read_text())
    s = data["models"]["cycle"]
    assert data["models"]["teacher"]["kl_to_teacher"] == 0.0
    assert s["by_position"]["before"]["positions"] == [0, 16] and s["by_position"]["before"]["top1_agreement"] == 1.0
    assert s["transpoint_spec"] == "cycle=16,32,attn" and data["data"]["split"] == "held-out"
    assert data["retrieval"]["tasks"]["passkey"]["teacher"]["accuracy"] == 1.0
    assert set(data["speed"]["results"]) == {"teacher", "cycle"}
    assert set(data["plots"]) == {"by_position.png", "retrieval.png", "layer_error.png"}
    assert all((out / p).stat().st_size < 200_000 for p in data["plots"])
    assert "| `cycle` | before | [0, 16) |" in (out / "report.md").read_text()


def test_transpoints_override(student_dir, tmp_path):
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", tmp_path, "--transpoints", "all=48", *FAST)
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "report.json").read_text())["models"]["cycle"]
    assert set(s["transpoints"]) == {48} and s["by_position"]["before"]["positions"] == [0, 48]
    assert s["by_position"]["before"]["kl_to_teacher"] < 1e-6


@pytest.mark.parametrize("args, message", [
    (["--passkey-lengths", "9000"], "beyond the teacher's context (max_position_embeddings=8192)"),
    (["--seq-len", "10000"], "--seq-len: length 10000 is beyond the teacher's context"),
    (["--transpoints", "cycle=1,x"], "'x' in spec 'cycle=1,x' is not an integer"),
    (["--passkey-lengths", "1k"], "not a comma-separated list of integers"),
])
def test_bad_options_are_clear_errors(student_dir, tmp_path, args, message):
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", tmp_path / "r", *FAST, *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "r" / "report.json").exists()


def test_missing_student_folder(tmp_path):
    result = run("eval", tmp_path / "nope", "--teacher", "smollm2-135m", "--out", tmp_path / "r")
    assert result.exit_code != 0
    assert "does not exist: create one with `tm-distill convert" in result.output


def test_missing_teacher(student_dir, tmp_path):
    result = run("eval", student_dir, "--teacher", tmp_path / "no-teacher", "--out", tmp_path / "r", *FAST)
    assert result.exit_code != 0 and "does not exist" in result.output


def test_data_without_text(student_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "   "}\n')
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--data", empty, "--out", tmp_path / "r", *FAST)
    assert result.exit_code != 0 and "gave no text" in result.output
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"body": "To be, or not to be"}\n')
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--data", wrong, "--out", tmp_path / "r", *FAST)
    assert result.exit_code != 0 and "has no field 'text'" in result.output and "body" in result.output


def test_tasks_without_lm_eval_says_how_to_install(student_dir, tmp_path, monkeypatch):
    from tm_distill.eval import lmeval

    monkeypatch.setattr(lmeval, "lm_eval_available", lambda: False)
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", tmp_path / "r", "--tasks", "arc_easy")
    assert result.exit_code != 0 and "pip install 'tm-distill[eval]'" in result.output


def test_without_matplotlib_eval_asks_for_the_extra_or_no_plots(student_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = tmp_path / "report"
    refused = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", out, *FAST)
    assert refused.exit_code == 1 and not out.exists()  # refused before any work
    assert refused.output.strip() == ("Error: the report's plots (--no-plots skips them) needs matplotlib, which is "
                                      "not installed: pip install 'tm-distill[plots]'")
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", out, *FAST, "--no-plots")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["plots"] == [] and not list(out.glob("*.png"))


def test_tasks_score_a_local_lm_eval_task_into_the_report_and_the_card(student_dir, tmp_path):
    """`tm-distill eval --tasks NAME --task-dir DIR`: lm-evaluation-harness scores the student and its teacher side
    by side, in report.json and report.md, and the student's card gets its score."""
    pytest.importorskip("lm_eval")
    from tests.local_task import TASK, write_local_task

    out = tmp_path / "r"
    result = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", out, "--tasks", TASK, "--task-dir",
                 write_local_task(tmp_path / "tasks"), "--limit", "2", *FAST)
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "report.json").read_text())["lm_eval"]["results"]
    assert set(scores) == {"teacher", "cycle"}
    assert all(scores[m][TASK]["sample_len"] == 2 and 0 <= scores[m][TASK]["acc,none"] <= 1 for m in scores)
    assert TASK in (out / "report.md").read_text()
    acc, teacher_acc = scores["cycle"][TASK]["acc,none"], scores["teacher"][TASK]["acc,none"]
    card = (student_dir / "README.md").read_text()
    assert f"lm-evaluation-harness `{TASK}` (limit 2): acc {acc:.3f} (teacher {teacher_acc:.3f})." in card


@pytest.mark.slow
def test_defaults_on_a_small_text_file_write_a_full_report(tmp_path, smol, shakespeare_files):
    """Every default on a CPU (retrieval at 512 tokens, one trial; speed at 256) on 1,500 characters of text, too
    few for a 512-token prompt: the passkey filler comes from the shipped corpus. A tiny random teacher with
    SmolLM2's tokenizer keeps it fast."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tm_distill.conversion import convert

    cfg = LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "teacher")
    smol.tokenizer.save_pretrained(tmp_path / "teacher")
    student = convert(str(tmp_path / "teacher"), tmp_path / "student", "cycle=64,attn", progress=False)
    text = tmp_path / "my.txt"
    text.write_text(shakespeare_files[2].read_text()[10000:11500])
    out = tmp_path / "report"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run("eval", student, "--teacher", tmp_path / "teacher", "--data", text, "--out", out)
    assert result.exit_code == 0, result.output
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if issubclass(w.category, (FutureWarning, UserWarning))]
    assert not shown, shown  # warnings Python prints by default: none on a user's screen
    report = json.loads((out / "report.json").read_text())
    assert result.output.startswith("eval on cpu: teacher + 1 student(s); held-out 8 x 256 tokens; retrieval 6 "
                                    "prompts per model at 512 tokens; speed at 256 tokens (+16 decoded)")
    assert report["retrieval"]["lengths"] == [512] and report["retrieval"]["trials"] == 1
    assert report["speed"]["lengths"] == [256] and report["retrieval"]["filler"] == "shakespeare"
    assert not report["retrieval"]["skipped"] and set(report["retrieval"]["tasks"]) == {"passkey", "phonebook"}
    assert report["speed"] and report["models"]["student"]["layer_error"]
    assert set(report["plots"]) == {"by_position.png", "retrieval.png", "layer_error.png"}
    assert "passkey filler from the shakespeare corpus" in (out / "report.md").read_text()


def test_help_has_examples():
    result = run("eval", "--help")
    assert result.exit_code == 0
    assert "tm-distill eval runs/cpu-demo/final --teacher smollm2-135m" in result.output and "--transpoints" in result.output
    assert "[default: 1024,2048 on a GPU, 512 on a CPU]" in " ".join(result.output.split())


def test_a_report_is_replaced_only_when_asked(student_dir, tmp_path):
    out = tmp_path / "report"
    assert run("eval", student_dir, "--teacher", "smollm2-135m", "--out", out, *FAST).exit_code == 0
    before = (out / "report.json").read_text()
    again = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", out, *FAST)
    assert again.exit_code == 1 and f"Error: {out} already holds a report: give another --out, or pass --force" in \
        again.output
    assert (out / "report.json").read_text() == before
    forced = run("eval", student_dir, "--teacher", "smollm2-135m", "--out", out, *FAST, "--windows", "2", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(before)["data"]["windows"] == 1 and json.loads((out / "report.json").read_text())["data"][
        "windows"] == 2
