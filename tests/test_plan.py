"""`auto` TransPoints: spec parsing, layer sensitivity, the greedy schedule and the `tm-distill plan` command."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from tm_distill.cli import cli
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models.configuration import ATTENTION_ONLY
from tm_distill.plan import (
    CANDIDATE_FRACTIONS, AutoSpec, AutoSpecError, calibration_windows, choose_transpoints, measure_sensitivity,
    parse_auto_spec, resolve_auto, resolve_transpoints,
)


# ---------------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("spec, expect", [
    ("auto:kv_budget=25%", AutoSpec(0.25, None)),
    ("auto:kv_budget=0.5,context=8192", AutoSpec(0.5, 8192)),
    ("auto: context=64 , kv_budget=100%", AutoSpec(1.0, 64)),
])
def test_parse_auto_spec(spec, expect):
    assert parse_auto_spec(spec) == expect


@pytest.mark.parametrize("spec, message", [
    ("auto", "needs a budget"),
    ("auto:speed=2x", "unknown key 'speed'.*kv_budget, context"),
    ("auto:kv_budget=0%", r"outside \(0, 100%\]"),
    ("auto:kv_budget=150%", r"outside \(0, 100%\]"),
    ("auto:kv_budget=25", r"outside \(0, 100%\]"),
    ("auto:kv_budget=-5%", r"outside \(0, 100%\]"),
    ("auto:kv_budget=lots", "not a number"),
    ("auto:context=128", "has no kv_budget"),
    ("auto:kv_budget=25%,context=0", "must be >= 1"),
    ("auto:kv_budget=25%,kv_budget=30%", "given twice"),
    ("auto:kv_budget", "not key=value"),
])
def test_bad_auto_specs_name_the_problem(spec, message):
    with pytest.raises(AutoSpecError, match=message):
        parse_auto_spec(spec)


# ---------------------------------------------------------------------------------------------------- greedy
def _kv_share(points, context):
    return sum(min(p, context) for p in points) / (len(points) * context)


def test_greedy_switches_the_least_sensitive_layers_first():
    # 4 layers; layers 1 and 3 barely care, layer 0 is very sensitive
    sens = torch.tensor([[9.0, 8.0, 7.0, 6.0], [0.2, 0.1, 0.05, 0.01], [3.0, 2.0, 1.0, 0.5], [0.3, 0.2, 0.1, 0.0]])
    tps = choose_transpoints(sens, CANDIDATE_FRACTIONS, context=256, kv_budget=0.5)
    assert _kv_share(tps, 256) <= 0.5
    assert tps[0] == ATTENTION_ONLY and tps[1] == 0 and tps[3] == 0
    assert choose_transpoints(sens, CANDIDATE_FRACTIONS, 256, 1.0) == [ATTENTION_ONLY] * 4


@pytest.mark.parametrize("budget", [0.03, 0.1, 0.2, 0.3, 0.45, 0.7, 0.9])
def test_greedy_meets_budget_and_never_switches_all_layers_at_one_point(budget):
    gen = torch.Generator().manual_seed(int(budget * 100))
    sens = torch.rand(8, 4, generator=gen).sort(dim=1, descending=True).values
    tps = choose_transpoints(sens, CANDIDATE_FRACTIONS, context=512, kv_budget=budget)
    assert _kv_share(tps, 512) <= budget + 1e-9
    assert len(set(tps)) > 1


def test_unreachable_budget_says_the_smallest_one():
    sens = torch.ones(4, 4)
    with pytest.raises(AutoSpecError, match=r"smallest reachable budget is 3\.12%"):
        choose_transpoints(sens, CANDIDATE_FRACTIONS, context=256, kv_budget=0.01)


# ---------------------------------------------------------------------------------------------------- resolver
def _no_text():
    pytest.fail("text was loaded for a spec that needs none")


@pytest.mark.parametrize("spec", ["all=16", "cycle=0,8", "attn=1;ssm=rest", "0,attn,4,8", " attn ", "ssm"])
def test_a_fixed_spec_resolves_as_parse_transpoints_does_and_loads_no_text(spec):
    assert resolve_transpoints(spec, 4, texts=_no_text) == (parse_transpoints(spec, 4), "")
    assert resolve_transpoints(spec, None, texts=_no_text) == (None, "")  # the teacher's depth not known yet


def test_an_auto_spec_is_checked_without_a_teacher_and_planned_with_one(monkeypatch):
    import tm_distill.plan as plan_module

    assert resolve_transpoints("auto:kv_budget=25%", 4, texts=_no_text) == (None, "")
    with pytest.raises(AutoSpecError, match="unknown key 'speed'"):
        resolve_transpoints("auto:speed=2x", None)
    with pytest.raises(AutoSpecError, match=r"smallest reachable budget is 3\.12%"):  # before any text is read
        resolve_transpoints("auto:kv_budget=1%", 4, teacher=object(), texts=_no_text, seq_len=256)
    seen = {}

    def fake(spec, model, tokenizer, texts, seq_len, **kw):
        seen.update(spec=spec, model=model, tokenizer=tokenizer, texts=texts, seq_len=seq_len, **kw)
        return [0, ATTENTION_ONLY], "planned"

    monkeypatch.setattr(plan_module, "resolve_auto", fake)
    teacher = type("Teacher", (), {"model": "M", "tokenizer": "T"})()
    got = resolve_transpoints(" auto:kv_budget=50%", 2, teacher=teacher, texts=lambda: ["a document"], seq_len=64,
                              windows=3, seed=7)
    assert got == ([0, ATTENTION_ONLY], "planned")
    assert seen == dict(spec=" auto:kv_budget=50%", model="M", tokenizer="T", texts=["a document"], seq_len=64,
                        windows=3, seed=7, device=None, importance=None)
    resumed = resolve_transpoints("auto:kv_budget=50%", 2, teacher=teacher, texts=_no_text, recorded=[8, 0])
    assert resumed == ([8, 0], "resumed: the schedule the run chose")  # a resumed run keeps what it chose
    assert resolve_transpoints("all=8", 2, recorded=[0, 0]) == ([8, 8], "")  # a fixed spec is its own record


# ---------------------------------------------------------------------------------------------------- measurement
def _tiny_teacher(vocab_size=97, layers=3, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("stride", [1, 3])
def test_sensitivity_equals_full_forward_kl(stride):
    """The from-layer-l shortcut gives the KL of a full student forward with only layer l switched."""
    teacher = _tiny_teacher()
    ids = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(0))
    sens = measure_sensitivity(teacher, ids, seed=1, max_batch_tokens=64, kl_stride=stride, progress=False)
    assert sens.shape == (3, 4) and torch.all(sens >= 0) and torch.all(sens[:, 0] > 0)
    student = seed_student(teacher, [ATTENTION_ONLY] * 3, seed=1)
    grid = torch.arange(0, 32, stride)
    with torch.no_grad():
        t_logp = F.log_softmax(teacher(ids).logits[:, grid], -1)
        for layer, c in ((0, 0), (1, 2), (2, 3)):
            tps = [ATTENTION_ONLY] * 3
            tps[layer] = int(CANDIDATE_FRACTIONS[c] * 32)
            student.config.transpoints = tps
            s_logp = F.log_softmax(student(ids).logits[:, grid], -1)
            kl = F.kl_div(s_logp, t_logp, reduction="sum", log_target=True) / (3 * len(grid))
            assert float(sens[layer, c]) == pytest.approx(float(kl), rel=1e-3, abs=1e-7)


def test_calibration_windows_spread_over_documents(smol):
    docs = ["alpha beta gamma delta " * 300, "one two three four five " * 300, "red green blue " * 300]
    ids = calibration_windows(docs, smol.tokenizer, 32, 3)
    assert ids.shape == (3, 32)
    assert len({tuple(row.tolist()[:4]) for row in ids}) == 3  # one window from each document
    with pytest.raises(ValueError, match="no window of 4096 tokens"):
        calibration_windows(["short text"], smol.tokenizer, 4096, 2)


def _tiny_folder(tmp_path, smol):
    """A tiny random Llama with the real tokenizer's vocabulary, saved as an HF folder."""
    model = _tiny_teacher(vocab_size=len(smol.tokenizer), layers=4)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    smol.tokenizer.save_pretrained(folder)
    return folder


def test_resolve_auto_on_tiny_model(smol, real_text):
    teacher = _tiny_teacher(vocab_size=len(smol.tokenizer), layers=4)
    tps, text = resolve_auto("auto:kv_budget=40%,context=256", teacher, smol.tokenizer, [real_text], 32, windows=2)
    assert len(tps) == 4 and _kv_share(tps, 256) <= 0.4 and len(set(tps)) > 1
    assert parse_transpoints(text.splitlines()[-1], 4) == tps  # the last line is a spec users can paste
    assert "chosen P" in text and "KV cache at 256 tokens" in text
    # a long training length is planned from shorter windows; the context defaults to seq_len
    tps, text = resolve_auto("auto:kv_budget=50%", teacher, smol.tokenizer, [real_text], 512, windows=1,
                             max_calib_len=32)
    assert "1 windows x 32 tokens" in text and "at context 512 tokens" in text.splitlines()[0]
    assert _kv_share(tps, 512) <= 0.5


def test_plan_command_on_tiny_folder(tmp_path, smol, real_text):
    folder = _tiny_folder(tmp_path, smol)
    calib = tmp_path / "calib.txt"
    calib.write_text(real_text)
    runner = CliRunner()
    args = ["plan", str(folder), "--calib", str(calib), "--windows", "2", "--seq-len", "32", "--device", "cpu"]
    result = runner.invoke(cli, [*args, "--budget", "kv=30%", "--context", "128"])
    assert result.exit_code == 0, result.output
    tps = parse_transpoints(result.output.strip().splitlines()[-1], 4)
    assert _kv_share(tps, 128) <= 0.3
    bad = runner.invoke(cli, [*args, "--budget", "kv=0%"])
    assert bad.exit_code != 0 and "outside (0, 100%]" in bad.output
    bad = runner.invoke(cli, [*args, "--budget", "speed=2"])
    assert bad.exit_code != 0 and "kv=PERCENT" in bad.output
    missing = runner.invoke(cli, ["plan", str(tmp_path / "nope"), "--budget", "kv=25%"])
    assert missing.exit_code != 0 and "does not exist" in missing.output


def test_an_unreachable_budget_fails_before_any_calibration(tmp_path, smol, real_text, monkeypatch):
    import tm_distill.plan as plan_mod

    folder = _tiny_folder(tmp_path, smol)
    (tmp_path / "calib.txt").write_text(real_text)
    monkeypatch.setattr(plan_mod, "measure_sensitivity", lambda *a, **k: pytest.fail("calibration ran"))
    result = CliRunner().invoke(cli, ["plan", str(folder), "--budget", "kv=0.001%", "--calib",
                                      str(tmp_path / "calib.txt"), "--seq-len", "32", "--device", "cpu"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "kv_budget=0.001% cannot be met" in result.output and "0.0%" not in result.output
    assert "smallest reachable budget is 3.12%" in result.output  # 4 layers: one at P = t/8, the rest at 0


def test_small_budgets_are_shown_with_their_digits():
    from tm_distill.plan import _percent, check_budget

    assert (_percent(0.25), _percent(1e-5), _percent(0.0005), _percent(0.03125, 2)) == ("25.0%", "0.001%", "0.05%",
                                                                                        "3.12%")
    check_budget(0.0313, 4, 256)  # reachable: no error
    with pytest.raises(AutoSpecError, match=r"kv_budget=0\.001% .* smallest reachable budget is 3\.12%"):
        check_budget(1e-5, 4, 256)


# ---------------------------------------------------------------------------------------------------- real teacher
@pytest.mark.slow  # loads the real teacher through the CLI, not through the smol fixture
def test_plan_command_on_real_teacher(tmp_path, real_text):
    """SmolLM2-135M on Shakespeare through the CLI: switching earlier hurts more; a 25% KV budget is met."""
    calib = tmp_path / "calib.txt"
    calib.write_text(real_text)
    result = CliRunner().invoke(cli, ["plan", "smollm2-135m", "--budget", "kv=25%", "--calib", str(calib),
                                      "--windows", "1", "--seq-len", "64", "--context", "1024", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert "kv_budget=25.0% at context 1024" in lines[0]
    tps = parse_transpoints(lines[-1], 30)
    assert _kv_share(tps, 1024) <= 0.25 and len(set(tps)) > 1
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(30))
    sens = torch.tensor([[float(v.rstrip("*")) for v in r[1:5]] for r in rows])  # (30, 4): P = 0, t/8, t/4, t/2
    assert torch.all(sens >= 0) and float(sens[:, 0].mean()) > float(sens[:, 3].mean())
    # the greedy keeps the most sensitive layers as attention
    kept = [i for i, p in enumerate(tps) if p == ATTENTION_ONLY]
    switched = [i for i, p in enumerate(tps) if p == 0]
    assert kept and switched
    assert min(float(sens[i, 0]) for i in kept) >= max(float(sens[i, 0]) for i in switched) * 0.5


def test_plan_device_option_is_the_other_commands(tmp_path):
    """--device as convert, generate and eval take it: free text (cpu, cuda, cuda:N), default cpu, checked."""
    help_text = CliRunner().invoke(cli, ["plan", "--help"]).output
    assert "cpu, cuda, cuda:1, ..." in help_text and "[default: cpu]" in help_text
    for command in ("convert", "generate", "eval"):
        assert "[default: cpu]" in CliRunner().invoke(cli, [command, "--help"]).output
    bad = CliRunner().invoke(cli, ["plan", "smollm2-135m", "--budget", "kv=25%", "--device", "gpu0"])
    assert bad.exit_code == 1 and "'gpu0' is not a device" in bad.output and "Traceback" not in bad.output


def test_train_seconds_nan_is_refused():
    result = CliRunner().invoke(cli, ["plan", "smollm2-135m", "--budget", "kv=25%", "--train-seconds", "nan"])
    assert result.exit_code == 2 and "Invalid value for '--train-seconds': nan is not a number of seconds" in result.output
