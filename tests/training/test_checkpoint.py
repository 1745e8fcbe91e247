"""Checkpoints: atomic writes (a crash mid-write leaves the previous one intact), keep-last-k, loadability."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

import tm_distill  # noqa: F401
from tm_distill import checkpoint as store
from tm_distill.convert import seed_student
from tm_distill.training import checkpoint as ckpt


@pytest.fixture
def student(tiny_teacher):
    return seed_student(tiny_teacher, [0, 4, 8])


def test_checkpoint_is_a_loadable_student_with_state(student, tmp_path):
    dest = store.save_checkpoint(tmp_path / "0-logits" / "step-3", student, None, {"step": 3, "rng": ckpt.capture_rng()},
                                {"stage": "logits"})
    loaded = AutoModelForCausalLM.from_pretrained(dest)
    assert loaded.config.transpoints == [0, 4, 8]
    x = torch.randint(0, 97, (1, 12))
    torch.testing.assert_close(loaded(x).logits, student(x).logits, rtol=0, atol=0)
    assert torch.load(dest / store.STATE_FILE, weights_only=False)["step"] == 3
    assert store.read_metadata(dest)["stage"] == "logits"


def test_crash_mid_write_leaves_no_half_checkpoint_and_previous_intact(student, tmp_path, monkeypatch):
    folder = tmp_path / "0-logits"
    store.save_checkpoint(folder / "step-2", student, None, {"step": 2})
    before = sorted(os.listdir(folder / "step-2"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing training_state.pt")

    with torch.no_grad():
        student.model.layers[0].mixer.A_log.add_(1.0)
    monkeypatch.setattr(store.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save_checkpoint(folder / "step-4", student, None, {"step": 4})
    with pytest.raises(KeyboardInterrupt):  # overwriting an existing checkpoint is atomic too
        store.save_checkpoint(folder / "step-2", student, None, {"step": 2})
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == ["step-2"]
    assert sorted(os.listdir(folder / "step-2")) == before
    assert [s for s, _ in ckpt.step_checkpoints(folder)] == [2]
    reloaded = AutoModelForCausalLM.from_pretrained(folder / "step-2")
    assert not torch.equal(reloaded.model.layers[0].mixer.A_log, student.model.layers[0].mixer.A_log)


def test_hard_kill_leftover_temp_folder_is_ignored_and_cleaned(student, tmp_path):
    folder = tmp_path / "0-logits"
    store.save_checkpoint(folder / "step-2", student, None, {"step": 2})
    (folder / ".tmp-step-4-abc").mkdir()  # what a SIGKILL during a write leaves behind
    (folder / ".tmp-step-4-abc" / "config.json").write_text("{")
    point = ckpt.find_resume_point(tmp_path, ["logits"])
    assert (point.stage_idx, point.step, point.path.name) == (0, 2, "step-2")
    ckpt.clean_temp(tmp_path)
    assert sorted(os.listdir(folder)) == ["step-2"]


def test_prune_keeps_newest_and_resume_point_prefers_finished_stages(student, tmp_path):
    folder = ckpt.stage_dir(tmp_path, 0, "matrix")
    for step in (2, 4, 6):
        store.save_checkpoint(folder / f"step-{step}", student, None, {"step": step})
    ckpt.prune(folder, keep_last=2)
    assert [s for s, _ in ckpt.step_checkpoints(folder)] == [4, 6]
    assert ckpt.find_resume_point(tmp_path, ["matrix", "logits"]).step == 6
    store.save_checkpoint(folder / "final", student, None, {"step": 8, "done": True})
    point = ckpt.find_resume_point(tmp_path, ["matrix", "logits"])
    assert (point.stage_idx, point.step, point.path.name, point.state) == (1, 0, "final", None)
    assert ckpt.find_resume_point(tmp_path / "nothing", ["matrix"]).path is None


class _Planted:
    """What an attacker would put in a shared run folder: unpickling it runs ``os.mkdir(marker)``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_training_state_is_plain_data_and_rng_restores_exactly(student, tmp_path):
    import random

    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # cached gaussians are part of the state too
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    student(torch.randint(0, 97, (1, 8))).logits.sum().backward()
    optimizer.step()
    state = {"step": 3, "optimizer": optimizer.state_dict(), "rng": ckpt.capture_rng()}
    expected = (random.random(), random.gauss(0, 1), np.random.randn(), np.random.rand(), torch.rand(3))
    dest = store.save_checkpoint(tmp_path / "step-3", student, None, state)
    loaded = store.read_training_state(dest)  # weights_only=True inside
    assert torch.load(dest / store.STATE_FILE, weights_only=True)["step"] == 3
    ckpt.restore_rng(loaded["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.randn(), np.random.rand(), torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_a_planted_pickle_in_training_state_is_never_run(student, tmp_path):
    dest = store.save_checkpoint(tmp_path / "0-logits" / "step-2", student, None, {"step": 2})
    marker = tmp_path / "code-ran"
    torch.save({"step": 2, "rng": _Planted(marker)}, dest / store.STATE_FILE)
    with pytest.raises(store.CheckpointError, match="pickled objects, which tm-distill never loads"):
        ckpt.find_resume_point(tmp_path, ["logits"])
    assert not marker.exists()
    torch.load(dest / store.STATE_FILE, weights_only=False)  # the payload is live: the old loader ran it
    assert marker.exists()


def test_a_truncated_training_state_is_a_one_line_error(student, tmp_path):
    dest = store.save_checkpoint(tmp_path / "step-2", student, None, {"step": 2, "rng": ckpt.capture_rng()})
    data = (dest / store.STATE_FILE).read_bytes()
    (dest / store.STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(store.CheckpointError, match=r"training_state.pt cannot be read .* truncated") as err:
        store.read_training_state(dest)
    assert "\n" not in str(err.value)


def test_start_up_cleanup_leaves_a_live_writers_temp_folders(student, tmp_path):
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        folder = tmp_path / "0-logits"
        folder.mkdir()
        writing = folder / f".tmp-step-4-{live.pid}-abcd1234"
        left = folder / f".tmp-step-2-{dead.pid}-abcd1234"
        for path in (writing, left, tmp_path / f".tmp-final-{dead.pid}-zz_9zz9z"):
            path.mkdir()
        ckpt.clean_temp(tmp_path)
        assert writing.is_dir() and not left.exists() and not list(tmp_path.glob(".tmp-*"))
    finally:
        live.kill()
        live.wait()
