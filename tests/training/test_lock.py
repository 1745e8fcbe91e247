"""One run per output folder: the lock names its holder, a killed holder never leaves it stuck, and a write
that fails for want of space or permission is a one-line error."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tm_distill.training import lock
from tm_distill.training.lock import LOCK_FILE, OutputNotWritable, RunFolderBusy, RunLock, lock_holder, write_failure

@pytest.fixture
def holder(tmp_path, hold_lock):
    """Another process holding tmp_path/out's lock."""
    out = tmp_path / "out"
    return out, hold_lock(out)


def test_a_live_run_holds_the_folder_and_is_named(holder):
    out, proc = holder
    found = lock_holder(out)
    assert found["pid"] == proc.pid and found["host"] and found["started"]
    with pytest.raises(RunFolderBusy, match=rf"in use by another run \(pid {proc.pid}, host .*, started .*\)"):
        with RunLock(out):
            pass


def test_a_killed_run_leaves_no_stuck_lock(holder):
    out, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid  # its file is still there
    assert lock_holder(out) is None
    with RunLock(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert lock_holder(out) is None  # this process's own lock does not block its own checks
    assert not (out / LOCK_FILE).exists()


def test_without_flock_a_dead_pid_is_stale_and_a_live_one_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "_try_lock", lambda fd, shared=False: None)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": lock.socket.gethostname(), "started": "x"}))
    with RunLock(out):
        pass
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": lock.socket.gethostname(), "started": "x"}))
        with pytest.raises(RunFolderBusy, match=f"pid {live.pid}"):
            with RunLock(out):
                pass
    finally:
        live.kill()
        live.wait()


def test_a_read_only_folder_is_a_one_line_error(tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(lock.os, "open", read_only)
    with pytest.raises(OutputNotWritable, match=r"output_dir .*out is not writable \(Read-only file system\)"):
        with RunLock(tmp_path / "out"):
            pass


def test_write_failures_for_space_or_permission(tmp_path, monkeypatch):
    out = tmp_path / "out"
    full = write_failure(OSError(errno.ENOSPC, "No space left on device"), out)
    assert "No space left on device" in str(full) and "--resume" in str(full)
    denied = write_failure(PermissionError(errno.EACCES, "Permission denied", str(out / "metrics.jsonl")), out)
    assert "Permission denied" in str(denied)
    assert write_failure(PermissionError(errno.EACCES, "Permission denied", "/etc/teacher"), out) is None
    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert write_failure(torch_full, tmp_path) is None  # plenty of space: not a disk problem
    monkeypatch.setattr(lock.shutil, "disk_usage", lambda path: SimpleNamespace(free=1024))
    assert "the disk is full (0 MiB free)" in str(write_failure(torch_full, tmp_path))
    assert write_failure(RuntimeError("shape mismatch"), tmp_path) is None


def test_the_processes_of_one_launch_share_the_lock(holder, monkeypatch):
    out, proc = holder
    lockfile = out / LOCK_FILE
    record = json.loads(lockfile.read_text())
    lockfile.write_text(json.dumps({**record, "job": "127.0.0.1:29500"}))  # as rank 0 of a torchrun launch records
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert lock_holder(out) is None  # rank 1 of that launch: its own run
    monkeypatch.setenv("MASTER_PORT", "29501")
    assert lock_holder(out)["pid"] == proc.pid  # another launch is refused


def test_a_run_that_wrote_nothing_leaves_no_empty_folder(tmp_path):
    with pytest.raises(ValueError), RunLock(tmp_path / "runs" / "a"):
        raise ValueError("bad data, found before anything was written")
    assert not (tmp_path / "runs").exists()
    with RunLock(tmp_path / "runs" / "b"):
        (tmp_path / "runs" / "b" / "metrics.jsonl").write_text("")
    assert sorted(p.name for p in (tmp_path / "runs" / "b").iterdir()) == ["metrics.jsonl"]
