"""Atomic writes: a file or a folder appears complete at its destination or not at all.

Content is written next to the destination (same filesystem), then moved into place with ``os.replace``;
on any error the temporary is removed and an existing destination is left as it was. A hard kill leaves the
temporary behind: its name (``.tmp-<dest>-<pid>-<random>``) says which process wrote it, so
``remove_stale_temps`` can delete the leftovers of dead writers without touching a live one.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

FULL = (errno.ENOSPC, errno.EDQUOT)  # an OSError's errno for a full disk or quota
DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)  # ... for a read-only filesystem or no permission


class OutputNotWritable(UserError):
    """The output folder cannot be written (read-only, no permission, disk full)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_folder(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``dest`` (an old ``dest`` is removed after)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is an ordinary folder
        yield tmp
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-old-{dest.name}-{os.getpid()}-"))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(dest: str | Path) -> list[Path]:
    """Delete the temporary folders an interrupted ``atomic_folder(dest)`` left next to ``dest``: those of
    processes no longer running (and unnamed ones from older versions). Returns what was removed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.tmp-(?:old-)?{re.escape(dest.name)}-(?:(\d+)-)?[a-z0-9_]{{8}}$")
    removed = []
    for child in dest.parent.iterdir():
        m = pattern.match(child.name)
        if m and child.is_dir() and not (m.group(1) and is_alive(int(m.group(1)))):
            log.info("removing %s, left by an interrupted write of %s", child, dest)
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


_TEMP = re.compile(r"^\.tmp-.+?-(\d+)-[a-z0-9_]{8}$")


def temp_is_stale(path: str | Path) -> bool:
    """Whether a temporary folder of ``atomic_folder`` belongs to a writer that no longer runs (a name without
    a pid, from older versions, counts as stale)."""
    m = _TEMP.match(Path(path).name)
    return not (m and is_alive(int(m.group(1))))


def link_or_copy(src: str, dst: str) -> str:
    """A ``shutil.copytree`` copy_function: a hard link (no second copy of the bytes) where the filesystem
    allows, else a copy. Safe for checkpoints: their files are only ever replaced, never changed in place."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def atomic_write_file(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


__all__ = ["DENIED", "FULL", "OutputNotWritable", "atomic_folder", "atomic_write_file", "is_alive", "link_or_copy", "remove_stale_temps", "temp_is_stale"]
