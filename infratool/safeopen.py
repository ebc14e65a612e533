"""Open a local file that someone else may have planted: no symlinks, regular files only.

Lock files and the audit log live in places a repo writer or another local
user may control (the fleet repo, ``--audit-log PATH``). Following a
symlink there lets a committed ``.x.lock -> /etc/shadow`` truncate any file
root can write, and a FIFO hangs the run. The kernel's own answer is
``O_NOFOLLOW`` plus an ``fstat`` of the descriptor actually opened.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from infratool.errors import InputError


def open_regular(path: Path, flags: int, mode: int, what: str) -> int:
    """Open ``path`` without following a symlink, and only if it is a regular file.

    ``flags`` are ``os.open`` flags; ``O_NOFOLLOW``, ``O_NONBLOCK`` (a FIFO
    must not hang the open) and ``O_CLOEXEC`` are added. A symlink, FIFO,
    device or directory is an :class:`InputError` naming the path: it was
    put there by someone, and nothing has been touched yet.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{what} {path} is a symlink: refusing to follow it") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise InputError(f"{what} {path} is not a regular file") from None
        raise InputError(f"cannot open {what} {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(f"{what} {path} is not a regular file")
    # Back to blocking I/O for the regular file we now know it is.
    os.set_blocking(fd, True)
    return fd
