"""One run per output folder: ``OUTPUT/.tm-distill.lock``, held for the whole of a ``distill`` call.

The lock is an ``flock`` on that file, so the kernel releases it when its process ends, however it ends: a
run killed with SIGKILL or a crashed machine never leaves the folder stuck. The file records who holds it
(pid, host, start time) for the message a second run gets. Where a filesystem has no ``flock`` the holder
counts as alive while its pid runs on this host. ``validate`` and a starting ``distill`` (``--resume``
included) read it through ``lock_holder``; ``RunLock`` takes it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path

from ..atomic import DENIED, FULL, OutputNotWritable, is_alive
from ..errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".tm-distill.lock"


class RunFolderBusy(UserError):
    """Another live run holds the output folder."""


def busy_message(out: Path, holder: dict) -> str:
    who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "started") if holder.get(k) is not None)
    return (f"output_dir {out} is in use by another run ({who or 'holder unknown'}): one run per folder; wait for "
            "it to end or stop it, or give another output_dir")


def _job() -> str | None:
    """The multi-process launch (torchrun, ``accelerate launch``) this process is part of, by its rendezvous
    address; None for a single process. The processes of one run share its lock."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("MASTER_PORT"):
        return f"{os.environ.get('MASTER_ADDR', '')}:{os.environ['MASTER_PORT']}"
    return None


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _held_by_pid(holder: dict) -> bool:
    """Without flock: held while the recorded process runs on this host."""
    return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and \
        holder["pid"] != os.getpid() and is_alive(holder["pid"])


def _try_lock(fd: int, shared: bool = False) -> bool | None:
    """True when this descriptor now holds the lock, False when another does, None without flock support."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def lock_holder(output_dir: str | Path) -> dict | None:
    """Who holds ``output_dir``'s lock ({"pid", "host", "started", "job"}), or None when no live run does (or
    this process, or the multi-process run it is part of, holds it)."""
    path = Path(output_dir).expanduser() / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = _read(fd)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            return None
        if holder.get("job") is not None and holder.get("job") == _job():  # another process of this very run
            return None
        got = _try_lock(fd, shared=True)  # a probe: conflicts with a run's exclusive lock only
        if got is None:
            return holder if _held_by_pid(holder) else None
        return None if got else holder
    finally:
        os.close(fd)  # closing drops a lock this probe took


def _not_writable(out: Path, err: OSError) -> OutputNotWritable:
    return OutputNotWritable(f"output_dir {out} is not writable ({err.strerror or err}): give a folder you can "
                             "write to, on a disk with free space")


_WRITERS = ("write", "inline_container", "ioerror", "no space left", "quota")  # torch's and safetensors' wording
_LOW_SPACE = 64 * 2**20


def write_failure(err: BaseException, out: Path) -> OutputNotWritable | None:
    """The one-line error for ``err`` when it is a write under ``out`` that failed for want of space or
    permission (torch and safetensors report a full disk as RuntimeError: then the free space decides),
    else None."""
    reason = None
    if isinstance(err, OSError) and err.errno in FULL:
        reason = err.strerror
    elif isinstance(err, OSError) and err.errno in DENIED and err.filename:
        inside = Path(os.path.abspath(err.filename))
        if inside == out.absolute() or out.absolute() in inside.parents:
            reason = f"{err.strerror}: {err.filename}"
    elif any(word in str(err).lower() for word in _WRITERS):
        try:
            free = shutil.disk_usage(out).free
        except OSError:
            return None
        if free < _LOW_SPACE:
            reason = f"the disk is full ({free // 2**20} MiB free)"
    if reason is None:
        return None
    return OutputNotWritable(f"writing the run in {out} failed ({reason}): free some space or make it writable, then "
                             "continue with --resume (every checkpoint written so far is complete)")


class RunLock:
    """``with RunLock(output_dir):`` holds the folder's lock (creating the folder); RunFolderBusy when a live
    run holds it, OutputNotWritable when the folder cannot be written. ``enabled=False`` does nothing (the
    processes of a multi-process run other than the first: the first holds it for all)."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.out = Path(output_dir).expanduser()
        self.path = self.out / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None
        self._created: list[Path] = []  # folders made for the run, removed again if it leaves them empty

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        if self.out.exists() and not self.out.is_dir():
            raise OutputNotWritable(f"output_dir {self.out} is a file, not a folder: give a new folder path")
        self._created = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for _ in range(5):  # a run releasing the lock unlinks the file: retry on the new one
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                if self._acquire(fd):
                    return self
        except OSError as err:
            self._remove_created()
            raise _not_writable(self.out, err) from None
        raise RunFolderBusy(busy_message(self.out, {}))

    def _remove_created(self) -> None:
        """A run that failed before writing anything leaves no empty folder behind."""
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote something), or gone
                break

    def _acquire(self, fd: int) -> bool:
        """Lock ``fd`` and record this process in it; False when the file was replaced meanwhile (retry)."""
        got = _try_lock(fd)
        holder = _read(fd)
        if got is False or (got is None and _held_by_pid(holder)):
            os.close(fd)
            raise RunFolderBusy(busy_message(self.out, holder))
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "job": _job()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        self._fd = fd
        return True

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still holding it, so no one locks a file about to vanish
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_created()


__all__ = ["LOCK_FILE", "OutputNotWritable", "RunFolderBusy", "RunLock", "busy_message", "lock_holder", "write_failure"]
