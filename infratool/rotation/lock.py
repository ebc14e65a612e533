"""One rotation per secrets file at a time: an ``flock`` on a lock file beside it.

``with rotation_lock("secrets/db.yaml"):`` takes an exclusive ``flock`` on
``secrets/.db.yaml.lock``. Why this shape:

* ``flock`` belongs to the open file description, so the kernel drops it when
  the holder dies, even by ``kill -9``: no stale lock to clean up by hand.
* The lock is on a separate file, not the secrets file, because writes
  replace the secrets file by rename: a lock on the old inode would not stop
  a process that opens the new one.
* The lock file is never deleted (deleting a lock file lets two processes
  lock two different inodes of the same name). It holds the holder's pid
  for the error message; it is an empty-ish dotfile worth a ``.gitignore``
  line (``*.lock``).
* Waiting polls with ``LOCK_NB``, because ``flock`` itself has no timeout.
* The lock file is opened with ``O_NOFOLLOW`` and must be a regular file:
  the lock lives in the fleet repo, so a symlink committed there
  (``.db.yaml.lock -> /etc/shadow``) would otherwise be opened and truncated
  as root. A FIFO would block the open, hence ``O_NONBLOCK`` until the
  ``fstat`` has said what it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from infratool.errors import InputError, LockedError
from infratool.safeopen import open_regular

_POLL = 0.05


def lock_path(file: str | Path, lock_dir: str | Path | None = None) -> Path:
    """Where the lock for ``file`` lives: ``.<name>.lock`` beside it, or in ``lock_dir``."""
    file = Path(file)
    return Path(lock_dir or file.parent) / f".{file.name}.lock"


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return f" (pid {int(text)})"
    return ""


def check_lock_file(path: Path) -> None:
    """:class:`InputError` if a lock file exists at ``path`` and is not a regular file.

    For validation, before any connection: the lock itself refuses such a
    file too, but only when the rotation reaches it.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
        raise InputError(f"lock file {path} is {kind}: remove it (infratool never creates one)")


@contextlib.contextmanager
def rotation_lock(
    file: str | Path, wait: float | None = 0, lock_dir: str | Path | None = None
) -> Iterator[Path]:
    """Hold the rotation lock of ``file`` for the ``with`` block; yields the lock file's path.

    ``wait`` is how many seconds to wait for a holder to finish (``None``:
    forever); when it runs out, :class:`LockedError` names the file and the
    holder's pid.
    """
    path = lock_path(file, lock_dir)
    fd = open_regular(path, os.O_RDWR | os.O_CREAT, 0o644, what="lock file")
    try:
        deadline = None if wait is None else time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockedError(f"another rotation of {file} is running{_holder(fd)}") from None
                time.sleep(_POLL)
        # Record who holds it; only the holder writes, so no torn reads matter.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            # Clear the pid before unlocking so a stale number is never reported.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
