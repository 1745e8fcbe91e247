"""lm-evaluation-harness on a local JSONL task (no hub). Skipped when lm_eval is not installed."""

import json

import pytest

from tests.local_task import QUESTIONS, write_local_task
from tm_distill.eval import lmeval


@pytest.fixture
def task_dir(tmp_path):
    return write_local_task(tmp_path)


def test_missing_lm_eval_is_a_clear_error(monkeypatch, smol):
    monkeypatch.setattr(lmeval, "lm_eval_available", lambda: False)
    with pytest.raises(lmeval.LMEvalUnavailable, match="pip install"):
        lmeval.run_lm_eval({"teacher": smol.model}, smol.tokenizer, ["arc_easy"])


def test_student_runs_a_local_task_and_the_score_reaches_the_report(smol, smol_students, heldout, task_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from tm_distill.eval.api import EvalOptions, evaluate
    from tm_distill.eval.report import write_report

    options = EvalOptions(seq_len=heldout.shape[1], windows=1, layer_error=False, retrieval_lengths=[],
                          tasks=["tiny_qa"], task_dir=str(task_dir), lm_eval_limit=2, speed=False)
    report = evaluate(smol.model, smol.tokenizer, {"attn": smol_students["attn"]}, heldout, options,
                      teacher_source="smollm2-135m", data_source="shakespeare", progress=False)
    scores = report["lm_eval"]["results"]
    assert set(scores) == {"teacher", "attn"}
    for name in scores:
        assert 0.0 <= scores[name]["tiny_qa"]["acc,none"] <= 1.0
        assert scores[name]["tiny_qa"]["sample_len"] == 2
    # an all-attention student is the teacher: same answers
    assert scores["attn"]["tiny_qa"]["acc,none"] == scores["teacher"]["tiny_qa"]["acc,none"]
    out = write_report(report, tmp_path / "report", plots=False)
    assert "tiny_qa" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["lm_eval"]["results"]["attn"]["tiny_qa"]["acc,none"] >= 0


def test_unknown_task_names_the_fix(smol, task_dir):
    pytest.importorskip("lm_eval")
    with pytest.raises(ValueError, match="no_such_task"):
        lmeval.run_lm_eval({"teacher": smol.model}, smol.tokenizer, ["no_such_task"], task_dir=task_dir)


def test_no_task_or_a_missing_task_folder_names_the_fix(tmp_path):
    pytest.importorskip("lm_eval")
    from tm_distill.errors import UserError

    with pytest.raises(lmeval.LMEvalInputError, match="no lm_eval tasks given: pass e.g. --tasks"):
        lmeval.run_lm_eval({}, None, [])
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"task folder {missing} does not exist: give a folder") as err:
        lmeval.run_lm_eval({}, None, ["tiny_qa"], task_dir=missing)
    assert isinstance(err.value, UserError)


LM_EVAL_CLI = r"""
sys.argv = ["lm_eval", *sys.argv[2:]]
from lm_eval.__main__ import cli_evaluate
cli_evaluate()
"""


def test_lm_eval_hf_model_runs_a_student_without_tm_distill(smol, task_dir, tmp_path):
    """`lm_eval --model hf --model_args pretrained=STUDENT,trust_remote_code=True`, in a process where tm_distill
    cannot be imported, gives the package model's log-likelihoods on every choice (SSM rows from token 4 on)."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tests.isolated import run_without_tm_distill
    from tm_distill.checkpoint import save_student
    from tm_distill.convert import parse_transpoints, seed_student

    spec = "cycle=0,4,8,attn"
    student = seed_student(smol.model, parse_transpoints(spec, smol.model.config.num_hidden_layers), spec).eval()
    folder = save_student(student, smol.tokenizer, tmp_path / "student")
    out = tmp_path / "lm_eval_out"
    run_without_tm_distill(LM_EVAL_CLI, tmp_path, "--model", "hf", "--model_args",
                           f"pretrained={folder},trust_remote_code=True", "--tasks", "tiny_qa", "--include_path",
                           str(task_dir), "--device", "cpu", "--output_path", str(out), "--log_samples")
    (samples_file,) = out.rglob("samples_tiny_qa_*.jsonl")
    got = {row["doc_id"]: [float(ll) for ll, _ in row["filtered_resps"]]
           for row in map(json.loads, samples_file.read_text().splitlines())}
    (results_file,) = out.rglob("results_*.json")
    acc = json.loads(results_file.read_text())["results"]["tiny_qa"]["acc,none"]

    lm = HFLM(pretrained=student, tokenizer=smol.tokenizer, backend="causal", batch_size=1, device="cpu")
    res = lm_eval.simple_evaluate(model=lm, tasks=["tiny_qa"], task_manager=TaskManager(include_path=str(task_dir)),
                                  log_samples=True, bootstrap_iters=0)
    want = {row["doc_id"]: [float(ll) for ll, _ in row["filtered_resps"]] for row in res["samples"]["tiny_qa"]}
    assert sorted(got) == sorted(want) == list(range(len(QUESTIONS)))
    for doc in want:
        assert got[doc] == pytest.approx(want[doc], abs=1e-4)
    assert acc == res["results"]["tiny_qa"]["acc,none"]
