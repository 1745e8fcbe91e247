"""`tm-distill distill --resume` after a failure: a diverged run resumes with a lower lr from a finite
checkpoint; a changed recipe is refused naming the keys, safe changes are allowed and recorded; a run keeps only
what resuming needs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.commands.distill_helpers import assert_clean_error, run, summary, write_recipe


# -------------------------------------------------------------------------------------- 2: divergence
def test_diverged_stage_saves_nothing_bad_and_resumes_with_a_lower_lr(root, tmp_path):
    recipe = write_recipe(root, tmp_path, {"name": "logits", "steps": 2, "lr": 1.0e-2},
                          {"name": "logits", "steps": 3, "lr": 1.0e30, "checkpoint_every": 1})
    result = run("distill", recipe)
    assert_clean_error(result, "stage 1 (logits) step 1", "nothing was saved",
                       f"the newest finite checkpoint is {tmp_path / 'out' / '0-logits' / 'final'}", "stages.1.lr=")
    assert not (tmp_path / "out" / "1-logits").exists() or not list((tmp_path / "out" / "1-logits").iterdir())
    for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}, which is not JSON"))
    resumed = run("distill", recipe, "stages.1.lr=1e-3", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert math.isfinite(summary(tmp_path)["heldout_kl_distilled"])
    weights = load_file(tmp_path / "out" / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    change = json.loads((tmp_path / "out" / "recipe_changes.jsonl").read_text())["changes"]
    assert change["stages[1].optimizer.lr"]["old"] == 1e30 and change["stages[1].optimizer.lr"]["new"] == 1e-3


def test_divergence_before_any_checkpoint_restarts_from_the_seeded_student(root, tmp_path):
    recipe = write_recipe(root, tmp_path, {"name": "logits", "steps": 3, "lr": 1.0e30, "checkpoint_every": 1})
    assert_clean_error(run("distill", recipe), "step 1", "no checkpoint was written", "seeded student")
    assert not list((tmp_path / "out" / "0-logits").glob("step-*"))
    assert run("distill", recipe, "stages.0.lr=1e-2", "--resume").exit_code == 0


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_validate_rejects_non_finite_numbers(root, tmp_path, value):
    recipe = write_recipe(root, tmp_path)
    assert_clean_error(run("validate", recipe, f"stages.0.lr={value}"), "stages[0].optimizer.lr: must be a finite")


# --------------------------------------------------------------------------------- 3: changed recipe on resume
@pytest.fixture
def crashed_run(root, tmp_path, monkeypatch):
    """A one-stage run of 4 steps killed after the step-2 checkpoint (a crash in step 3's forward)."""
    from tm_distill.stages.logits import LogitsStage

    recipe = write_recipe(root, tmp_path, {"name": "logits", "steps": 4, "batch_size": 2, "lr": 1.0e-2,
                                           "checkpoint_every": 2})
    original, calls = LogitsStage.loss, {"n": 0}

    def killed(self, input_ids):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == 3 and torch.is_grad_enabled():
            raise KeyboardInterrupt  # the user's Ctrl-C
        return original(self, input_ids)

    monkeypatch.setattr(LogitsStage, "loss", killed)
    assert run("distill", recipe).exit_code != 0
    monkeypatch.setattr(LogitsStage, "loss", original)
    assert (tmp_path / "out" / "0-logits" / "step-2").is_dir()
    return recipe


def test_resume_refuses_a_changed_recipe_naming_the_keys(crashed_run, tmp_path):
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = run("distill", crashed_run, "transpoints=cycle=0,16", "stages.0.batch_size=4", "data.seq_len=64",
                 "--resume")
    assert_clean_error(result, "these keys differ", "transpoints: 'cycle=0,8' -> 'cycle=0,16'",
                       "stages[0].batch_size: 2 -> 4", "data.seq_len: 32 -> 64", "Revert them")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing written
    shorter = run("distill", crashed_run, "stages.0.steps=3", "--resume")
    assert_clean_error(shorter, "stages[0].steps: 4 -> 3", "only longer is allowed")


def test_resume_allows_a_longer_last_stage_and_bookkeeping_and_records_them(crashed_run, tmp_path):
    result = run("distill", crashed_run, "stages.0.steps=6", "stages.0.log_every=2", "--resume")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 4, 6]  # 1, 2 before the crash; log_every 2 after it
    changes = json.loads((out / "recipe_changes.jsonl").read_text())
    assert changes["resumed_stage"] == 0 and changes["resumed_step"] == 2
    assert changes["changes"]["stages[0].steps"] == {"old": 4, "new": 6,
                                                     "why": "the last stage runs 6 steps instead of 4"}
    assert "stages[0].log_every" in changes["changes"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["stages"][0]["steps"] == 6
    assert summary(tmp_path)["stages"][0]["steps"] == 6


def test_resume_with_a_lower_lr_uses_it_from_the_next_step(crashed_run, tmp_path):
    result = run("distill", crashed_run, "stages.0.lr=1e-4", "--resume")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["lr"] > 1e-3 and rows[2]["lr"] <= 1e-4  # step 2 ran at the old peak, step 3 at the new one


# ------------------------------------------------------------------------------- 12: what a run keeps
def test_a_finished_run_keeps_only_what_resuming_needs(root, tmp_path):
    recipe = write_recipe(root, tmp_path, {"name": "logits", "steps": 2, "checkpoint_every": 1},
                          {"name": "logits", "steps": 4, "checkpoint_every": 1, "keep_last": 3})
    assert run("distill", recipe).exit_code == 0
    out = tmp_path / "out"
    kept = sorted(str(p.relative_to(out)) for p in out.glob("*/*"))
    assert [k for k in kept if k.startswith(("0-", "1-"))] == ["1-logits/final"]
    last, final = out / "1-logits" / "final" / "model.safetensors", out / "final" / "model.safetensors"
    assert final.stat().st_ino == last.stat().st_ino  # OUTPUT/final is a hard link, not a second copy
    again = run("distill", recipe, "--resume")  # a finished run still resumes (and just reports)
    assert again.exit_code == 0 and "held-out KL" in again.output


# ------------------------------------------------------------------------ a corrupt checkpoint on resume
@pytest.mark.parametrize("name", ["model.safetensors", "training_state.pt"])
def test_resume_from_a_corrupt_checkpoint_is_one_line(crashed_run, tmp_path, name):
    damaged = tmp_path / "out" / "0-logits" / "step-2" / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    result = run("distill", crashed_run, "--resume")
    assert_clean_error(result, str(damaged.parent), "remove that", "start a new run")
    assert len(result.output.strip().splitlines()[-1]) > 40 and "Error:" in result.output


def test_resume_ignores_a_torn_last_metrics_line(crashed_run, tmp_path):
    metrics = tmp_path / "out" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"stage_idx": 0, "stage": "logits", "step": 3, "lo')  # the disk filled mid-append
    result = run("distill", crashed_run, "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_compares_output_dir_as_a_path_and_follows_a_moved_run(crashed_run, tmp_path, monkeypatch):
    (tmp_path / "out").rename(tmp_path / "moved")  # recipe.yaml still says tmp_path/out
    moved = run("distill", crashed_run, f"output_dir={tmp_path / 'moved'}", "--resume")
    assert moved.exit_code == 0, moved.output
    rows = (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rows] == [1, 2, 3, 4]  # continued from step 2, not afresh
    changes = json.loads((tmp_path / "moved" / "recipe_changes.jsonl").read_text())["changes"]
    assert changes["output_dir"]["new"] == str(tmp_path / "moved") and "moved" in changes["output_dir"]["why"]
    monkeypatch.chdir(tmp_path)
    same = run("distill", crashed_run, "output_dir=moved/", "--resume")  # the same folder, written another way
    assert same.exit_code == 0, same.output
    assert len((tmp_path / "moved" / "recipe_changes.jsonl").read_text().splitlines()) == 1  # nothing new


@pytest.mark.parametrize("name, data, fragment", [
    ("seeded_kl.json", b'{"heldout_kl": 0.', "cannot be read (Expecting ',' delimiter"),
    ("seeded_kl.json", b"\xff\xfe\x00 not text", "cannot be read ('utf-8' codec can't decode byte 0xff"),
    ("recipe.yaml", b"name: [tiny\nteacher: x\n", "cannot read the run's {path} (expected ',' or ']', but got"),
    ("recipe.yaml", b"\xff\xfe\x00 not text", "cannot read the run's {path} ('utf-8' codec can't decode byte 0xff"),
])
def test_resume_with_a_damaged_run_file_is_one_line(crashed_run, tmp_path, name, data, fragment):
    damaged = tmp_path / "out" / name
    damaged.write_bytes(data)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    result = run("distill", crashed_run, "--resume")
    assert_clean_error(result, fragment.format(path=damaged), str(damaged), "start a new run in another output_dir")
    assert "\n" not in result.output.split("Error: ", 1)[1].strip()  # one line, no quoted YAML under it
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    if name == "seeded_kl.json":  # the fix it names works
        damaged.unlink()
        resumed = run("distill", crashed_run, "--resume")
        assert resumed.exit_code == 0, resumed.output
