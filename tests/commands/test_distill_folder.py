"""One run per output folder through `tm-distill distill`/`validate`: a folder holding a run is never replaced
unless --force says so, a live run's folder is refused by validate, distill and --resume, a full disk is one
line, and --resume into a folder without a run says it starts afresh."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from tests.commands.distill_helpers import assert_clean_error, run, write_recipe

TWO_STAGES = ({"name": "hidden", "steps": 1, "batch_size": 2}, {"name": "logits", "steps": 1, "batch_size": 2})


def _snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_run_with_other_stages_is_never_replaced_without_force(root, tmp_path):
    recipe = write_recipe(root, tmp_path, *TWO_STAGES)
    assert run("distill", recipe).exit_code == 0
    out = tmp_path / "out"
    before = _snapshot(out)
    result = run("distill", recipe, "stages=[{name: logits, steps: 1}]")
    assert_clean_error(result, "already holds a run (", "final", "--resume", "--force", "new output_dir")
    assert _snapshot(out) == before  # final/, metrics.jsonl, summary.json, stage folders: all as they were
    forced = run("distill", recipe, "stages=[{name: logits, steps: 1}]", "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "1-logits").exists() and (out / "0-logits" / "final").is_dir()
    assert [s["name"] for s in json.loads((out / "summary.json").read_text())["stages"]] == ["logits"]
    assert {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()} == {"logits"}
    assert_clean_error(run("distill", recipe, "--force", "--resume"), "give one of them")


@pytest.mark.parametrize("leftover", ["seed", "calibration.json", "recipe_changes.jsonl"])
def test_any_part_of_a_run_is_a_run(root, tmp_path, leftover):
    out = tmp_path / "out"
    (out / leftover).parent.mkdir(parents=True, exist_ok=True)
    (out / leftover).mkdir() if "." not in leftover else (out / leftover).write_text("{}\n")
    assert_clean_error(run("distill", write_recipe(root, tmp_path)), f"already holds a run ({leftover})", "--force")
    forced = run("distill", write_recipe(root, tmp_path), "--force")  # a seed/ left from a calibrated run goes too
    assert forced.exit_code == 0, forced.output
    assert not (out / leftover).exists()


def test_a_live_run_holds_its_folder_against_validate_distill_and_resume(root, tmp_path, hold_lock):
    recipe = write_recipe(root, tmp_path)
    holder = hold_lock(tmp_path / "out")
    for args in (("validate", recipe), ("distill", recipe), ("distill", recipe, "--resume")):
        assert_clean_error(run(*args), f"is in use by another run (pid {holder.pid}", "one run per folder")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".tm-distill.lock"]  # nothing else written
    holder.kill()
    holder.wait()  # killed: its lock goes with it
    assert run("distill", recipe).exit_code == 0


def test_a_full_disk_mid_run_is_one_line(root, tmp_path, monkeypatch):
    from tm_distill.training.metrics import MetricsWriter

    def full(self, row, global_step=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MetricsWriter, "write", full)
    result = run("distill", write_recipe(root, tmp_path))
    assert_clean_error(result, f"writing the run in {tmp_path / 'out'} failed (No space left on device)", "--resume")
    assert "Traceback" not in result.output and not (tmp_path / "out" / ".tm-distill.lock").exists()


def test_resume_into_a_folder_without_a_run_says_it_starts_afresh(root, tmp_path, caplog):
    recipe = write_recipe(root, tmp_path, output_dir=str(tmp_path / "typo"))
    with caplog.at_level(logging.WARNING):
        result = run("distill", recipe, "--resume")
    assert result.exit_code == 0, result.output
    assert any("holds no run" in r.getMessage() and "starting a new run" in r.getMessage() for r in caplog.records)


def test_a_read_only_output_dir_is_one_line(root, tmp_path, monkeypatch):
    from tm_distill.training import lock

    out, real_open = tmp_path / "out", lock.os.open

    def read_only(path, *args, **kwargs):  # the filesystem refuses writes under out (root ignores chmod)
        if str(path).startswith(str(out)) and args and args[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", read_only)
    result = run("distill", write_recipe(root, tmp_path))
    assert_clean_error(result, f"output_dir {out} is not writable (Read-only file system)")
